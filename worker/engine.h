// The ZeRO-3 engine: a GPT model whose parameters are partitioned over the
// ranks layer by layer. Each rank keeps 1/world of every layer's flat
// parameters; a layer's full parameters exist only while it runs (gathered
// before its forward and again before its backward, freed after each use
// unless persistent or reused soon), prefetched along the access order the
// first micro-step recorded. Modes (zero_optimization):
//   offload_optimizer cpu|nvme, offload_param cpu  — parameter, gradient and
//     optimizer state in spilld, stepped by spilld's CPU optimizer (states
//     streamed from spilld's NVMe tier with nvme);
//   offload_optimizer cpu|nvme, offload_param none — as above, plus a copy of
//     the parameter shard on the device, refreshed once per step
//     (ZeRO-Offload);
//   none/none — plain ZeRO-3: shards and AdamW state on the device, torch's
//     fused AdamW kernel.
// Precision fp32, bf16, or fp16 with dynamic loss scaling (an overflow on
// any rank skips the step on every rank). worker/ENGINE.md has the design.
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
#include <c10/core/Stream.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "spill/client.h"
#include "worker/collectives.h"
#include "worker/config.h"
#include "worker/gpt.h"
#include "worker/gpt_shape.h"
#include "worker/loss_scaler.h"
#include "worker/scheduler.h"

