// zero3_train --profile=PATH: a timeline of training steps. LibTorch's
// profiler (Kineto: host-side spans and, on CUDA, kernels and copies) runs
// over the profiled steps and writes PATH.rank<R>.json (Chrome trace
// format; chrome://tracing or Perfetto open it); the engine's spans of
// spilld's optimizer steps (sent, answered) go to PATH.rank<R>.steps.json,
// with the steady_clock time of an "spill::align" span of the trace so that
// bench/zero3_timeline.py can put both on one time line.
#ifndef SPILL_BENCH_ZERO3_PROFILE_H_
#define SPILL_BENCH_ZERO3_PROFILE_H_

#include <chrono>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "worker/engine.h"

namespace spill::bench {

class StepProfiler {
 public:
  // path empty: every call is a no-op.
  StepProfiler(std::string path, int rank, bool cuda) : path_(std::move(path)), rank_(rank), cuda_(cuda) {}

  // Starts the profiler (once; later calls do nothing).
  void Start();
  // Stops it and writes both files; spans are the engine's optimizer spans
  // of the profiled steps. FailedPrecondition when not started; the file's
  // error otherwise.
  absl::Status Finish(const std::vector<worker::OptimizerSpan>& spans);
  bool started() const { return started_; }

 private:
  std::string path_;
  int rank_;
  bool cuda_;
  bool started_ = false;
  std::chrono::steady_clock::time_point align_;
};

}  // namespace spill::bench

#endif  // SPILL_BENCH_ZERO3_PROFILE_H_
