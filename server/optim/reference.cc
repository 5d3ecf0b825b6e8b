// The scalar reference: every element computed in double precision from the
// stored inputs, rounded once into the stored outputs. Slow and simple on
// purpose; the kernels in kernels.cc implement the same formulas in fp32.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "server/optim/half.h"
#include "server/optim/kernels.h"
#include "server/optim/optimizer.h"

namespace spill::optim::reference {
namespace {

double Load(DType d, const void* p, uint64_t i) {
  switch (d) {
    case DType::kBFloat16: return BF16ToFloat(static_cast<const uint16_t*>(p)[i]);
    case DType::kFloat16: return HalfToFloat(static_cast<const uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

void StoreParam(DType d, void* p, uint64_t i, float v) {
  switch (d) {
    case DType::kBFloat16: static_cast<uint16_t*>(p)[i] = FloatToBF16(v); break;
    case DType::kFloat16: static_cast<uint16_t*>(p)[i] = FloatToHalf(v); break;
    default: static_cast<float*>(p)[i] = v;
  }
}

double Sign(double c) { return c > 0 ? 1.0 : c < 0 ? -1.0 : c * 0.0; }

// One element: p, s0, s1 in/out in double.
void Element(const Hyper& h, const StepArgs& a, double g, double& p, double& s0, double& s1) {
  const double lr = h.lr, wd = h.weight_decay, b1 = h.beta1, b2 = h.beta2, eps = h.eps;
  g *= a.grad_scale;
  switch (h.algo) {
    case Algo::kAdam:
    case Algo::kAdamW: {
      if (h.algo == Algo::kAdam) g += wd * p;        // L2
      if (h.algo == Algo::kAdamW) p *= 1.0 - lr * wd;  // decoupled
      const double t = static_cast<double>(a.step);
      const double bc1 = h.bias_correction ? 1.0 - std::pow(b1, t) : 1.0;
      const double bc2 = h.bias_correction ? 1.0 - std::pow(b2, t) : 1.0;
      s0 = b1 * s0 + (1.0 - b1) * g;
      s1 = b2 * s1 + (1.0 - b2) * g * g;
      p -= (lr / bc1) * s0 / (std::sqrt(s1) / std::sqrt(bc2) + eps);
      break;
    }
    case Algo::kAdagrad:
      g += wd * p;
      s0 += g * g;
      p -= lr * g / (std::sqrt(s0) + eps);
      break;
    case Algo::kLion: {
      p *= 1.0 - lr * wd;
      p -= lr * Sign(b1 * s0 + (1.0 - b1) * g);
      s0 = b2 * s0 + (1.0 - b2) * g;
      break;
    }
    case Algo::kSgd: {
      g += wd * p;
      double dir = g;
      if (h.momentum > 0) {
        const double mom = h.momentum;
        s0 = a.step == 1 ? g : mom * s0 + (1.0 - h.dampening) * g;
        dir = h.nesterov ? g + mom * s0 : s0;
      }
      p -= lr * dir;
      break;
    }
  }
}

}  // namespace

absl::Status Step(const Hyper& h, const StepArgs& a, const ShardView& v) {
  SPILL_RETURN_IF_ERROR(internal::ValidateStep(h, a, v));
  const int states = StateCount(h);
  for (uint64_t i = 0; i < v.n; ++i) {
    double p = v.master[i];
    double s0 = states > 0 ? v.state[0][i] : 0.0;
    double s1 = states > 1 ? v.state[1][i] : 0.0;
    Element(h, a, Load(v.grad_dtype, v.grad, i), p, s0, s1);
    v.master[i] = static_cast<float>(p);
    if (states > 0) v.state[0][i] = static_cast<float>(s0);
    if (states > 1) v.state[1][i] = static_cast<float>(s1);
    if (v.param != nullptr) StoreParam(v.param_dtype, v.param, i, v.master[i]);
  }
  return absl::OkStatus();
}

absl::StatusOr<double> Accumulate(DType gd, const void* grad, float* accum, uint64_t n,
                                  bool assign, float scale) {
  SPILL_RETURN_IF_ERROR(internal::ValidateBuffer(gd, grad, n, "grad"));
  if (accum == nullptr) return absl::InvalidArgumentError("accum pointer is null");
  if (!std::isfinite(scale)) {
    return absl::InvalidArgumentError(absl::StrCat("scale = ", scale, " is not finite"));
  }
  double sum = 0;
  for (uint64_t i = 0; i < n; ++i) {
    const double x = (assign ? 0.0 : double{accum[i]}) + Load(gd, grad, i) * double{scale};
    accum[i] = static_cast<float>(x);
    sum += double{accum[i]} * accum[i];
  }
  return sum;
}

absl::StatusOr<double> SumSquares(DType dtype, const void* data, uint64_t n) {
  SPILL_RETURN_IF_ERROR(internal::ValidateBuffer(dtype, data, n, "data"));
  double sum = 0;
  for (uint64_t i = 0; i < n; ++i) {
    const double x = Load(dtype, data, i);
    sum += x * x;
  }
  return sum;
}

}  // namespace spill::optim::reference
