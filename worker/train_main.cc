// spill-train: ZeRO-3 training of a GPT model with parameters and optimizer
// offloaded to the node's spilld.
//
//   torchrun --no-python --nproc-per-node=2 spill-train --deepspeed ds_config.json
//       [--data FILE] [--model 125M|tiny|...] [--max_steps N] [HF-style args]
//   (one command line)
//
// Exit status: 0 on success, 2 for a usage or config error, 1 when training
// failed.
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "spill/client.h"
#include "worker/collectives.h"
#include "worker/config.h"
#include "worker/data.h"
#include "worker/engine.h"
#include "worker/gpt_shape.h"
#include "worker/rendezvous.h"

namespace spill::worker {
namespace {

constexpr char kUsage[] =
    "usage: spill-train --deepspeed ds_config.json [options]\n"
    "  --data FILE              training text (default: the repository's corpus)\n"
    "  --model NAME             tiny, 125M, 350M, 1.3B, 2.7B, 6.7B, 13B (default tiny)\n"
    "  --layers/--hidden/--heads/--vocab/--seq_len N   override the model shape\n"
    "  --max_steps N            optimizer steps (default 10)\n"
    "  --seed N                 initialisation and data seed (default 1234)\n"
    "  --device cpu|cuda        (default cpu: Gloo; cuda: NCCL)\n"
    "  --spill-socket PATH      spilld's socket (default $SPILL_SOCKET)\n"
    "  --job NAME               spilld job id (default spill-train)\n"
    "  --save_params FILE       rank 0 writes the final parameters (raw fp32, layer order)\n"
    "  --gradient_checkpointing recompute each layer in backward (keep only its input)\n"
    "  --speculative_steps auto|always|never   with clipping, layer steps while backward\n"
    "                           runs, rescaled once the norm is known (default auto:\n"
    "                           after a step that was not clipped)\n"
    "  --output_dir DIR         checkpoints go to DIR/global_step<N> (shared by all ranks)\n"
    "  --save_steps N           save every N steps (and after the last; default: last only)\n"
    "  --resume_from_checkpoint DIR   resume from DIR/latest (any world size)\n"
    "  HF arguments: --learning_rate --per_device_train_batch_size\n"
    "    --gradient_accumulation_steps --max_grad_norm --warmup_steps --weight_decay\n"
    "    --adam_beta1 --adam_beta2 --adam_epsilon --bf16 --fp16\n";

struct Flags {
  std::string deepspeed, data, model = "tiny", device = "cpu", socket, job = "spill-train";
  std::string save_params, output_dir, resume;
  int64_t save_steps = 0;
  std::map<std::string, int64_t> shape;
  int64_t max_steps = 10;
  uint64_t seed = 1234;
  bool gradient_checkpointing = false;
  EngineOptions::Speculation speculative_steps = EngineOptions::Speculation::kAuto;
  TrainingArgs args;
};

absl::Status ParseValue(const std::string& key, const std::string& v, Flags& f) {
  double d = 0;
  int64_t n = 0;
  auto num = [&]() { return absl::SimpleAtod(v, &d); };
  auto integer = [&]() { return absl::SimpleAtoi(v, &n); };
  auto bad = [&]() { return absl::InvalidArgumentError(absl::StrCat("bad value for --", key, ": '", v, "'")); };
  if (key == "deepspeed") f.deepspeed = v;
  else if (key == "data") f.data = v;
  else if (key == "model") f.model = v;
  else if (key == "device") f.device = v;
  else if (key == "spill-socket") f.socket = v;
  else if (key == "job") f.job = v;
  else if (key == "save_params") f.save_params = v;
  else if (key == "output_dir") f.output_dir = v;
  else if (key == "resume_from_checkpoint") f.resume = v;
  else if (key == "speculative_steps") {
    if (v != "auto" && v != "always" && v != "never") {
      return absl::InvalidArgumentError(absl::StrCat(
          "bad value for --speculative_steps: '", v, "' (auto, always or never)"));
    }
    f.speculative_steps = v == "always"  ? EngineOptions::Speculation::kAlways
                          : v == "never" ? EngineOptions::Speculation::kNever
                                         : EngineOptions::Speculation::kAuto;
  }
  else if (key == "save_steps") {
    if (!integer() || n < 0) return bad();
    f.save_steps = n;
  }
  else if (key == "layers" || key == "hidden" || key == "heads" || key == "vocab" || key == "seq_len") {
    if (!integer()) return bad();
    f.shape[key] = n;
  } else if (key == "max_steps") {
    if (!integer() || n < 1) return bad();
    f.max_steps = n;
    f.args.max_steps = n;
  } else if (key == "seed") {
    if (!integer() || n < 0) return bad();
    f.seed = static_cast<uint64_t>(n);
  } else if (key == "per_device_train_batch_size" || key == "gradient_accumulation_steps" ||
             key == "warmup_steps") {
    if (!integer()) return bad();
    (key == "warmup_steps" ? f.args.warmup_steps
     : key == "gradient_accumulation_steps" ? f.args.gradient_accumulation_steps
                                            : f.args.per_device_train_batch_size) = n;
  } else if (key == "learning_rate" || key == "max_grad_norm" || key == "weight_decay" ||
             key == "adam_beta1" || key == "adam_beta2" || key == "adam_epsilon") {
    if (!num()) return bad();
    if (key == "learning_rate") f.args.learning_rate = d;
    if (key == "max_grad_norm") f.args.max_grad_norm = d;
    if (key == "weight_decay") f.args.weight_decay = d;
    if (key == "adam_beta1") f.args.adam_beta1 = d;
    if (key == "adam_beta2") f.args.adam_beta2 = d;
    if (key == "adam_epsilon") f.args.adam_epsilon = d;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown flag --", key));
  }
  return absl::OkStatus();
}

absl::StatusOr<Flags> ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) return absl::InvalidArgumentError("unexpected argument '" + a + "'");
    a = a.substr(2);
    if (a == "bf16" || a == "fp16") {
      (a == "bf16" ? f.args.bf16 : f.args.fp16) = true;
      continue;
    }
    if (a == "gradient_checkpointing") {
      f.gradient_checkpointing = true;
      continue;
    }
    std::string value;
    const size_t eq = a.find('=');
    if (eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError("--" + a + " needs a value");
    }
    absl::Status s = ParseValue(a, value, f);
    if (!s.ok()) return s;
  }
  if (f.deepspeed.empty()) return absl::InvalidArgumentError("--deepspeed ds_config.json is required");
  if (f.device != "cpu" && f.device != "cuda") {
    return absl::InvalidArgumentError("--device must be cpu or cuda, got '" + f.device + "'");
  }
  return f;
}

