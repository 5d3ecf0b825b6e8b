// In-process tests of the Engine's API against a real spilld (one rank,
// Gloo): bad input, access order and prefetch, checkpointing and resume,
// fp16 overflow, gradient sums, pins asked for ahead, the step window.
#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "worker/checkpoint.h"
#include "worker/config.h"
#include "worker/data.h"
#include "worker/engine.h"
#include "worker/gpt.h"
#include "worker/testing/engine_test_util.h"
#include "worker/testing/free_port.h"
#include "worker/testing/spilld_fixture.h"

namespace spill::worker {
namespace {

using namespace engine_testing;  // NOLINT(build/namespaces)
using testing::FreePort;

// In-process checks of the Engine's own bad-input handling (one rank, Gloo).
class EngineApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RendezvousInfo info;
    info.master_port = FreePort();
    auto c = CreateGlooCollectives(info, std::chrono::seconds(30));
    ASSERT_TRUE(c.ok()) << c.status();
    collectives_ = std::move(*c);
    TrainingArgs args;
    std::string config = kConfig;
    for (size_t at = 0; (at = config.find("\"cpu\"")) != std::string::npos;) {
      config.replace(at, 5, "\"none\"");
    }
    auto loaded = ParseDeepSpeedConfig(config, args);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    options_.config = loaded->config;
    options_.shape = kShape;
    options_.seed = kSeed;
    options_.session.job_id = "engine-api-test";
  }

  MicroBatch Batch(int64_t b, int64_t t) {
    return {at::zeros({b, t}, at::kLong), at::ones({b, t}, at::kLong)};
  }

  // Starts a spilld and points options_ at it with both offloads on cpu.
  absl::StatusOr<std::unique_ptr<testing::SpilldFixture>> StartCpuOffload() {
    auto spilld = testing::SpilldFixture::Start();
    if (!spilld.ok()) return spilld.status();
    options_.config.zero.offload_optimizer.device = OffloadDevice::kCpu;
    options_.config.zero.offload_param.device = OffloadDevice::kCpu;
    options_.session.socket_path = (*spilld)->socket_path();
    return spilld;
  }

  std::unique_ptr<Collectives> collectives_;
  EngineOptions options_;
};

TEST_F(EngineApiTest, BadMicroBatchesAreRefusedAndChangeNothing) {
  auto engine = Engine::Create(options_, collectives_.get());
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto before = (*engine)->GatherParameters();
  ASSERT_TRUE(before.ok()) << before.status();

  auto s = (*engine)->TrainStep({Batch(2, 16)});  // gradient_accumulation_steps is 2.
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("gradient_accumulation_steps=2"), absl::string_view::npos);
  s = (*engine)->TrainStep({Batch(2, 16), Batch(2, 17)});  // T > seq_len
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("seq_len 16"), absl::string_view::npos) << s.status();
  MicroBatch floats{at::zeros({2, 16}), at::zeros({2, 16})};
  s = (*engine)->TrainStep({Batch(2, 16), floats});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);

  EXPECT_EQ((*engine)->step(), 0);
  auto after = (*engine)->GatherParameters();
  ASSERT_TRUE(after.ok());
  for (size_t i = 0; i < before->size(); ++i) EXPECT_TRUE((*before)[i].equal((*after)[i]));

  s = (*engine)->TrainStep({Batch(2, 16), Batch(2, 16)});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->step, 1);
  EXPECT_EQ((*engine)->step(), 1);
  EXPECT_TRUE(std::isfinite(s->loss));
}

