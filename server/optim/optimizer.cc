#include "server/optim/optimizer.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "server/optim/kernels.h"

namespace spill::optim {
namespace {

// Smallest range worth a thread of its own: 64 Ki elements move >= 1 MiB in
// a step, far more than the cost of handing the range over.
constexpr uint64_t kGrain = 64 * 1024;

absl::Status CheckDType(const char* what, DType dtype) {
  if (SupportedDType(dtype)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " dtype ", DTypeName(static_cast<int>(dtype)),
                   " is not supported (float32, bfloat16, float16)"));
}

absl::Status CheckRange(const char* name, float v, float lo, float hi, bool hi_open) {
  if (std::isfinite(v) && v >= lo && (hi_open ? v < hi : v <= hi)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("hyper-parameter ", name, " = ", v,
                                                 " must be in [", lo, ", ", hi,
                                                 hi_open ? ")" : "]"));
}

size_t ElemSize(DType d) { return DTypeSize(static_cast<int>(d)); }

internal::KernelParams MakeParams(const Hyper& h, const StepArgs& a) {
  internal::KernelParams kp;
  kp.algo = h.algo;
  kp.grad_scale = a.grad_scale;
  kp.lr = h.lr;
  kp.b1 = h.beta1;
  kp.b2 = h.beta2;
  kp.omb1 = static_cast<float>(1.0 - h.beta1);
  kp.omb2 = static_cast<float>(1.0 - h.beta2);
  kp.eps = h.eps;
  const bool decoupled = h.algo == Algo::kAdamW || h.algo == Algo::kLion;
  kp.decay = decoupled ? static_cast<float>(1.0 - double{h.lr} * h.weight_decay) : 1.f;
  kp.l2 = decoupled ? 0.f : h.weight_decay;
  if (h.algo == Algo::kAdam || h.algo == Algo::kAdamW) {
    const double t = static_cast<double>(a.step);
    const double bc1 = h.bias_correction ? 1.0 - std::pow(double{h.beta1}, t) : 1.0;
    const double bc2 = h.bias_correction ? 1.0 - std::pow(double{h.beta2}, t) : 1.0;
    kp.step_size = static_cast<float>(h.lr / bc1);
    kp.inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
  }
  kp.momentum = h.momentum;
  kp.omd = static_cast<float>(1.0 - h.dampening);
  kp.has_momentum = h.algo == Algo::kSgd && h.momentum > 0.f;
  kp.nesterov = h.nesterov;
  kp.first_step = a.step == 1;
  return kp;
}

}  // namespace

const char* AlgoName(Algo algo) {
  switch (algo) {
    case Algo::kAdamW: return "adamw";
    case Algo::kAdam: return "adam";
    case Algo::kAdagrad: return "adagrad";
    case Algo::kLion: return "lion";
    case Algo::kSgd: return "sgd";
  }
  return "invalid";
}

const char* SimdTargetName() { return internal::TargetName(); }

bool SupportedDType(DType d) {
  return d == DType::kFloat32 || d == DType::kBFloat16 || d == DType::kFloat16;
}

absl::Status ValidateHyper(const Hyper& h) {
  switch (h.algo) {
    case Algo::kAdamW: case Algo::kAdam: case Algo::kAdagrad: case Algo::kLion: case Algo::kSgd:
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown optimizer algo ", static_cast<int>(h.algo)));
  }
  const float kInf = INFINITY;
  SPILL_RETURN_IF_ERROR(CheckRange("lr", h.lr, 0.f, kInf, true));
  SPILL_RETURN_IF_ERROR(CheckRange("weight_decay", h.weight_decay, 0.f, kInf, true));
  if (h.algo == Algo::kAdam || h.algo == Algo::kAdamW || h.algo == Algo::kLion) {
    SPILL_RETURN_IF_ERROR(CheckRange("beta1", h.beta1, 0.f, 1.f, true));
    SPILL_RETURN_IF_ERROR(CheckRange("beta2", h.beta2, 0.f, 1.f, true));
  }
  if (h.algo == Algo::kAdam || h.algo == Algo::kAdamW || h.algo == Algo::kAdagrad) {
    if (!(std::isfinite(h.eps) && h.eps > 0.f)) {
      return absl::InvalidArgumentError(
          absl::StrCat("hyper-parameter eps = ", h.eps, " must be finite and > 0"));
    }
  }
  if (h.algo == Algo::kAdagrad) {
    SPILL_RETURN_IF_ERROR(
        CheckRange("initial_accumulator_value", h.initial_accumulator_value, 0.f, kInf, true));
  }
  if (h.algo == Algo::kSgd) {
    SPILL_RETURN_IF_ERROR(CheckRange("momentum", h.momentum, 0.f, kInf, true));
    SPILL_RETURN_IF_ERROR(CheckRange("dampening", h.dampening, 0.f, 1.f, false));
    if (h.nesterov && (h.momentum <= 0.f || h.dampening != 0.f)) {
      return absl::InvalidArgumentError(
          "hyper-parameter nesterov requires momentum > 0 and dampening = 0");
    }
  }
  return absl::OkStatus();
}

