// Learning-rate schedules from the DeepSpeed config's "scheduler" block
// (DeepSpeed's deepspeed/runtime/lr_schedules.py: WarmupLR, WarmupDecayLR),
// or a constant rate when the config has none. No LibTorch dependency.
//
//   absl::StatusOr<LrSchedule> s = LrSchedule::Create(config.scheduler, config.optimizer.lr);
//   float lr = s->LrAt(step - 1);   // optimizer step `step` (1-based)
//
// Iteration i is the number of optimizer steps already taken (DeepSpeed's
// last_batch_iteration when the step runs), so step 1 uses LrAt(0).
#ifndef SPILL_WORKER_SCHEDULER_H_
#define SPILL_WORKER_SCHEDULER_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "worker/config.h"

namespace spill::worker {

class LrSchedule {
 public:
  // kNone: constant base_lr. WarmupLR: min + (max - min) * gamma(i), gamma
  // rising over warmup_num_steps (log: log(i + 1) / log(warmup), linear:
  // i / warmup), then 1. WarmupDecayLR: the same warmup, then gamma =
  // max(0, (total - i) / max(1, total - warmup)). warmup_num_steps below 2
  // is raised to 2 as DeepSpeed does. InvalidArgument naming the key for a
  // negative or non-finite rate, warmup_num_steps < 0, or (WarmupDecayLR)
  // total_num_steps < 1.
  static absl::StatusOr<LrSchedule> Create(const SchedulerConfig& config, double base_lr);

  // The learning rate for iteration `iteration` (>= 0; a negative value is
  // treated as 0).
  double LrAt(int64_t iteration) const;

 private:
  LrSchedule() = default;
  double Gamma(int64_t iteration) const;

  SchedulerConfig config_;
  double base_lr_ = 0;
};

}  // namespace spill::worker

#endif  // SPILL_WORKER_SCHEDULER_H_