namespace spill::worker {

class CheckpointReader;

struct EngineOptions {
  DeepSpeedConfig config;
  GptShape shape;
  uint64_t seed = 1234;  // Layer::Initialize's seed.
  // job_id, socket_path and timeout are used; rank and world_size come from
  // the Collectives; register_with_cuda follows `device`.
  client::SessionOptions session;
  // Where compute runs: kCPU (with Gloo) or a CUDA device (with NCCL).
  at::Device device = at::Device(at::kCPU);
  // Activation checkpointing per layer (HF's --gradient_checkpointing):
  // forward keeps only each layer's input; backward recomputes the layer.
  bool gradient_checkpointing = false;
  // Bound on each wait for spilld or a collective.
  std::chrono::milliseconds timeout{120'000};
  // spilld optimizer steps in flight at once (>= 1). Steps waiting their
  // turn go out lowest layer first, the order the next forward needs them,
  // and spilld's compute pool keeps room for gradient-ready requests.
  int max_steps_in_flight = 2;
  // Without gradient accumulation, each reduced gradient shard's sum of
  // squares is computed on the device (one small kernel on the D2H stream)
  // and sent with GradReady, sparing spilld's CPU a pass over every
  // gradient byte. false: spilld computes it (the result is the same).
  bool grad_sum_on_device = true;
  // Resume from the checkpoint <resume_dir>/<resume_tag> (tag empty: the
  // one <resume_dir>/latest names), saved by any world size.
  std::string resume_dir;
  std::string resume_tag;
  // Ranks sharing this node's spilld (torchrun's LOCAL_WORLD_SIZE); 0: the
  // world size. spilld's offload budgets are per job and node.
  int ranks_per_node = 0;
  // Parameter pins asked for ahead of their gathers (the next this many
  // layers of the recorded order that are not gathered), so a gather does
  // not wait a round trip to spilld; 0 asks at each gather. Not for NVMe
  // parameters, whose pins take offload_param buffers.
  int acquire_ahead = 4;
  // Keep an OptimizerSpan of every layer step (TakeOptimizerSpans), for a
  // timeline of where a step's time goes.
  bool record_optimizer_spans = false;
  // Clipping by the global norm needs every gradient before the clip
  // coefficient is known, so no layer could step while backward runs. A
  // speculative step runs it anyway, with coefficient 1, and spilld keeps
  // it or rescales it to the real coefficient once the norm is known
  // (client::Session::SpeculativeOptimizerStep). A right guess costs
  // nothing; a wrong one costs a rescaling pass after backward, about what
  // the step would have cost there without speculation. kAuto speculates
  // when the previous step was not clipped (the norm moves slowly: once
  // training has settled below the bound, most steps are not clipped);
  // kAlways and kNever are for tests and measurements. Only where spilld
  // steps (offload), with clipping, bf16 or fp32 (an fp16 overflow skips a
  // step, which a rescale cannot undo), AdamW or Adam without weight decay,
  // and optimizer states in pinned memory; elsewhere never.
  enum class Speculation { kAuto, kAlways, kNever };
  Speculation speculative_steps = Speculation::kAuto;
};

// One layer's optimizer step as this rank saw it: when the request went to
// spilld and when its answer arrived.
struct OptimizerSpan {
  size_t layer = 0;
  uint64_t step = 0;
  std::chrono::steady_clock::time_point sent, answered;
};

struct MicroBatch {
  at::Tensor tokens;   // int64 [B, T]
  at::Tensor targets;  // int64 [B, T]
};

// What one optimizer step did and where its time went (host wall time; on
// CUDA the compute stream is synchronised at the end of forward and of
// backward so the split is real).
struct StepStats {
  int64_t step = 0;
  double loss = 0;       // Mean over micro-batches and ranks (unscaled).
  double lr = 0;
  double grad_norm = 0;  // Global L2 norm of the accumulated, unscaled gradient.
  double clip = 1;       // The clip coefficient applied (1 = none).
  double loss_scale = 1;  // fp16: the scale this step used.
  bool skipped = false;   // fp16 overflow: no parameter changed.
  int64_t tokens = 0;    // Tokens over all ranks and micro-batches.
  double forward_s = 0;  // Gathers included.
  double backward_s = 0;  // Re-gathers, recomputation and reduce-scatters included.
  double reduce_s = 0;       // Waiting for gradients after backward, and the norm all-reduce.
  double spilld_wait_s = 0;  // Blocked on spilld (acquire, gradient ready, release).
  // Issuing the optimizer steps after backward, plus waiting for the
  // previous step's optimizer pass of a layer before its first gather (the
  // CPU optimizer of step N overlaps the forward of step N+1).
  double optimizer_s = 0;
  // Parameter gathers issued (demand + prefetch) and how many were prefetched.
  int64_t gathers = 0;
  int64_t prefetched = 0;
  // Times the recorded access order did not match and was re-recorded.
  int64_t trace_changes = 0;
  // Gathers whose parameter pin was asked for ahead (AcquireAhead).
  int64_t acquired_ahead = 0;
  // Bytes copied host→device and device→host this step.
  int64_t h2d_bytes = 0;
  int64_t d2h_bytes = 0;
  // cpu_checkpointing: bytes of layer inputs kept in host memory between
  // forward and recomputation (on CUDA also counted in d2h and h2d).
  int64_t activation_host_bytes = 0;
  // Layers whose optimizer step had gone out to spilld, and had finished,
  // when backward ended (steps overlap backward only without clipping).
  int64_t steps_sent_in_backward = 0;
  int64_t steps_done_in_backward = 0;
  // NVMe parameters: optimizer steps spilld refused (every offload_param
  // buffer taken) and the engine sent again, since the previous step.
  int64_t step_refusals = 0;
  // This step's layer steps went out speculatively (before the clip
  // coefficient was known; EngineOptions::speculative_steps).
  bool speculative = false;
  // Speculative layer steps spilld had to rescale (the guess was wrong),
  // answered since the previous step.
  int64_t steps_rescaled = 0;
};

class Engine {
 public:
  // Builds the model layer by layer (Initialize with options.seed, pad to a
  // multiple of the world size, keep this rank's shard), opens a spilld
  // session, registers per layer "rank<r>/<layer>/param" and ".../grad"
  // (fp32, bf16 or fp16), writes the initial shard and creates one optimizer
  // group per layer. `collectives` must outlive the Engine. With offload
  // none/none no spilld session is opened and the shards stay on
  // options.device. Unimplemented naming the keys for modes the engine
  // lacks (offload_param without offload_optimizer);
  // InvalidArgument for a bad shape, scheduler or fp16 block;
  // FailedPrecondition when spilld already holds this rank's objects of the
  // job; spilld's error (with the object's name) otherwise.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options,
                                                        Collectives* collectives);
  ~Engine();

  // One optimizer step over config.gradient_accumulation_steps micro-batches
  // of this rank (each rank's loss is its mean cross-entropy divided by the
  // accumulation count; gradients are averaged over ranks). InvalidArgument
  // for a wrong number of micro-batches or bad token tensors (nothing sent);
  // the collective's or spilld's error otherwise (the step is then not
  // applied on this rank). spilld's optimizer pass of a step finishes while
  // the next step runs; its error is returned by the next TrainStep,
  // GatherParameters or SaveCheckpoint.
  absl::StatusOr<StepStats> TrainStep(const std::vector<MicroBatch>& micro_batches);

  // Every layer's full flat parameters (padding dropped) as fp32 CPU
  // tensors, gathered from all ranks (collective: every rank must call it).
  absl::StatusOr<std::vector<at::Tensor>> GatherParameters();