TEST_F(EngineApiTest, UnsupportedModesNameTheKey) {
  options_.config.zero.offload_param.device = OffloadDevice::kCpu;  // optimizer none
  auto e = Engine::Create(options_, collectives_.get());
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(e.status().message().find("offload_optimizer.device=none"), absl::string_view::npos);
  options_.config.zero.offload_param.device = OffloadDevice::kNvme;  // optimizer none
  e = Engine::Create(options_, collectives_.get());
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(e.status().message().find("offload_param.device=nvme"), absl::string_view::npos);
  // Every shard must fit one offload_param buffer (checked before spilld is
  // asked for anything).
  options_.config.zero.offload_optimizer.device = OffloadDevice::kCpu;
  options_.config.zero.offload_param.buffer_size = 1000;
  e = Engine::Create(options_, collectives_.get());
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("offload_param.buffer_size=1000"), absl::string_view::npos)
      << e.status();
  options_.config.zero.offload_param.buffer_size = 100'000'000;
  options_.config.zero.offload_optimizer.device = OffloadDevice::kNone;
  options_.config.zero.offload_param.device = OffloadDevice::kNone;
  options_.config.fp16.enabled = true;
  options_.config.fp16.hysteresis = 0;
  e = Engine::Create(options_, collectives_.get());
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("hysteresis"), absl::string_view::npos) << e.status();
  EXPECT_EQ(Engine::Create(options_, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}



// The access order is recorded by the first micro-step and drives the
// prefetch of the next; what stays gathered follows the persistence
// threshold and the reuse distance; none of it changes the numbers.
TEST_F(EngineApiTest, AccessOrderPrefetchAndReuseLeaveTheResultUnchanged) {
  // embedding, block.0, block.1, head (tied to the embedding).
  const std::vector<int> order = {0, 1, 2, 3, 0, 3, 0, 2, 1, 0};
  const std::vector<GatherCase> cases = {
      {0, 0, 0, 10},                       // everything freed after each use, no prefetch
      {0, 0, 1'000'000'000, 10},           // same gathers, issued ahead
      {0, 1'000'000'000, 0, 4},            // kept while reused soon: each layer once
      {1'000'000'000, 0, 1'000'000'000, 4},  // all persistent (for the step)
  };
  std::vector<at::Tensor> first;
  for (const GatherCase& c : cases) {
    options_.config.zero.stage3_param_persistence_threshold = c.persistence;
    options_.config.zero.stage3_max_reuse_distance = c.reuse;
    options_.config.zero.stage3_prefetch_bucket_size = c.prefetch;
    auto engine = Engine::Create(options_, collectives_.get());
    ASSERT_TRUE(engine.ok()) << engine.status();
    std::vector<StepStats> stats;
    std::vector<at::Tensor> params = Train(**engine, 2, &stats);
    ASSERT_EQ(stats.size(), 2u);
    EXPECT_EQ((*engine)->trace(), order);
    for (const StepStats& s : stats) EXPECT_EQ(s.trace_changes, 0);
    if (c.persistence == 0) {
      // The recording micro-step knows no reuse yet: it gathers at every use.
      EXPECT_EQ(stats[0].gathers, 10 + c.gathers_per_micro * (kGas - 1)) << c.reuse;
      EXPECT_EQ(stats[1].gathers, c.gathers_per_micro * kGas) << c.reuse;
    }
    if (c.persistence > 0) {
      EXPECT_EQ(stats[1].gathers, c.gathers_per_micro);
    }
    // Step 1's second micro-step and step 2 follow the recorded order.
    if (c.prefetch > 0 && c.reuse == 0 && c.persistence == 0) {
      EXPECT_GT(stats[0].prefetched, 0);
      EXPECT_GT(stats[1].prefetched, stats[0].prefetched);
    }
    if (c.prefetch == 0) {
      EXPECT_EQ(stats[1].prefetched, 0);
    }
    if (first.empty()) {
      first = params;
      continue;
    }
    ASSERT_EQ(params.size(), first.size());
    for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(params[i].equal(first[i])) << i;
  }
}

TEST_F(EngineApiTest, GradientCheckpointingRecomputesTheSameGradients) {
  auto plain = Engine::Create(options_, collectives_.get());
  ASSERT_TRUE(plain.ok()) << plain.status();
  std::vector<at::Tensor> want = Train(**plain, 2, nullptr);
  options_.gradient_checkpointing = true;
  auto ckpt = Engine::Create(options_, collectives_.get());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::vector<StepStats> kept_stats;
  std::vector<at::Tensor> got = Train(**ckpt, 2, &kept_stats);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_TRUE(at::allclose(got[i], want[i], 0, 1e-6)) << i;
  }
  for (const StepStats& s : kept_stats) EXPECT_EQ(s.activation_host_bytes, 0);
  // cpu_checkpointing: the inputs of every block but the last layer's wait
  // in host memory; the result is the same bit for bit.
  options_.config.activation_checkpointing.cpu_checkpointing = true;
  auto host = Engine::Create(options_, collectives_.get());
  ASSERT_TRUE(host.ok()) << host.status();
  std::vector<StepStats> host_stats;
  std::vector<at::Tensor> on_host = Train(**host, 2, &host_stats);
  ASSERT_EQ(on_host.size(), got.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(on_host[i].equal(got[i])) << i;
  const int64_t per_input = kMicro * kShape.seq_len * kShape.hidden * 4;  // fp32
  for (const StepStats& s : host_stats) {
    EXPECT_EQ(s.activation_host_bytes, kGas * kShape.layers * per_input);
  }
}

// fp16 with a scale so large that the gradients overflow: every rank skips
// the step (nothing changes), the scaler backs off after `hysteresis`
// overflows, and training goes on once the scale fits.
void ExpectOverflowSkipsSteps(Engine& engine, const std::vector<at::Tensor>& initial) {
  std::vector<StepStats> stats;
  std::vector<at::Tensor> after = Train(engine, 3, &stats);
  ASSERT_EQ(stats.size(), 3u);
  for (const StepStats& s : stats) EXPECT_TRUE(s.skipped) << s.step;
  EXPECT_EQ(stats[0].loss_scale, std::ldexp(1.0, 40));
  EXPECT_EQ(stats[1].loss_scale, std::ldexp(1.0, 40));  // hysteresis 2 absorbed one overflow
  EXPECT_EQ(stats[2].loss_scale, std::ldexp(1.0, 39));
  EXPECT_EQ(engine.step(), 3);
  ASSERT_EQ(after.size(), initial.size());
  for (size_t i = 0; i < after.size(); ++i) EXPECT_TRUE(after[i].equal(initial[i])) << i;
}

TEST_F(EngineApiTest, Fp16OverflowSkipsTheStepAndBacksOff) {
  options_.config.fp16.enabled = true;
  options_.config.fp16.initial_scale_power = 40;
  auto engine = Engine::Create(options_, collectives_.get());
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto initial = (*engine)->GatherParameters();
  ASSERT_TRUE(initial.ok()) << initial.status();
  ExpectOverflowSkipsSteps(**engine, *initial);
}

TEST_F(EngineApiTest, Fp16OverflowSkipsTheStepInSpilldToo) {
  auto spilld = StartCpuOffload();
  ASSERT_TRUE(spilld.ok()) << spilld.status();
  options_.config.fp16.enabled = true;
  options_.config.fp16.initial_scale_power = 40;
  {
    auto engine = Engine::Create(options_, collectives_.get());
    ASSERT_TRUE(engine.ok()) << engine.status();
    auto initial = (*engine)->GatherParameters();
    ASSERT_TRUE(initial.ok()) << initial.status();
    ExpectOverflowSkipsSteps(**engine, *initial);
  }
  EXPECT_EQ((*spilld)->Stop(), 0) << (*spilld)->output();
}

// How many optimizer steps are in flight, and whether they overlap backward
// (no clipping) or follow it, changes the order spilld runs them in, never
// the result. A window below 1 is refused.
// Without accumulation the engine sends each gradient shard's sum of squares
// with GradReady: spilld runs no pass over the gradients (its pass time
// stays 0); parameters equal those of spilld's own pass bit for bit and
// the logged norms to double rounding, clipped or not, bf16 or fp32.
TEST_F(EngineApiTest, GradientSumsFromTheWorkerEqualSpilldsOwn) {
  auto spilld = testing::SpilldFixture::Start({"--metrics-address=127.0.0.1:0"});
  ASSERT_TRUE(spilld.ok()) << spilld.status();
  options_.config.zero.offload_optimizer.device = OffloadDevice::kCpu;
  options_.config.zero.offload_param.device = OffloadDevice::kCpu;
  options_.config.gradient_accumulation_steps = 1;
  options_.session.socket_path = (*spilld)->socket_path();
  ByteDataset data = *ByteDataset::Open(DefaultDataPath());
  int job = 0;
  for (bool bf16 : {false, true}) {
    for (double clip : {0.5, 0.0}) {
      std::vector<std::vector<at::Tensor>> params;
      std::vector<std::vector<double>> norms;
      for (bool on_device : {false, true}) {
        const double pass_before = (*spilld)->Metric("spill_optimizer_grad_ready_seconds_total");
        options_.config.bf16_enabled = bf16;
        options_.config.gradient_clipping = clip;
        options_.grad_sum_on_device = on_device;
        options_.session.job_id = "grad-sums-" + std::to_string(job++);
        auto engine = Engine::Create(options_, collectives_.get());
        ASSERT_TRUE(engine.ok()) << engine.status();
        norms.emplace_back();
        for (int step = 0; step < 3; ++step) {
          TokenBatch b = *data.Batch(step, 0, kMicro, kShape.seq_len, kSeed);
          auto s = (*engine)->TrainStep(
              {{at::tensor(b.tokens, at::kLong).view({kMicro, kShape.seq_len}),
                at::tensor(b.targets, at::kLong).view({kMicro, kShape.seq_len})}});
          ASSERT_TRUE(s.ok()) << s.status();
          norms.back().push_back(s->grad_norm);
        }
        auto p = (*engine)->GatherParameters();
        ASSERT_TRUE(p.ok()) << p.status();
        params.push_back(*p);
        const double pass = (*spilld)->Metric("spill_optimizer_grad_ready_seconds_total");
        ASSERT_GE(pass_before, 0);
        if (on_device) {
          EXPECT_EQ(pass, pass_before) << "spilld read the gradients itself";
        } else {
          EXPECT_GT(pass, pass_before);
        }
      }
      // Both sum in double, in different orders: equal to rounding.
      for (size_t k = 0; k < norms[0].size(); ++k) {
        EXPECT_NEAR(norms[0][k], norms[1][k], 1e-12 * norms[0][k]) << "bf16 " << bf16 << " clip " << clip;
      }
      for (size_t i = 0; i < params[0].size(); ++i) {
        EXPECT_TRUE(params[0][i].equal(params[1][i])) << "bf16 " << bf16 << " clip " << clip
                                                      << " layer " << i;
      }
    }
  }
  EXPECT_EQ((*spilld)->Stop(), 0) << (*spilld)->output();
}

// Parameter pins asked for ahead of their gathers: the same numbers as
// asking at each gather, the later steps' gathers find their pin ready, and
// no pin is left behind. A negative count is refused.
TEST_F(EngineApiTest, PinsAskedForAheadChangeNothingAndLeaveNoPin) {
  auto spilld = StartCpuOffload();
  ASSERT_TRUE(spilld.ok()) << spilld.status();
  options_.acquire_ahead = -1;
  auto bad = Engine::Create(options_, collectives_.get());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("acquire_ahead"), std::string::npos) << bad.status();
  std::vector<std::vector<at::Tensor>> params;
  for (double clip : {0.5, 0.0}) {
    for (int ahead : {0, 4}) {
      options_.acquire_ahead = ahead;
      options_.config.gradient_clipping = clip;
      options_.session.job_id = "ahead-" + std::to_string(ahead) + "-" + std::to_string(clip > 0);
      auto engine = Engine::Create(options_, collectives_.get());
      ASSERT_TRUE(engine.ok()) << engine.status();
      std::vector<StepStats> stats;
      params.push_back(Train(**engine, 3, &stats));
      ASSERT_EQ(stats.size(), 3u);
      if (ahead == 0) {
        EXPECT_EQ(stats[2].acquired_ahead, 0);
      } else {
        EXPECT_GT(stats[2].acquired_ahead, 0);
        EXPECT_LE(stats[2].acquired_ahead, stats[2].gathers);
      }
      auto objects = (*engine)->session()->List();
      ASSERT_TRUE(objects.ok()) << objects.status();
      for (const client::ObjectInfo& info : *objects) {
        EXPECT_EQ(info.pin_count, 0u) << info.name << " ahead " << ahead;
      }
    }
  }
  ASSERT_EQ(params.size(), 4u);
  for (size_t k : {1u, 3u}) {
    ASSERT_EQ(params[k].size(), params[k - 1].size());
    for (size_t i = 0; i < params[k].size(); ++i) {
      EXPECT_TRUE(params[k][i].equal(params[k - 1][i])) << "run " << k << " layer " << i;
    }
  }
  EXPECT_EQ((*spilld)->Stop(), 0) << (*spilld)->output();
}

TEST_F(EngineApiTest, TheStepWindowChangesTheOrderNotTheResult) {
  auto spilld = StartCpuOffload();
  ASSERT_TRUE(spilld.ok()) << spilld.status();
  options_.max_steps_in_flight = 0;
  auto refused = Engine::Create(options_, collectives_.get());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("max_steps_in_flight"), absl::string_view::npos);
  for (double clip : {0.5, 0.0}) {
    std::vector<std::vector<at::Tensor>> results;
    for (int window : {1, 3, 64}) {
      options_.config.gradient_clipping = clip;
      options_.max_steps_in_flight = window;
      options_.session.job_id = "step-window-" + std::to_string(window) + "-" +
                                std::to_string(clip > 0);
      auto engine = Engine::Create(options_, collectives_.get());
      ASSERT_TRUE(engine.ok()) << engine.status();
      results.push_back(Train(**engine, 3, nullptr));
    }
    for (size_t w = 1; w < results.size(); ++w) {
      ASSERT_EQ(results[w].size(), results[0].size());
      for (size_t i = 0; i < results[0].size(); ++i) {
        EXPECT_TRUE(results[w][i].equal(results[0][i])) << "clip " << clip << " layer " << i;
      }
    }
  }
  EXPECT_EQ((*spilld)->Stop(), 0) << (*spilld)->output();
}

// Speculative layer steps under clipping (EngineOptions::speculative_steps):
// sent while backward runs and committed, or rescaled, by spilld once the
// norm is known. Not clipped: the same bits as steps sent after backward.
// Clipped (every step, by coefficients near 0.5): the same to the rescale's
// rounding. kAuto speculates only after a step that was not clipped.
TEST_F(EngineApiTest, SpeculativeStepsUnderClippingMatchStepsAfterBackward) {
  auto spilld = StartCpuOffload();
  ASSERT_TRUE(spilld.ok()) << spilld.status();
  using Speculation = EngineOptions::Speculation;
  auto run = [&](double clip, Speculation mode, std::vector<StepStats>* stats) {
    options_.config.gradient_clipping = clip;
    options_.speculative_steps = mode;
    options_.session.job_id = "speculative-" + std::to_string(static_cast<int>(mode)) + "-" +
                              std::to_string(clip);
    auto engine = Engine::Create(options_, collectives_.get());
    EXPECT_TRUE(engine.ok()) << engine.status();
    return engine.ok() ? Train(**engine, 3, stats) : std::vector<at::Tensor>{};
  };
  std::vector<StepStats> never, always, autos;
  const std::vector<at::Tensor> want = run(1e6, Speculation::kNever, &never);
  const std::vector<at::Tensor> got = run(1e6, Speculation::kAlways, &always);
  const std::vector<at::Tensor> got_auto = run(1e6, Speculation::kAuto, &autos);
  ASSERT_EQ(never.size(), 3u);
  ASSERT_EQ(always.size(), 3u);
  ASSERT_EQ(autos.size(), 3u);
  ASSERT_EQ(got.size(), want.size());
  ASSERT_EQ(got_auto.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_TRUE(got[i].equal(want[i])) << "layer " << i;
    EXPECT_TRUE(got_auto[i].equal(want[i])) << "layer " << i;
  }
  int64_t rescaled = 0;
  for (int k = 0; k < 3; ++k) {
    EXPECT_FALSE(never[k].speculative);
    EXPECT_TRUE(always[k].speculative);
    EXPECT_EQ(autos[k].speculative, k > 0) << "step " << k;  // nothing to guess from at first
    EXPECT_EQ(always[k].clip, 1.0);
    EXPECT_GT(always[k].steps_sent_in_backward, 0) << "step " << k;
    rescaled += always[k].steps_rescaled + autos[k].steps_rescaled;
  }
  EXPECT_EQ(rescaled, 0);
  // Clipped: the bound below the smallest norm seen.
  double smallest = never[0].grad_norm;
  for (const StepStats& s : never) smallest = std::min(smallest, s.grad_norm);
  const double clip = 0.5 * smallest;
  std::vector<StepStats> clipped_never, clipped_always, clipped_auto;
  const std::vector<at::Tensor> clipped_want = run(clip, Speculation::kNever, &clipped_never);
  const std::vector<at::Tensor> clipped_got = run(clip, Speculation::kAlways, &clipped_always);
  run(clip, Speculation::kAuto, &clipped_auto);
  ASSERT_EQ(clipped_always.size(), 3u);
  ASSERT_EQ(clipped_auto.size(), 3u);
  ASSERT_EQ(clipped_got.size(), clipped_want.size());
  // A rescaled step is the direct one to an ulp of the parameter (1.2e-7
  // at the LayerNorm weights' 1.0); later steps carry that on through the
  // gradients, and Adam turns a nudge of a near-zero gradient into up to
  // lr of update: the tolerance the GPT equivalence tests allow against
  // torch (engine_test.cc, fp32). Unclipped and clipped training differ by
  // far more (checked, so the comparison can fail).
  for (size_t i = 0; i < clipped_want.size(); ++i) {
    EXPECT_TRUE(at::allclose(clipped_got[i], clipped_want[i], 1e-4, 5e-6))
        << "layer " << i << " largest difference "
        << (clipped_got[i] - clipped_want[i]).abs().max().item<double>();
  }
  double unclipped_gap = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    unclipped_gap = std::max(unclipped_gap, (want[i] - clipped_want[i]).abs().max().item<double>());
  }
  EXPECT_GT(unclipped_gap, 1e-4);
  rescaled = 0;
  for (int k = 0; k < 3; ++k) {
    EXPECT_LT(clipped_always[k].clip, 1.0) << "step " << k;
    EXPECT_TRUE(clipped_always[k].speculative);
    EXPECT_FALSE(clipped_auto[k].speculative) << "step " << k;
    EXPECT_NEAR(clipped_always[k].grad_norm, clipped_never[k].grad_norm,
                1e-4 * clipped_never[k].grad_norm);
    rescaled += clipped_always[k].steps_rescaled;
  }
  // Rescaled: the layers whose step went out before the norm was known
  // (counted in the next step's stats, so of the first two steps only).
  EXPECT_GT(rescaled, 0);
  EXPECT_LE(rescaled, static_cast<int64_t>(2 * clipped_want.size()));
  EXPECT_EQ((*spilld)->Stop(), 0) << (*spilld)->output();
}

