// Internal: the per-range SIMD kernels behind optimizer.h, dispatched at run
// time to the best target Highway finds (AVX-512, AVX2, SSE4, ...). Callers
// have validated every argument; pointers are already offset to the range.
#ifndef SPILL_SERVER_OPTIM_KERNELS_H_
#define SPILL_SERVER_OPTIM_KERNELS_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

#include "server/optim/optimizer.h"

namespace spill::optim::internal {

// Constants of one step, rounded to fp32 once per step (not per element).
struct KernelParams {
  Algo algo = Algo::kAdamW;
  float grad_scale = 1.f;
  float lr = 0.f;
  float b1 = 0.f, omb1 = 1.f, b2 = 0.f, omb2 = 1.f, eps = 0.f;
  float decay = 1.f;   // 1 - lr * weight_decay (AdamW, Lion); else 1
  float l2 = 0.f;      // weight_decay added to the gradient (Adam, Adagrad, SGD); else 0
  float step_size = 0.f;     // Adam/AdamW: lr / (1 - beta1^t)
  float inv_sqrt_bc2 = 1.f;  // Adam/AdamW: 1 / sqrt(1 - beta2^t)
  float momentum = 0.f, omd = 1.f;  // SGD: momentum, 1 - dampening
  bool has_momentum = false, nesterov = false, first_step = false;
  // RescaleRange: the grad_scale the step is turned into (grad_scale above
  // is the one it ran with).
  float rescale_to = 1.f;
};

// dtype arguments are DType values (kFloat32, kBFloat16, kFloat16); param_dtype
// 0 with param == nullptr writes no parameter.
void StepRange(const KernelParams& kp, int grad_dtype, const void* grad, float* master,
               float* s0, float* s1, int param_dtype, void* param, size_t n);
// Turns an Adam/AdamW step (without L2 weight decay) that ran with
// kp.grad_scale into the same step with kp.rescale_to; see optim::Rescale.
void RescaleRange(const KernelParams& kp, int grad_dtype, const void* grad, float* master,
                  float* s0, float* s1, int param_dtype, void* param, size_t n);
// accum[i] = (assign ? 0 : accum[i]) + grad[i] * scale; returns the sum of
// squares of the new accum values.
double AccumulateRange(int grad_dtype, const void* grad, float* accum, bool assign, float scale,
                       size_t n);
double SumSquaresRange(int dtype, const void* data, size_t n);
void ToFloatRange(int dtype, const void* src, float* dst, size_t n);

// Argument checks shared by the kernels' drivers and the reference.
absl::Status ValidateStep(const Hyper& hyper, const StepArgs& args, const ShardView& view);
absl::Status ValidateBuffer(DType dtype, const void* data, uint64_t n, const char* what);

// Name of the SIMD target the kernels run on (e.g. "AVX3", "AVX2").
const char* TargetName();

}  // namespace spill::optim::internal

#endif  // SPILL_SERVER_OPTIM_KERNELS_H_
