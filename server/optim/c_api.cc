#include "server/optim/c_api.h"

#include <memory>
#include <string>

#include "server/optim/optimizer.h"

namespace {

using spill::DType;
using spill::optim::Executor;

thread_local std::string last_error;
std::unique_ptr<Executor> executor = std::make_unique<Executor>(0);

int Fail(const absl::Status& s) {
  last_error = s.ToString();
  return -1;
}

}  // namespace

extern "C" {

int spill_optim_set_threads(int threads) {
  if (threads < 1) return Fail(absl::InvalidArgumentError("threads must be >= 1"));
  executor.reset();
  executor = std::make_unique<Executor>(static_cast<uint32_t>(threads - 1));
  return 0;
}

int spill_optim_adamw_step(int grad_dtype, const void* grad, float* master, float* exp_avg,
                           float* exp_avg_sq, int param_dtype, void* param, uint64_t n, float lr,
                           float beta1, float beta2, float eps, float weight_decay,
                           int adamw_mode, int bias_correction, uint64_t step, float grad_scale) {
  spill::optim::Hyper h;
  h.algo = adamw_mode ? spill::optim::Algo::kAdamW : spill::optim::Algo::kAdam;
  h.lr = lr;
  h.beta1 = beta1;
  h.beta2 = beta2;
  h.eps = eps;
  h.weight_decay = weight_decay;
  h.bias_correction = bias_correction != 0;
  spill::optim::ShardView v;
  v.grad_dtype = static_cast<DType>(grad_dtype);
  v.grad = grad;
  v.master = master;
  v.state[0] = exp_avg;
  v.state[1] = exp_avg_sq;
  v.param_dtype = param ? static_cast<DType>(param_dtype) : DType::kFloat32;
  v.param = param;
  v.n = n;
  const absl::Status s = spill::optim::Step(h, {step, grad_scale}, v, *executor);
  return s.ok() ? 0 : Fail(s);
}

int spill_optim_sum_squares(int dtype, const void* data, uint64_t n, double* out) {
  if (out == nullptr) return Fail(absl::InvalidArgumentError("out pointer is null"));
  auto r = spill::optim::SumSquares(static_cast<DType>(dtype), data, n, *executor);
  if (!r.ok()) return Fail(r.status());
  *out = *r;
  return 0;
}

const char* spill_optim_last_error(void) { return last_error.c_str(); }

const char* spill_optim_target(void) { return spill::optim::SimdTargetName(); }

}  // extern "C"
