#include "worker/loss_scaler.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace spill::worker {

absl::StatusOr<LossScaler> LossScaler::Create(const Fp16Config& c) {
  auto bad = [](const char* key, double v, const char* want) {
    return absl::InvalidArgumentError(absl::StrCat("fp16.", key, " must be ", want, ", got ", v));
  };
  if (!(c.loss_scale >= 0) || !std::isfinite(c.loss_scale)) return bad("loss_scale", c.loss_scale, ">= 0");
  if (c.initial_scale_power < 0 || c.initial_scale_power > 64) {
    return bad("initial_scale_power", c.initial_scale_power, "in [0, 64]");
  }
  if (c.loss_scale_window < 1) return bad("loss_scale_window", c.loss_scale_window, ">= 1");
  if (c.hysteresis < 1) return bad("hysteresis", c.hysteresis, ">= 1");
  if (!(c.min_loss_scale > 0)) return bad("min_loss_scale", c.min_loss_scale, "> 0");
  LossScaler s;
  s.dynamic_ = c.loss_scale == 0;
  s.scale_ = s.dynamic_ ? std::ldexp(1.0, static_cast<int>(c.initial_scale_power)) : c.loss_scale;
  s.min_scale_ = c.min_loss_scale;
  s.window_ = c.loss_scale_window;
  s.hysteresis_ = s.cur_hysteresis_ = c.hysteresis;
  s.consecutive_hysteresis_ = c.consecutive_hysteresis;
  return s;
}

void LossScaler::Update(bool overflow) {
  if (!dynamic_) return;
  if (overflow) {
    if (hysteresis_ == 1 || cur_hysteresis_ == 1) {
      scale_ = std::max(scale_ / 2, min_scale_);
    } else {
      --cur_hysteresis_;
    }
    last_overflow_iter_ = iter_;
  } else {
    if (consecutive_hysteresis_) cur_hysteresis_ = hysteresis_;
    if ((iter_ - last_overflow_iter_) % window_ == 0) {
      if (!consecutive_hysteresis_) cur_hysteresis_ = hysteresis_;
      scale_ *= 2;
    }
  }
  ++iter_;
}

absl::Status LossScaler::Restore(const State& s) {
  if (!std::isfinite(s.scale) || s.scale <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("loss scale must be finite and > 0, got ", s.scale));
  }
  if (s.cur_hysteresis < 1 || s.cur_hysteresis > hysteresis_) {
    return absl::InvalidArgumentError(absl::StrCat("loss scaler hysteresis ", s.cur_hysteresis,
                                                   " is outside [1, ", hysteresis_, "]"));
  }
  scale_ = s.scale;
  cur_hysteresis_ = s.cur_hysteresis;
  iter_ = s.iter;
  last_overflow_iter_ = s.last_overflow_iter;
  return absl::OkStatus();
}

}  // namespace spill::worker