// Save after 2 steps, go on to 4; a new engine resumed from the checkpoint
// (and a new spilld job) reaches the same parameters bit for bit.
void ExpectResumeIsExact(EngineOptions options, Collectives* collectives,
                         const std::filesystem::path& dir) {
  std::vector<at::Tensor> want;
  {
    auto engine = Engine::Create(options, collectives);
    ASSERT_TRUE(engine.ok()) << engine.status();
    Train(**engine, 2, nullptr);
    auto tag = (*engine)->SaveCheckpoint(dir.string());
    ASSERT_TRUE(tag.ok()) << tag.status();
    EXPECT_EQ(*tag, "global_step2");
    EXPECT_TRUE(std::filesystem::exists(dir / "global_step2" / "COMPLETE"));
    auto again = (*engine)->SaveCheckpoint(dir.string());
    EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists) << again.status();
    want = Train(**engine, 4, nullptr);
  }
  options.resume_dir = dir.string();
  options.session.job_id += "-resumed";
  auto resumed = Engine::Create(options, collectives);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ((*resumed)->step(), 2);
  std::vector<at::Tensor> got = Train(**resumed, 4, nullptr);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(got[i].equal(want[i])) << i;
}

TEST_F(EngineApiTest, ResumeFromACheckpointIsExact) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("spill_engine_ckpt_" + std::to_string(getpid()));
  options_.config.bf16_enabled = true;
  ExpectResumeIsExact(options_, collectives_.get(), dir / "local");
  auto spilld = StartCpuOffload();
  ASSERT_TRUE(spilld.ok()) << spilld.status();
  ExpectResumeIsExact(options_, collectives_.get(), dir / "spilld");
  EXPECT_EQ((*spilld)->Stop(), 0) << (*spilld)->output();
  std::filesystem::remove_all(dir);
}