absl::StatusOr<GptShape> ShapeFrom(const Flags& f) {
  GptShape s;
  if (f.model == "tiny") {
    s = GptShape{"tiny", 2, 64, 4, 256, 64};
  } else {
    absl::StatusOr<GptShape> p = GptPreset(f.model);
    if (!p.ok()) return p.status();
    s = *p;
  }
  for (const auto& [k, v] : f.shape) {
    s.name = "custom";
    (k == "layers" ? s.layers : k == "hidden" ? s.hidden : k == "heads" ? s.heads
     : k == "vocab" ? s.vocab : s.seq_len) = v;
  }
  absl::Status ok = ValidateGptShape(s);
  if (!ok.ok()) return ok;
  return s;
}

absl::Status SaveParams(const std::string& path, const std::vector<at::Tensor>& params) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  for (const at::Tensor& t : params) {
    at::Tensor c = t.to(at::kFloat).contiguous();
    out.write(static_cast<const char*>(c.data_ptr()), c.numel() * sizeof(float));
  }
  out.flush();
  if (!out) return absl::InternalError("cannot write --save_params file " + path);
  return absl::OkStatus();
}

// ", spilld: N objects, X GiB resident" for the whole job.
std::string SpilldLine(client::Session* session) {
  if (session == nullptr) return "";
  absl::StatusOr<std::vector<client::ObjectInfo>> objects = session->List();
  if (!objects.ok()) return absl::StrCat(", spilld: ", objects.status().message());
  uint64_t resident = 0;
  for (const client::ObjectInfo& o : *objects) resident += o.resident() ? o.byte_size() : 0;
  return absl::StrFormat(", spilld: %d objects, %.1f MiB resident", objects->size(),
                         resident / 1048576.0);
}

