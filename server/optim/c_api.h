/* C ABI over the optimizer kernels (libspill_optim_c.so), for calling them
 * from other languages (e.g. Python ctypes on tensors' data pointers) in the
 * caller's process. Dtype codes are spill DType values: 1 float32,
 * 2 float16, 3 bfloat16. Functions return 0 on success, -1 on failure;
 * spill_optim_last_error() then describes the failure (per thread).
 * Not thread-safe: spill_optim_set_threads must not run concurrently with a
 * step. */
#ifndef SPILL_SERVER_OPTIM_C_API_H_
#define SPILL_SERVER_OPTIM_C_API_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Total threads a step uses (the caller plus threads - 1 pool workers);
 * threads >= 1. The default is 1. */
int spill_optim_set_threads(int threads);

/* One fused Adam/AdamW step (adamw_mode 1: decoupled weight decay, 0: L2)
 * over n elements; param may be NULL (param_dtype then ignored). */
int spill_optim_adamw_step(int grad_dtype, const void* grad, float* master, float* exp_avg,
                           float* exp_avg_sq, int param_dtype, void* param, uint64_t n, float lr,
                           float beta1, float beta2, float eps, float weight_decay,
                           int adamw_mode, int bias_correction, uint64_t step, float grad_scale);

/* Sum of squares of n elements into *out. */
int spill_optim_sum_squares(int dtype, const void* data, uint64_t n, double* out);

const char* spill_optim_last_error(void);
/* SIMD target the kernels dispatch to, e.g. "AVX2", "AVX3". */
const char* spill_optim_target(void);

#ifdef __cplusplus
}
#endif

#endif /* SPILL_SERVER_OPTIM_C_API_H_ */
