// fp16 loss scaling as DeepSpeed does it (deepspeed/runtime/fp16/
// loss_scaler.py): a static scale (fp16.loss_scale > 0) or DeepSpeed's
// DynamicLossScaler (loss_scale 0): start at 2^initial_scale_power, halve
// on an overflow once `hysteresis` overflows were absorbed (never below
// min_loss_scale), double after loss_scale_window steps without overflow.
// No LibTorch dependency. The engine does not use it yet (fp16 training is
// not implemented); it is the hook's policy.
//
//   absl::StatusOr<LossScaler> s = LossScaler::Create(config.fp16);
//   loss * s->scale();  ...  bool overflow = !isfinite(global sum of squares);
//   s->Update(overflow);   // every rank, with the same all-reduced flag
#ifndef SPILL_WORKER_LOSS_SCALER_H_
#define SPILL_WORKER_LOSS_SCALER_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "worker/config.h"

namespace spill::worker {

class LossScaler {
 public:
  // InvalidArgument naming the fp16 key for loss_scale < 0,
  // initial_scale_power outside [0, 64], loss_scale_window < 1,
  // hysteresis < 1 or min_loss_scale <= 0.
  static absl::StatusOr<LossScaler> Create(const Fp16Config& config);

  double scale() const { return scale_; }
  bool dynamic() const { return dynamic_; }
  // Records one step's outcome (overflow: the step was skipped).
  void Update(bool overflow);

  // Everything Update depends on, for checkpoints.
  struct State {
    double scale = 1;
    int64_t cur_hysteresis = 0;
    int64_t iter = 0;
    int64_t last_overflow_iter = -1;
  };
  State state() const { return {scale_, cur_hysteresis_, iter_, last_overflow_iter_}; }
  // InvalidArgument (nothing changed) for a scale that is not finite and
  // positive or a hysteresis outside [1, hysteresis].
  absl::Status Restore(const State& s);

 private:
  LossScaler() = default;
  bool dynamic_ = false;
  double scale_ = 1;
  double min_scale_ = 1;
  int64_t window_ = 1000;
  int64_t hysteresis_ = 2;
  int64_t cur_hysteresis_ = 2;
  bool consecutive_hysteresis_ = false;
  int64_t iter_ = 0;
  int64_t last_overflow_iter_ = -1;
};

}  // namespace spill::worker

#endif  // SPILL_WORKER_LOSS_SCALER_H_