  // Saves this rank's fp32 master weights and optimizer states and the
  // engine's state (step, loss scaler) as the checkpoint <dir>/<tag> (tag
  // empty: "global_step<N>"), published (COMPLETE marker, then <dir>/latest)
  // only after every rank wrote and synced its file; with
  // stage3_gather_16bit_weights_on_model_save rank 0 also writes the whole
  // model in the training dtype as <dir>/<tag>/model.safetensors. Collective:
  // every rank calls it between steps; <dir> must be shared by the ranks.
  // Returns the tag. With offload_optimizer.device=nvme the states are
  // exported from spilld's NVMe tier one layer at a time through pinned
  // staging objects. AlreadyExists for a published tag;
  // the first failing rank's error otherwise (nothing published).
  absl::StatusOr<std::string> SaveCheckpoint(const std::string& dir, const std::string& tag = "");

  // Waits until spilld has finished every optimizer step sent so far (they
  // run on after TrainStep returns, overlapping the next forward). Not
  // collective. spilld's error of the first failed step.
  absl::Status WaitForOptimizer();

  // Optimizer steps taken so far (skipped fp16 steps included).
  int64_t step() const { return step_; }
  const GptModel& model() const { return model_; }
  // spilld's session; null with offload none.
  client::Session* session() { return session_.get(); }
  // The recorded access order (layer indices of one micro-step's gathers).
  const std::vector<int>& trace() const { return trace_; }
  // With options.record_optimizer_spans: the layer steps that finished
  // since the last call, in the order the engine saw them finish.
  std::vector<OptimizerSpan> TakeOptimizerSpans() { return std::exchange(optimizer_spans_, {}); }

 private:
  struct LayerState;
  struct PendingGrad;
  struct PendingRelease;
  struct HostActivation;
  Engine(const EngineOptions& options, Collectives* collectives, GptModel model,
         LrSchedule schedule, LossScaler scaler);
  absl::Status Build();
  absl::Status BuildLayer(size_t i);
  // --- checkpoints (engine_checkpoint.cc) ---
  // Opens options_.resume_dir, checks it matches the model, restores step,
  // applied steps and the loss scaler.
  absl::Status OpenResume();
  // This rank's fp32 master shard of layer i: the initialisation, or the
  // checkpoint's when resuming.
  absl::StatusOr<at::Tensor> InitialMaster(size_t i);
  // Resuming: writes the checkpoint's optimizer states of layer i into
  // spilld's state objects (or the local tensors).
  absl::Status RestoreStates(size_t i);
  // A group with its states on NVMe (offload_optimizer.device=nvme): sets
  // its master to master32 and its moments to the checkpoint's (zeros
  // when not resuming) through CopyNvmeStates.
  absl::Status RestoreNvmeStates(size_t i, const at::Tensor& master32);
  // The checkpoint's optimizer state k (StateNames() order) of layer i,
  // this rank's shard.
  absl::StatusOr<at::Tensor> CheckpointState(size_t i, size_t k);
  // Layer i's fp32 master and optimizer states on the CPU, in StateNames()
  // order, from the local tensors, spilld's pinned objects or its NVMe tier.
  absl::StatusOr<std::vector<at::Tensor>> ReadStates(size_t i);
  // Moves a states_on_nvme group's master and moments (fp32, shard
  // elements each, master first) between spilld and `values` through
  // pinned staging objects registered for the call and freed after it.
  // to_spilld: import `values`; else export into `values`.
  absl::Status CopyNvmeStates(size_t i, bool to_spilld, std::vector<at::Tensor>* values);
  // Overwrites a spilld object (same byte size) with `values`, e.g. the
  // fp32 master spilld made from the 16-bit shard with the exact fp32
  // initial values (DeepSpeed's master is the fp32 initialisation).
  absl::Status WriteObject(uint64_t object_id, const at::Tensor& values, const char* what);
  // An fp32 spilld object's values, copied to a CPU tensor.
  absl::StatusOr<at::Tensor> ReadObject(uint64_t object_id, const char* what);
  bool states_on_nvme() const;
  // Every rank's outcome: `mine` when it failed, Aborted naming how many
  // other ranks failed, OK when none did (collective).
  absl::Status AgreeAll(const absl::Status& mine, const char* what);
  std::string layer_name(size_t i) const;