int StateCount(const Hyper& h) {
  switch (h.algo) {
    case Algo::kAdamW: case Algo::kAdam: return 2;
    case Algo::kAdagrad: case Algo::kLion: return 1;
    case Algo::kSgd: return h.momentum > 0.f ? 1 : 0;
  }
  return 0;
}

namespace internal {
// Shared by Step and reference::Step (declared in reference.cc too).
absl::Status ValidateStep(const Hyper& h, const StepArgs& a, const ShardView& v) {
  SPILL_RETURN_IF_ERROR(ValidateHyper(h));
  if (a.step == 0) return absl::InvalidArgumentError("step must be >= 1 (1-based step count)");
  if (!std::isfinite(a.grad_scale)) {
    return absl::InvalidArgumentError(absl::StrCat("grad_scale = ", a.grad_scale, " is not finite"));
  }
  if (v.n == 0) return absl::InvalidArgumentError("element count n is 0");
  if (v.grad == nullptr) return absl::InvalidArgumentError("grad pointer is null");
  if (v.master == nullptr) return absl::InvalidArgumentError("master pointer is null");
  for (int s = 0; s < StateCount(h); ++s) {
    if (v.state[s] == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("state[", s, "] is null but ",
                                                     AlgoName(h.algo), " needs ", StateCount(h),
                                                     " state arrays"));
    }
  }
  SPILL_RETURN_IF_ERROR(CheckDType("grad", v.grad_dtype));
  return CheckDType("param", v.param_dtype);
}

absl::Status ValidateBuffer(DType dtype, const void* data, uint64_t n, const char* what) {
  if (n == 0) return absl::InvalidArgumentError("element count n is 0");
  if (data == nullptr) return absl::InvalidArgumentError(absl::StrCat(what, " pointer is null"));
  return CheckDType(what, dtype);
}
}  // namespace internal

namespace {
using RangeFn = void (*)(const internal::KernelParams&, int, const void*, float*, float*, float*,
                         int, void*, size_t);

absl::Status ForRanges(RangeFn fn, const Hyper& h, const internal::KernelParams& kp,
                       const ShardView& v, Executor& exec, uint32_t max_threads) {
  const size_t gs = ElemSize(v.grad_dtype), ps = ElemSize(v.param_dtype);
  const int gd = static_cast<int>(v.grad_dtype), pd = static_cast<int>(v.param_dtype);
  const int states = StateCount(h);
  return exec.ParallelFor(v.n, kGrain, max_threads, [&](uint64_t b, uint64_t e) {
    fn(kp, gd, static_cast<const uint8_t*>(v.grad) + b * gs, v.master + b,
       states > 0 ? v.state[0] + b : nullptr, states > 1 ? v.state[1] + b : nullptr, pd,
       v.param ? static_cast<uint8_t*>(v.param) + b * ps : nullptr, e - b);
  });
}
}  // namespace

absl::Status Step(const Hyper& h, const StepArgs& a, const ShardView& v, Executor& exec,
                  uint32_t max_threads) {
  SPILL_RETURN_IF_ERROR(internal::ValidateStep(h, a, v));
  return ForRanges(&internal::StepRange, h, MakeParams(h, a), v, exec, max_threads);
}

bool Rescalable(const Hyper& h) {
  return h.algo == Algo::kAdamW || (h.algo == Algo::kAdam && h.weight_decay == 0.f);
}

