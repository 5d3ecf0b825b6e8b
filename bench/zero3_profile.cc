#include "bench/zero3_profile.h"

#include <ATen/record_function.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace spill::bench {
namespace {

namespace prof = torch::autograd::profiler;
using torch::profiler::impl::ActivityType;
using torch::profiler::impl::ProfilerConfig;
using torch::profiler::impl::ProfilerState;

double Micros(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::micro>(t.time_since_epoch()).count();
}

}  // namespace

void StepProfiler::Start() {
  if (path_.empty() || started_) return;
  std::set<ActivityType> activities = {ActivityType::CPU};
  if (cuda_) activities.insert(ActivityType::CUDA);
  const ProfilerConfig config(ProfilerState::KINETO);
  prof::prepareProfiler(config, activities);
  prof::enableProfiler(config, activities);
  started_ = true;
  // A marker span whose trace timestamp corresponds to align_.
  at::RecordFunction rf(at::RecordScope::USER_SCOPE);
  align_ = std::chrono::steady_clock::now();
  if (rf.isActive()) rf.before("spill::align");
}

absl::Status StepProfiler::Finish(const std::vector<worker::OptimizerSpan>& spans) {
  if (path_.empty()) return absl::OkStatus();
  if (!started_) return absl::FailedPreconditionError("profiler was not started");
  std::unique_ptr<prof::ProfilerResult> result = prof::disableProfiler();
  started_ = false;
  const std::string trace = absl::StrCat(path_, ".rank", rank_, ".json");
  result->save(trace);
  nlohmann::json steps = nlohmann::json::array();
  for (const worker::OptimizerSpan& s : spans) {
    steps.push_back({{"layer", s.layer}, {"step", s.step}, {"sent_us", Micros(s.sent)},
                     {"answered_us", Micros(s.answered)}});
  }
  const nlohmann::json out = {{"trace", trace}, {"align_us", Micros(align_)}, {"steps", steps}};
  const std::string file = absl::StrCat(path_, ".rank", rank_, ".steps.json");
  std::ofstream f(file);
  f << out.dump(1) << "\n";
  f.close();
  if (!f) return absl::InternalError(absl::StrCat("could not write ", file));
  return absl::OkStatus();
}

}  // namespace spill::bench