// offload_optimizer.device=nvme: the states live in spilld's NVMe tier and
// travel through CopyGroupState. Resuming is exact, and a checkpoint saved
// from NVMe-resident states continues on pinned ones (and back) exactly as
// the run that saved it.
// Flips one byte in every 4 KiB block of each file over 1 MiB under dir
// (spilld's NVMe tier files; the manifest is left alone), synced to disk.
// Returns the blocks flipped.
int64_t CorruptTierFiles(const std::filesystem::path& dir) {
  int64_t flipped = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) {
    if (!entry.is_regular_file() || entry.file_size() <= (1u << 20)) continue;
    const int fd = ::open(entry.path().c_str(), O_RDWR);
    EXPECT_GE(fd, 0) << entry.path();
    if (fd < 0) continue;
    for (off_t off = 0; off + 1 <= static_cast<off_t>(entry.file_size()); off += 4096) {
      unsigned char b = 0;
      if (::pread(fd, &b, 1, off) != 1) break;
      b ^= 0xFF;
      if (::pwrite(fd, &b, 1, off) != 1) break;
      ++flipped;
    }
    EXPECT_EQ(::fsync(fd), 0);
    ::close(fd);
  }
  return flipped;
}

// Optimizer states on NVMe that no longer match their checksums: saving a
// checkpoint fails with spilld's DATA_LOSS, publishes nothing, leaves no
// staging object behind, and the job's other objects still serve.
TEST_F(EngineApiTest, CorruptNvmeStatesFailTheCheckpointAndPublishNothing) {
  const std::string tag = std::to_string(getpid());
  const auto dir = std::filesystem::temp_directory_path() / ("spill_engine_nvbad_" + tag);
  const auto nvme = std::filesystem::path(NvmeBaseDir()) / ("spill_engine_nvbad_tier_" + tag);
  std::filesystem::create_directories(nvme);
  auto spilld = testing::SpilldFixture::Start(
      {"--nvme-dirs=" + nvme.string(), "--nvme-capacity=64MiB"});
  ASSERT_TRUE(spilld.ok()) << spilld.status();
  options_.config.zero.offload_optimizer.device = OffloadDevice::kNvme;
  options_.config.zero.offload_param.device = OffloadDevice::kCpu;
  options_.session.socket_path = (*spilld)->socket_path();
  options_.session.job_id = "nvme-corrupt";
  auto engine = Engine::Create(options_, collectives_.get());
  ASSERT_TRUE(engine.ok()) << engine.status();
  ASSERT_FALSE(Train(**engine, 2, nullptr).empty());
  ASSERT_TRUE((*engine)->WaitForOptimizer().ok());
  ASSERT_GT(CorruptTierFiles(nvme), 0);

  auto saved = (*engine)->SaveCheckpoint(dir.string());
  ASSERT_FALSE(saved.ok()) << "saved " << *saved;
  EXPECT_EQ(saved.status().code(), absl::StatusCode::kDataLoss) << saved.status();
  EXPECT_FALSE(std::filesystem::exists(dir / "latest"));
  auto objects = (*engine)->session()->List();
  ASSERT_TRUE(objects.ok()) << objects.status();
  for (const client::ObjectInfo& info : *objects) {
    EXPECT_EQ(info.name.find("/staging/"), std::string::npos) << info.name;
    EXPECT_EQ(info.pin_count, 0u) << info.name;
  }
  EXPECT_TRUE((*engine)->GatherParameters().ok());
  engine->reset();
  EXPECT_EQ((*spilld)->Stop(), 0) << (*spilld)->output();
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(nvme);
}