void LogStep(const StepStats& s, double seconds, double flops_per_token, const std::string& tail) {
  const double tokens_per_s = s.tokens / seconds;
  std::cout << absl::StrFormat(
                   "step %d loss %.4f lr %.3e loss_scale %g%s grad_norm %.4f clip %.3f%s "
                   "tokens/s %.1f TFLOP/s %.2f | forward %.3fs backward %.3fs reduce %.3fs "
                   "spilld %.3fs optimizer %.3fs | gathers %d prefetched %d h2d %.1fMB d2h %.1fMB",
                   s.step, s.loss, s.lr, s.loss_scale, s.skipped ? " (skipped: overflow)" : "",
                   s.grad_norm, s.clip, s.speculative ? " (speculative)" : "",
                   tokens_per_s, 3 * flops_per_token * tokens_per_s / 1e12,
                   s.forward_s, s.backward_s, s.reduce_s, s.spilld_wait_s, s.optimizer_s, s.gathers,
                   s.prefetched, s.h2d_bytes / 1e6, s.d2h_bytes / 1e6)
            << (s.step_refusals > 0 ? absl::StrCat(" | steps refused for want of an "
                                                   "offload_param buffer ",
                                                   s.step_refusals)
                                    : "")
            << (s.steps_rescaled > 0
                    ? absl::StrCat(" | layer steps rescaled (speculated wrong) ", s.steps_rescaled)
                    : "")
            << tail << std::endl;
}

