// CPU optimizer engine: fused mixed-precision optimizer steps over fp32
// master weights and optimizer states, gradient accumulation with the sum of
// squares computed in the same pass, and a double-precision scalar reference.
//
//   Hyper h;  h.algo = Algo::kAdamW;  h.lr = 1e-4f;  h.weight_decay = 0.01f;
//   SPILL_RETURN_IF_ERROR(ValidateHyper(h));
//   ShardView v{DType::kBFloat16, grad, master, {m, v}, DType::kBFloat16, param, n};
//   SPILL_RETURN_IF_ERROR(Step(h, {.step = t, .grad_scale = clip / loss_scale}, v, exec));
//
// The math of each optimizer is in server/optim/README.md (torch.optim
// semantics). Every function is element-wise: results do not depend on the
// number of threads or on how [0, n) is split, and the SIMD kernels give the
// same bits on every target that has FMA (x86 AVX2 and AVX-512 among them).
//
// Thread-safety: all functions are reentrant; concurrent calls must not
// write overlapping arrays.
#ifndef SPILL_SERVER_OPTIM_OPTIMIZER_H_
#define SPILL_SERVER_OPTIM_OPTIMIZER_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "server/optim/executor.h"

namespace spill::optim {

enum class Algo { kAdamW, kAdam, kAdagrad, kLion, kSgd };
const char* AlgoName(Algo algo);

struct Hyper {
  Algo algo = Algo::kAdamW;
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.f;
  bool bias_correction = true;  // Adam/AdamW
  // kAdam and kAdagrad and kSgd apply weight decay as L2 (added to the
  // gradient); kAdamW and kLion decoupled (p *= 1 - lr * weight_decay).
  float momentum = 0.f, dampening = 0.f;
  bool nesterov = false;                 // SGD
  float initial_accumulator_value = 0.f;  // Adagrad (used by InitState)
};

// OK, or InvalidArgument naming the field: lr < 0 or not finite; beta1/beta2
// not in [0, 1) (Adam, AdamW, Lion); eps <= 0 or not finite (Adam, AdamW,
// Adagrad); weight_decay < 0 or not finite; momentum < 0; dampening not in
// [0, 1]; nesterov without momentum > 0 and dampening == 0 (torch's rule);
// initial_accumulator_value < 0; an unknown algo.
absl::Status ValidateHyper(const Hyper& hyper);

// fp32 state arrays per element: Adam/AdamW 2 (m, v), Adagrad 1 (sum of
// squares), Lion 1 (m), SGD 1 (momentum buffer) if momentum > 0 else 0.
int StateCount(const Hyper& hyper);

// The SIMD target the kernels dispatch to on this machine ("AVX3", "AVX2", ...).
const char* SimdTargetName();

// The dtypes accepted for gradients and parameters: kFloat32, kBFloat16,
// kFloat16.
bool SupportedDType(DType dtype);

struct ShardView {
  DType grad_dtype = DType::kFloat32;
  const void* grad = nullptr;    // bf16/fp16/fp32 (an fp32 accumulation buffer is fp32)
  float* master = nullptr;       // fp32 master weights, updated in place
  float* state[2] = {nullptr, nullptr};  // StateCount(hyper) arrays, updated in place
  DType param_dtype = DType::kBFloat16;
  void* param = nullptr;         // new parameter written here; nullptr = not written
  uint64_t n = 0;
};

struct StepArgs {
  uint64_t step = 1;       // 1-based optimizer step count (bias correction; SGD's first step)
  float grad_scale = 1.f;  // applied to every gradient element: clip_coef / loss_scale
};

// One fused pass per element: g = grad[i] * grad_scale (16-bit gradients are
// widened in registers), update master[i] and the states, and write
// param[i] = master[i] rounded to param_dtype (round to nearest even for
// bf16 and fp16). A pure function of its inputs.
// Non-finite gradients are not checked here: they make the updated elements
// non-finite. Skipping an overflowed fp16 step is the caller's decision,
// taken from Accumulate/SumSquares before calling Step.
// Returns OK, or InvalidArgument (nothing written) for: invalid hyper
// (ValidateHyper), step == 0, grad_scale not finite, n == 0, a null grad or
// master, a null state array among the first StateCount(hyper), an
// unsupported grad or param dtype (checked even when param is null).
// max_threads: the job's share of exec (see Executor::ParallelFor).
absl::Status Step(const Hyper& hyper, const StepArgs& args, const ShardView& view,
                  Executor& exec, uint32_t max_threads = 0);

// Speculative steps: a step may run before its grad_scale is known (the
// clip coefficient needs the global norm of every gradient) with a
// predicted one, and be turned into the step with the right one afterwards
// from what it left and the same gradient, in one pass instead of keeping
// the old master and states. Possible for Adam and AdamW, the weight decay
// decoupled (Adam without weight decay is the same step).
bool Rescalable(const Hyper& hyper);

// Turns the step `applied` (args.step and args.grad_scale as Step ran it on
// view) into that step with grad_scale `rescale_to`: master, states and
// param afterwards hold what Step with rescale_to would have left, up to
// the rounding of the first step's stored results (about 2^-24 relative to
// the largest moment involved; the second moment's relative error grows as
// (grad_scale / rescale_to)^2 when rescale_to is much smaller). view.grad
// must hold the gradient the step read. Same validation as Step, plus
// InvalidArgument for a hyper that is not Rescalable (naming the optimizer)
// or a rescale_to that is not finite and > 0; nothing written then.
absl::Status Rescale(const Hyper& hyper, const StepArgs& applied, float rescale_to,
                     const ShardView& view, Executor& exec, uint32_t max_threads = 0);

// Gradient accumulation in fp32: accum[i] = (assign ? 0 : accum[i]) +
// grad[i] * scale (one fused multiply-add, rounded once), and returns the
// sum of squares of the resulting accum values (each thread sums in double;
// the per-chunk sums are added in a fixed order). A non-finite input or an
// fp32 overflow makes the result non-finite: that is how fp16 overflow is
// detected. InvalidArgument (nothing written) for null pointers, n == 0, an
// unsupported dtype or a non-finite scale.
absl::StatusOr<double> Accumulate(DType grad_dtype, const void* grad, float* accum, uint64_t n,
                                  bool assign, float scale, Executor& exec,
                                  uint32_t max_threads = 0);

// Sum of squares of data[0, n) (in double). Non-finite if any element is.
// InvalidArgument for a null pointer, n == 0 or an unsupported dtype.
absl::StatusOr<double> SumSquares(DType dtype, const void* data, uint64_t n, Executor& exec,
                                  uint32_t max_threads = 0);

// Fills the StateCount(hyper) state arrays: zeros, or
// initial_accumulator_value for Adagrad. InvalidArgument for invalid hyper,
// n == 0 or a missing array.
absl::Status InitState(const Hyper& hyper, float* state[2], uint64_t n);

// master[i] = param[i] widened to fp32 (exact). InvalidArgument for null
// pointers, n == 0 or an unsupported dtype.
absl::Status InitMaster(DType param_dtype, const void* param, float* master, uint64_t n,
                        Executor& exec, uint32_t max_threads = 0);

// Scalar reference implementation: the same contracts and validation as
// above, single-threaded, computing every element in double precision from
// the stored inputs and rounding once into the fp32/16-bit outputs. It
// documents the math and is what the tests compare the kernels against.
namespace reference {
absl::Status Step(const Hyper& hyper, const StepArgs& args, const ShardView& view);
absl::StatusOr<double> Accumulate(DType grad_dtype, const void* grad, float* accum, uint64_t n,
                                  bool assign, float scale);
absl::StatusOr<double> SumSquares(DType dtype, const void* data, uint64_t n);
}  // namespace reference

}  // namespace spill::optim

#endif  // SPILL_SERVER_OPTIM_OPTIMIZER_H_
