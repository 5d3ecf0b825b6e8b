// The ZeRO-3 engine: a GPT model whose parameters are partitioned over the
// ranks layer by layer, with each rank's parameter and gradient shards in
// spilld and the optimizer step run by spilld's CPU optimizer
// (offload_optimizer.device = cpu, offload_param.device = cpu), or, with both
// devices none, plain ZeRO-3: shards and AdamW state on the compute device,
// stepped by torch's fused AdamW kernel. See
// worker/ENGINE.md for the design; this is its first cut (what is missing is
// listed at the end of ENGINE.md).
//
//   EngineOptions o;
//   o.config = loaded->config;  o.shape = shape;  o.session.socket_path = ...;
//   absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create(o, collectives.get());
//   for (...) {
//     std::vector<MicroBatch> micro = ...;   // gradient_accumulation_steps of them
//     absl::StatusOr<StepStats> s = (*e)->TrainStep(micro);
//   }
//
// Every rank must make the same calls in the same order (they issue
// collectives). Not thread-safe: one thread drives an Engine.
#ifndef SPILL_WORKER_ENGINE_H_
#define SPILL_WORKER_ENGINE_H_

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "spill/client.h"
#include "worker/collectives.h"
#include "worker/config.h"
#include "worker/gpt.h"
#include "worker/gpt_shape.h"
#include "worker/scheduler.h"

namespace spill::worker {

struct EngineOptions {
  DeepSpeedConfig config;
  GptShape shape;
  uint64_t seed = 1234;  // Layer::Initialize's seed.
  // job_id, socket_path and timeout are used; rank and world_size come from
  // the Collectives; register_with_cuda follows `device`.
  client::SessionOptions session;
  // Where compute runs: kCPU (with Gloo) or a CUDA device (with NCCL).
  at::Device device = at::Device(at::kCPU);
  // Bound on each wait for spilld or a collective.
  std::chrono::milliseconds timeout{120'000};
};

struct MicroBatch {
  at::Tensor tokens;   // int64 [B, T]
  at::Tensor targets;  // int64 [B, T]
};

// What one optimizer step did and where its time went.
struct StepStats {
  int64_t step = 0;
  double loss = 0;       // Mean over micro-batches and ranks.
  double lr = 0;
  double grad_norm = 0;  // Global L2 norm of the accumulated gradient.
  double clip = 1;       // The clip coefficient applied (1 = none).
  int64_t tokens = 0;    // Tokens over all ranks and micro-batches.
  double forward_s = 0;  // Gathers included.
  double backward_s = 0;
  double reduce_s = 0;       // Gradient reduce-scatter and norm all-reduce.
  double spilld_wait_s = 0;  // Acquire, Release and GradReady round trips.
  double optimizer_s = 0;    // OptimizerStep until every group answered.
};

class Engine {
 public:
  // Builds the model layer by layer (Initialize with options.seed, pad to a
  // multiple of the world size, keep this rank's shard), opens a spilld
  // session, registers per layer "<job>/rank<r>/<layer>/param" and ".../grad"
  // (fp32, or bf16 with bf16.enabled), writes the initial shard and creates
  // one optimizer group per layer. `collectives` must outlive the Engine.
  // With offload none/none no spilld session is opened and the shards stay
  // on options.device. Unimplemented naming the keys for modes this cut
  // lacks (offload devices other than cpu/cpu or none/none, fp16); InvalidArgument for a bad shape or scheduler;
  // FailedPrecondition when spilld already holds this rank's objects of the
  // job (no resume yet);
  // spilld's error (with the object's name) otherwise.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options,
                                                        Collectives* collectives);
  ~Engine();

  // One optimizer step over config.gradient_accumulation_steps micro-batches
  // of this rank (each rank's loss is its mean cross-entropy divided by the
  // accumulation count; gradients are averaged over ranks). InvalidArgument
  // for a wrong number of micro-batches or bad token tensors (nothing sent);
  // the collective's or spilld's error otherwise (the step is then not
  // applied on this rank).
  absl::StatusOr<StepStats> TrainStep(const std::vector<MicroBatch>& micro_batches);

  // Every layer's full flat parameters (padding dropped) as fp32 CPU
  // tensors, gathered from all ranks (collective: every rank must call it).
  absl::StatusOr<std::vector<at::Tensor>> GatherParameters();

  // Optimizer steps taken so far.
  int64_t step() const { return step_; }
  const GptModel& model() const { return model_; }
  // spilld's session; null with offload none.
  client::Session* session() { return session_.get(); }

 private:
  struct LayerState;
  Engine(const EngineOptions& options, Collectives* collectives, GptModel model,
         LrSchedule schedule);
  absl::Status Build();
  absl::Status BuildLayer(size_t i);
  // Overwrites the fp32 master spilld made from the 16-bit shard with the
  // exact fp32 initial values.
  absl::Status WriteMaster(uint64_t master_id, const at::Tensor& fp32_shard);
  absl::StatusOr<at::Tensor> GatherLayer(size_t i, StepStats& stats);
  // Forward and backward of one micro-batch; returns its loss and sets
  // sum_squares to this rank's accumulated gradient sum of squares.
  absl::StatusOr<double> MicroStep(const MicroBatch& mb, uint32_t micro, StepStats& stats,
                                   double& sum_squares);
  absl::Status ReduceGradient(size_t i, const at::Tensor& full_grad, uint32_t micro,
                              StepStats& stats, double& sum_squares);
  absl::Status Optimize(double sum_squares, StepStats& stats);
  void LocalStep(double lr, double grad_scale);
  // Waits up to options_.timeout; the error is prefixed with `what`.
  absl::Status Wait(const std::shared_ptr<Work>& work, const char* what);
  absl::Status Wait(const std::shared_ptr<client::Work>& work, const char* what);

  EngineOptions options_;
  Collectives* collectives_;
  GptModel model_;
  LrSchedule schedule_;
  std::unique_ptr<client::Session> session_;
  std::vector<LayerState> layers_;
  at::ScalarType dtype_;
  // Offload none/none: shards and optimizer state stay on the device.
  bool local_;
  int64_t step_ = 0;
};

}  // namespace spill::worker

#endif  // SPILL_WORKER_ENGINE_H_