  // --- parameter gathers (engine_fetch.cc) ---
  // Demand gather of layer i at the next position of the access order:
  // issues it unless live, checks or records the trace, prefetches ahead.
  absl::Status Require(size_t i, StepStats& stats);
  // Orders layer i's gather before the compute stream's next work.
  absl::Status Ready(size_t i);
  // After a use: frees layer i's gathered parameters unless persistent or
  // used again within stage3_max_reuse_distance.
  void Done(size_t i);
  // Issues acquire → H2D → all-gather of layer i (no wait).
  absl::Status IssueGather(size_t i, StepStats& stats);
  absl::StatusOr<at::Tensor> SourceShard(size_t i, StepStats& stats);
  void Prefetch(size_t pos, StepStats& stats);
  // Asks spilld for the pins of the next options_.acquire_ahead layers of
  // the trace from `pos` that are not gathered (SourceShard then finds the
  // answer there instead of waiting a round trip), each only once its
  // optimizer step has been answered. Not for NVMe parameters (a pin takes
  // a buffer) nor while recording the trace.
  void AcquireAhead(size_t pos);
  // Neither queued nor in flight without an answer: layer i's shard in
  // spilld is the one its next gather should read.
  bool StepSettled(size_t i) const;
  // Releases the pins AcquireAhead took that no gather used (end of a
  // micro-step; the access order changed).
  void DropEarlyPins();
  // Frees every non-persistent gathered layer; ends the micro-step's trace.
  void EndMicroStep(StepStats& stats);
  void FreeGathered(size_t i);
  // Releases pins whose copies finished (all of them with wait_all).
  absl::Status PollReleases(bool wait_all);

  // --- forward, backward, gradients (engine_backward.cc) ---
  absl::StatusOr<at::Tensor> MicroStep(const MicroBatch& mb, uint32_t micro, StepStats& stats);
  absl::StatusOr<at::Tensor> RunLayer(size_t i, const at::Tensor& x, const at::Tensor& targets,
                                      StepStats& stats);
  // Layer i's gradient is complete for this micro-step: reduce-scatter it
  // into the shard and hand it to spilld (or the local accumulator).
  absl::Status ReduceLayer(size_t i, uint32_t micro, StepStats& stats);
  absl::Status FlushBucket(uint32_t micro, StepStats& stats);
  absl::Status HandOffShard(size_t i, uint32_t micro, const at::Tensor& shard,
                            const std::shared_ptr<Work>& rs, StepStats& stats);
  absl::Status PollGrads(bool wait_all, StepStats& stats);
  // Gradient shards' sums of squares computed where the shard is (the GPU)
  // and sent with GradReady, so spilld skips its pass: options_
  // .grad_sum_on_device, offloaded, without gradient accumulation.
  bool GradSumOnDevice() const;

  // --- activation checkpoints in host memory (engine_activations.cc) ---
  // activation_checkpointing.cpu_checkpointing with gradient checkpointing.
  bool CpuCheckpointing() const;
  // Copies layer i's input x to host memory (D2H stream); the caller drops x.
  void OffloadActivation(size_t i, const at::Tensor& x, StepStats& stats);
  // Starts bringing layer i's input back (copy stream); no-op when already.
  void LoadActivation(size_t i, StepStats& stats);
  // Layer i's input on the device, ordered before the compute stream's next
  // work; its host copy is released.
  at::Tensor TakeActivation(size_t i, StepStats& stats);
  absl::Status Optimize(StepStats& stats);
  void LocalStep(double lr, double grad_scale);
  // Layer i's step of steps_step_ may go out (QueueStep); PumpSteps sends
  // the lowest queued layers while fewer than max_steps_in_flight run.
  void QueueStep(size_t i);
  void PumpSteps();
  void SendStep(size_t i);
  // Speculative steps: whether this step's go out before the norm is known,
  // and the commit that ends layer i's.
  bool Speculate() const;
  void SendCommit(size_t i);
  // Layer i's speculative step has run and its coefficient is known.
  bool CommitDue(size_t i) const { return step_speculative_[i] && !steps_speculate_; }
  // Acquire of a parameter shard, retried while spilld answers
  // ResourceExhausted for NVMe parameters (every offload_param buffer busy)
  // until options_.timeout.
  absl::StatusOr<client::ObjectInfo> AcquireParam(uint64_t object_id, bool for_write);
  absl::StatusOr<client::OffloadBudget> ParamBudget() const;
  // NVMe parameters: asks spilld to read ahead the shards of the next trace
  // positions (a hint: a busy budget skips it).
  void PrefetchFromNvme();
  // Sends layer i's queued step if it was not yet sent and waits for it
  // (all layers'); the step's error, or Internal when it was (not) applied
  // against the overflow flag.
  absl::Status FinishStep(size_t i, StepStats& stats);
  absl::Status FinishSteps(StepStats& stats);
  bool OverlapStep() const;
  // Waits up to options_.timeout; the error is prefixed with `what`.
  absl::Status Wait(const std::shared_ptr<Work>& work, const char* what);
  absl::Status Wait(const std::shared_ptr<client::Work>& work, const char* what);
  void SyncCompute();
  // SyncCompute at the end of backward: while the device finishes, keeps
  // handing finished gradient copies on (PollGrads), so GradReady and the
  // optimizer steps that may overlap backward go out as soon as each copy
  // is done rather than after the last kernel (the host thread runs ahead
  // of the device and reaches this wait early).
  absl::Status SyncComputeHandingOffGrads(StepStats& stats);