TEST_F(EngineApiTest, ResumeWithOptimizerStatesOnNvmeIsExact) {
  const std::string tag = std::to_string(getpid());
  const auto dir = std::filesystem::temp_directory_path() / ("spill_engine_nvckpt_" + tag);
  const auto nvme = std::filesystem::path(NvmeBaseDir()) / ("spill_engine_nvckpt_tier_" + tag);
  std::filesystem::create_directories(nvme);
  auto spilld = testing::SpilldFixture::Start(
      {"--nvme-dirs=" + nvme.string(), "--nvme-capacity=256MiB"});
  ASSERT_TRUE(spilld.ok()) << spilld.status();
  options_.config.bf16_enabled = true;
  options_.config.zero.offload_optimizer.device = OffloadDevice::kNvme;
  options_.config.zero.offload_param.device = OffloadDevice::kCpu;
  options_.session.socket_path = (*spilld)->socket_path();
  options_.session.job_id = "nvme-states";
  ExpectResumeIsExact(options_, collectives_.get(), dir / "nvme");

  // The same run on pinned states from the NVMe checkpoint: steps 3 and 4
  // give what the NVMe run gave.
  std::vector<std::vector<at::Tensor>> finals;
  for (OffloadDevice device : {OffloadDevice::kNvme, OffloadDevice::kCpu}) {
    EngineOptions o = options_;
    o.config.zero.offload_optimizer.device = device;
    o.resume_dir = (dir / "nvme").string();
    o.session.job_id = std::string("cross-") + (device == OffloadDevice::kNvme ? "nvme" : "cpu");
    auto engine = Engine::Create(o, collectives_.get());
    ASSERT_TRUE(engine.ok()) << engine.status();
    finals.push_back(Train(**engine, 4, nullptr));
    // Saved again from this mode: its master and moments equal the other's.
    auto saved = (*engine)->SaveCheckpoint((dir / o.session.job_id).string());
    ASSERT_TRUE(saved.ok()) << saved.status();
    // Nothing stays behind: the staging objects of every copy were freed.
    auto objects = (*engine)->session()->List();
    ASSERT_TRUE(objects.ok()) << objects.status();
    for (const client::ObjectInfo& info : *objects) {
      EXPECT_EQ(info.name.find("/staging/"), std::string::npos) << info.name;
    }
  }
  ASSERT_EQ(finals[0].size(), finals[1].size());
  for (size_t i = 0; i < finals[0].size(); ++i) {
    EXPECT_TRUE(finals[0][i].equal(finals[1][i])) << "layer " << i;
  }
  auto a = CheckpointReader::Open((dir / "cross-nvme").string(), "");
  auto b = CheckpointReader::Open((dir / "cross-cpu").string(), "");
  ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
  for (const CkptLayer& l : a->meta().layers) {
    for (const char* state : {"master", "exp_avg", "exp_avg_sq"}) {
      std::vector<float> x(static_cast<size_t>(l.numel)), y(x.size());
      ASSERT_TRUE(a->ReadShardInto(l.name, state, 0, 1, absl::MakeSpan(x)).ok());
      ASSERT_TRUE(b->ReadShardInto(l.name, state, 0, 1, absl::MakeSpan(y)).ok());
      EXPECT_EQ(x, y) << l.name << " " << state;
    }
  }
  EXPECT_EQ((*spilld)->Stop(), 0) << (*spilld)->output();
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(nvme);
}