absl::Status Train(const Flags& f, const RendezvousInfo& info, const GptShape& shape,
                   const DeepSpeedConfig& config) {
  // Gloo fails a collective after its own timeout: no shorter than the
  // engine's bound on a wait for spilld, or a rank that waits for spilld
  // (a loaded node, NVMe buffers contended) fails its peers' collectives.
  absl::StatusOr<std::unique_ptr<Collectives>> coll =
      f.device == "cuda" ? CreateNcclCollectives(info, info.local_rank)
                         : CreateGlooCollectives(info, EngineOptions().timeout);
  if (!coll.ok()) return coll.status();
  absl::StatusOr<ByteDataset> data = ByteDataset::Open(f.data.empty() ? DefaultDataPath() : f.data);
  if (!data.ok()) return data.status();
  EngineOptions o;
  o.config = config;
  o.shape = shape;
  o.seed = f.seed;
  o.session.job_id = f.job;
  o.session.socket_path = f.socket.empty() ? client::DefaultSocketPath() : f.socket;
  if (f.device == "cuda") o.device = at::Device(at::kCUDA, info.local_rank);
  o.gradient_checkpointing = f.gradient_checkpointing;
  o.speculative_steps = f.speculative_steps;
  // torchrun's LOCAL_WORLD_SIZE: the ranks sharing this node's spilld.
  if (const char* local = std::getenv("LOCAL_WORLD_SIZE"); local != nullptr) {
    o.ranks_per_node = std::atoi(local);
  }
  o.resume_dir = f.resume;
  // Building a large model's shards takes minutes: say so, then how long.
  const auto built_from = std::chrono::steady_clock::now();
  if (info.rank == 0) {
    std::cout << absl::StrFormat("spill-train: building %.3g parameters in %d shards (%s)",
                                 static_cast<double>(GptTotalParams(shape)), info.world_size,
                                 f.resume.empty() ? std::string("initialised") : "from " + f.resume)
              << std::endl;
  }
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(o, coll->get());
  if (!engine.ok()) return engine.status();
  if (info.rank == 0) {
    std::cout << absl::StrFormat(
                     "spill-train: model built in %.1f s",
                     std::chrono::duration<double>(std::chrono::steady_clock::now() - built_from)
                         .count())
              << std::endl;
  }
  const int64_t gas = config.gradient_accumulation_steps;
  const int64_t batch = config.train_micro_batch_size_per_gpu;
  if (info.rank == 0 && !f.resume.empty()) {
    std::cout << "spill-train: resumed from " << f.resume << " at step " << (*engine)->step()
              << std::endl;
  }
  int64_t saved = -1;
  auto save = [&]() -> absl::Status {
    absl::StatusOr<std::string> tag = (*engine)->SaveCheckpoint(f.output_dir);
    if (!tag.ok()) return tag.status();
    saved = (*engine)->step();
    if (info.rank == 0) std::cout << "spill-train: saved " << f.output_dir << "/" << *tag << std::endl;
    return absl::OkStatus();
  };
  for (int64_t step = (*engine)->step() + 1; step <= f.max_steps; ++step) {
    std::vector<MicroBatch> micro;
    for (int64_t k = 0; k < gas; ++k) {
      absl::StatusOr<TokenBatch> b =
          data->Batch((step - 1) * gas + k, info.rank, batch, shape.seq_len, f.seed);
      if (!b.ok()) return b.status();
      MicroBatch mb;
      mb.tokens = at::tensor(b->tokens, at::kLong).view({batch, shape.seq_len});
      mb.targets = at::tensor(b->targets, at::kLong).view({batch, shape.seq_len});
      micro.push_back(mb);
    }
    auto t0 = std::chrono::steady_clock::now();
    absl::StatusOr<StepStats> s = (*engine)->TrainStep(micro);
    if (!s.ok()) return s.status();
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (info.rank == 0 && (step % config.steps_per_print == 0 || step == 1 || step == f.max_steps)) {
      LogStep(*s, sec, (*engine)->model().ForwardFlopsPerToken(shape.seq_len),
              DeviceMemorySummary(o.device.is_cuda() ? o.device.index() : -1) +
                  SpilldLine((*engine)->session()));
    }
    if (!f.output_dir.empty() && f.save_steps > 0 && step % f.save_steps == 0) {
      absl::Status st = save();
      if (!st.ok()) return st;
    }
  }
  if (!f.output_dir.empty() && saved != (*engine)->step()) {
    absl::Status st = save();
    if (!st.ok()) return st;
  }
  absl::StatusOr<std::vector<at::Tensor>> params = (*engine)->GatherParameters();
  if (!params.ok()) return params.status();
  if (info.rank == 0 && !f.save_params.empty()) return SaveParams(f.save_params, *params);
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  absl::StatusOr<Flags> f = ParseFlags(argc, argv);
  if (!f.ok()) {
    std::cerr << "spill-train: " << f.status().message() << "\n" << kUsage;
    return 2;
  }
  absl::StatusOr<RendezvousInfo> info = RendezvousFromEnv();
  absl::StatusOr<GptShape> shape = ShapeFrom(*f);
  if (!info.ok() || !shape.ok()) {
    std::cerr << "spill-train: " << (info.ok() ? shape.status() : info.status()).message() << "\n";
    return 2;
  }
  f->args.world_size = info->world_size;
  f->args.hidden_size = shape->hidden;
  absl::StatusOr<LoadedConfig> loaded = LoadDeepSpeedConfigFile(f->deepspeed, f->args);
  if (!loaded.ok()) {
    std::cerr << "spill-train: " << loaded.status().message() << "\n";
    return 2;
  }
  if (info->rank == 0) {
    for (const std::string& w : loaded->warnings) std::cerr << "spill-train: warning: " << w << "\n";
    for (const std::string& u : loaded->unsupported) {
      std::cerr << "spill-train: not supported: " << u << "\n";
    }
    std::cout << "spill-train: rank 0 of " << info->world_size << ", model " << shape->name
              << " (layers " << shape->layers << ", hidden " << shape->hidden << ", seq_len "
              << shape->seq_len << ")\nresolved config:\n"
              << DeepSpeedConfigToJson(loaded->config) << std::endl;
  }
  absl::Status s = Train(*f, *info, *shape, loaded->config);
  if (!s.ok()) {
    std::cerr << "spill-train: rank " << info->rank << ": " << s << "\n";
    return s.code() == absl::StatusCode::kUnimplemented ||
                   s.code() == absl::StatusCode::kInvalidArgument
               ? 2
               : 1;
  }
  return 0;
}

}  // namespace
}  // namespace spill::worker

int main(int argc, char** argv) { return spill::worker::Main(argc, argv); }
