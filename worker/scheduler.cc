#include "worker/scheduler.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace spill::worker {
namespace {

absl::Status CheckRate(const char* key, double value) {
  if (!std::isfinite(value) || value < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(key, " must be finite and >= 0, got ", value));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LrSchedule> LrSchedule::Create(const SchedulerConfig& config, double base_lr) {
  LrSchedule s;
  s.config_ = config;
  s.base_lr_ = base_lr;
  if (config.type == SchedulerType::kNone) {
    absl::Status ok = CheckRate("optimizer.params.lr", base_lr);
    if (!ok.ok()) return ok;
    return s;
  }
  for (absl::Status st : {CheckRate("scheduler.params.warmup_min_lr", config.warmup_min_lr),
                          CheckRate("scheduler.params.warmup_max_lr", config.warmup_max_lr)}) {
    if (!st.ok()) return st;
  }
  if (config.warmup_num_steps < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheduler.params.warmup_num_steps must be >= 0, got ", config.warmup_num_steps));
  }
  if (config.type == SchedulerType::kWarmupDecayLR && config.total_num_steps < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheduler.params.total_num_steps must be >= 1 for WarmupDecayLR, got ",
        config.total_num_steps));
  }
  s.config_.warmup_num_steps = std::max<int64_t>(2, config.warmup_num_steps);
  return s;
}

double LrSchedule::Gamma(int64_t i) const {
  const int64_t warmup = config_.warmup_num_steps;
  if (i < warmup) {
    if (config_.warmup_type == WarmupType::kLog) {
      return std::log(static_cast<double>(i + 1)) / std::log(static_cast<double>(warmup));
    }
    return static_cast<double>(i) / static_cast<double>(warmup);
  }
  if (config_.type == SchedulerType::kWarmupDecayLR) {
    const double total = static_cast<double>(config_.total_num_steps);
    return std::max(0.0, (total - static_cast<double>(i)) /
                             std::max(1.0, total - static_cast<double>(warmup)));
  }
  return 1.0;
}

double LrSchedule::LrAt(int64_t iteration) const {
  if (config_.type == SchedulerType::kNone) return base_lr_;
  const int64_t i = std::max<int64_t>(0, iteration);
  return config_.warmup_min_lr + (config_.warmup_max_lr - config_.warmup_min_lr) * Gamma(i);
}

}  // namespace spill::worker