  EngineOptions options_;
  Collectives* collectives_;
  GptModel model_;
  LrSchedule schedule_;
  LossScaler scaler_;
  std::unique_ptr<client::Session> session_;
  std::vector<LayerState> layers_;
  at::ScalarType dtype_;
  // Offload none/none: shards and optimizer state stay on the device.
  bool local_;
  // offload_param none with the optimizer offloaded: a device copy of the
  // parameter shard, refreshed after each step.
  bool param_on_device_;
  // offload_param.device=nvme: parameter shards have home NVMe in spilld.
  bool param_nvme_;
  size_t nvme_prefetch_pos_ = 0;  // Next trace position to read ahead.
  std::vector<std::shared_ptr<client::Work>> nvme_prefetches_;
  std::optional<c10::Stream> copy_stream_;  // CUDA: H2D copies
  std::optional<c10::Stream> d2h_stream_;   // CUDA: gradient D2H copies
  std::vector<HostActivation> host_acts_;   // cpu_checkpointing, by layer
  int64_t step_ = 0;
  int64_t applied_steps_ = 0;  // Steps not skipped (Adam's bias correction).
  std::unique_ptr<CheckpointReader> resume_;  // While building from a checkpoint.
  // Access order: trace_ (recorded), pos_ in the current micro-step;
  // recording_ while it is (re)built into new_trace_.
  std::vector<int> trace_, new_trace_;
  std::vector<int> next_use_;        // Position of the next use of trace_[p], -1 if none.
  std::vector<int64_t> trace_elems_;  // Prefix sums of the gathered elements.
  size_t pos_ = 0;
  bool recording_ = true;
  int64_t live_elems_ = 0, inflight_elems_ = 0;
  std::vector<PendingRelease> releases_;
  std::vector<std::shared_ptr<client::Work>> release_works_;  // Release answers to check
  std::vector<PendingGrad> grads_;
  // Layers whose gradient waits in the reduce bucket, and its elements.
  std::vector<size_t> bucket_;
  int64_t bucket_elems_ = 0;
  // OptimizerStep per layer of step steps_step_, in flight until the
  // layer's next gather (or GatherParameters / SaveCheckpoint) waits for it.
  std::vector<std::shared_ptr<client::Work>> step_works_;
  std::vector<bool> step_queued_;  // Queued, not yet sent.
  // Speculative steps: this step's go out speculatively (decided when it
  // starts; steps_speculate_ until its coefficient is known, so a step
  // queued before goes out as it was due, and after which the commits may
  // go); layers whose speculative step went out and whose commit has not;
  // the last step's clip coefficient (kAuto's guess); rescaled commits
  // since the last step.
  bool speculate_ = false;
  bool steps_speculate_ = false;  // Steps of steps_step_ sent now are speculative.
  std::vector<bool> step_speculative_;
  std::vector<bool> step_quick_commit_;  // step_works_[i] is a commit that keeps its step.
  std::optional<double> last_clip_;
  int64_t steps_rescaled_ = 0;
  int64_t step_refusals_ = 0;       // see StepStats::step_refusals
  uint64_t steps_step_ = 0;
  bool steps_overflow_ = false;
  float steps_lr_ = 0, steps_grad_scale_ = 1;
  std::vector<OptimizerSpan> optimizer_spans_;  // record_optimizer_spans
  double sum_squares_ = 0;  // This rank's, from the last micro-step's GradReady.
  at::Tensor loss_sum_;     // Device: sum of micro-step losses.
};

}  // namespace spill::worker

#endif  // SPILL_WORKER_ENGINE_H_