absl::Status Rescale(const Hyper& h, const StepArgs& a, float rescale_to, const ShardView& v,
                     Executor& exec, uint32_t max_threads) {
  SPILL_RETURN_IF_ERROR(internal::ValidateStep(h, a, v));
  if (!Rescalable(h)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a ", AlgoName(h.algo), h.weight_decay != 0.f ? " step with weight decay" : " step",
        " cannot be rescaled (only adamw, and adam without weight decay)"));
  }
  if (!(std::isfinite(rescale_to) && rescale_to > 0.f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rescale_to = ", rescale_to, " must be finite and > 0"));
  }
  internal::KernelParams kp = MakeParams(h, a);
  kp.rescale_to = rescale_to;
  return ForRanges(&internal::RescaleRange, h, kp, v, exec, max_threads);
}

namespace {
// Runs fn over chunks and adds the per-chunk sums in chunk order, so the
// result does not depend on which thread finished first.
absl::StatusOr<double> ParallelSum(uint64_t n, Executor& exec, uint32_t max_threads,
                                   const std::function<double(uint64_t, uint64_t)>& fn) {
  std::mutex mu;
  std::map<uint64_t, double> partial;
  SPILL_RETURN_IF_ERROR(exec.ParallelFor(n, kGrain, max_threads, [&](uint64_t b, uint64_t e) {
    const double s = fn(b, e);
    std::lock_guard<std::mutex> lock(mu);
    partial[b] = s;
  }));
  double sum = 0;
  for (const auto& [begin, s] : partial) sum += s;
  return sum;
}
}  // namespace

absl::StatusOr<double> Accumulate(DType gd, const void* grad, float* accum, uint64_t n,
                                  bool assign, float scale, Executor& exec,
                                  uint32_t max_threads) {
  SPILL_RETURN_IF_ERROR(internal::ValidateBuffer(gd, grad, n, "grad"));
  if (accum == nullptr) return absl::InvalidArgumentError("accum pointer is null");
  if (!std::isfinite(scale)) {
    return absl::InvalidArgumentError(absl::StrCat("scale = ", scale, " is not finite"));
  }
  const size_t gs = ElemSize(gd);
  return ParallelSum(n, exec, max_threads, [&](uint64_t b, uint64_t e) {
    return internal::AccumulateRange(static_cast<int>(gd),
                                     static_cast<const uint8_t*>(grad) + b * gs, accum + b,
                                     assign, scale, e - b);
  });
}

absl::StatusOr<double> SumSquares(DType dtype, const void* data, uint64_t n, Executor& exec,
                                  uint32_t max_threads) {
  SPILL_RETURN_IF_ERROR(internal::ValidateBuffer(dtype, data, n, "data"));
  const size_t sz = ElemSize(dtype);
  return ParallelSum(n, exec, max_threads, [&](uint64_t b, uint64_t e) {
    return internal::SumSquaresRange(static_cast<int>(dtype),
                                     static_cast<const uint8_t*>(data) + b * sz, e - b);
  });
}

absl::Status InitState(const Hyper& h, float* state[2], uint64_t n) {
  SPILL_RETURN_IF_ERROR(ValidateHyper(h));
  if (n == 0) return absl::InvalidArgumentError("element count n is 0");
  const int count = StateCount(h);
  for (int s = 0; s < count; ++s) {
    if (state == nullptr || state[s] == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("state[", s, "] is null"));
    }
  }
  const float init = h.algo == Algo::kAdagrad ? h.initial_accumulator_value : 0.f;
  for (int s = 0; s < count; ++s) std::fill(state[s], state[s] + n, init);
  return absl::OkStatus();
}

absl::Status InitMaster(DType pd, const void* param, float* master, uint64_t n, Executor& exec,
                        uint32_t max_threads) {
  SPILL_RETURN_IF_ERROR(internal::ValidateBuffer(pd, param, n, "param"));
  if (master == nullptr) return absl::InvalidArgumentError("master pointer is null");
  const size_t sz = ElemSize(pd);
  return exec.ParallelFor(n, kGrain, max_threads, [&](uint64_t b, uint64_t e) {
    internal::ToFloatRange(static_cast<int>(pd), static_cast<const uint8_t*>(param) + b * sz,
                           master + b, e - b);
  });
}

}  // namespace spill::optim