TEST_F(EngineApiTest, ResumeRefusesAMissingOrForeignCheckpoint) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("spill_engine_badckpt_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  options_.resume_dir = dir.string();
  auto e = Engine::Create(options_, collectives_.get());
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kNotFound) << e.status();
  options_.resume_dir.clear();
  {
    auto engine = Engine::Create(options_, collectives_.get());
    ASSERT_TRUE(engine.ok()) << engine.status();
    ASSERT_TRUE((*engine)->SaveCheckpoint(dir.string()).ok());
  }
  options_.resume_dir = dir.string();
  options_.shape.hidden = 64;  // Another model.
  e = Engine::Create(options_, collectives_.get());
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("'embedding'"), absl::string_view::npos) << e.status();
  std::filesystem::remove_all(dir);
}

TEST_F(EngineApiTest, ARankWhoseShardsAreAlreadyInSpilldIsRefused) {
  auto spilld = StartCpuOffload();
  ASSERT_TRUE(spilld.ok()) << spilld.status();
  {
    auto first = Engine::Create(options_, collectives_.get());
    ASSERT_TRUE(first.ok()) << first.status();
    ASSERT_NE((*first)->session(), nullptr);
  }
  auto again = Engine::Create(options_, collectives_.get());
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(again.status().message().find("rank0/embedding"), absl::string_view::npos)
      << again.status();
  options_.session.job_id = "another-job";
  EXPECT_TRUE(Engine::Create(options_, collectives_.get()).ok());
  EXPECT_EQ((*spilld)->Stop(), 0) << (*spilld)->output();
}

}  // namespace
}  // namespace spill::worker
