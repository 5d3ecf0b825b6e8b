// SIMD kernels, compiled once per Highway target and dispatched at run time.
// Every kernel processes whole vectors; the last partial vector goes through
// the same vector code on a zero-padded copy, so an element's result does not
// depend on where a range starts or ends (chunking and streaming give the
// same bits as one call over the whole array).
#include "server/optim/kernels.h"

#include <cstring>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "server/optim/kernels.cc"
#ifndef HWY_DISABLED_TARGETS
// SSSE3 adds nothing over SSE4 for these kernels; one target less to compile.
#define HWY_DISABLED_TARGETS HWY_SSSE3
#endif
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace spill::optim::internal {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

constexpr int kF32 = static_cast<int>(DType::kFloat32);
constexpr int kBF16 = static_cast<int>(DType::kBFloat16);
constexpr int kF16 = static_cast<int>(DType::kFloat16);
constexpr int kNone = 0;
constexpr size_t kMaxFloats = HWY_MAX_BYTES / sizeof(float);

// fp16 bits (in u32 lanes) -> fp32, exact, Inf/NaN/subnormals included
// (the same algorithm as HalfToFloat in half.h).
template <class D, class VU>
HWY_INLINE hn::Vec<D> HalfBitsToFloat(D d, VU h) {
  const hn::RebindToUnsigned<D> du;
  const auto sign = hn::ShiftLeft<16>(hn::And(h, hn::Set(du, 0x8000u)));
  const auto o = hn::ShiftLeft<13>(hn::And(h, hn::Set(du, 0x7fffu)));
  const auto exp = hn::And(o, hn::Set(du, 0x0f800000u));
  const auto o1 = hn::Add(o, hn::Set(du, 112u << 23));
  const auto inf_nan = hn::Add(o1, hn::Set(du, 112u << 23));
  const auto sub = hn::BitCast(
      du, hn::Sub(hn::BitCast(d, hn::Add(o1, hn::Set(du, 1u << 23))),
                  hn::BitCast(d, hn::Set(du, 113u << 23))));
  auto r = hn::IfThenElse(hn::Eq(exp, hn::Set(du, 0x0f800000u)), inf_nan, o1);
  r = hn::IfThenElse(hn::Eq(exp, hn::Zero(du)), sub, r);
  return hn::BitCast(d, hn::Or(r, sign));
}

// fp32 -> fp16 bits (in u32 lanes), round to nearest even (FloatToHalf).
template <class D>
HWY_INLINE hn::Vec<hn::RebindToUnsigned<D>> FloatToHalfBits(D d, hn::Vec<D> f) {
  const hn::RebindToUnsigned<D> du;
  const hn::RebindToSigned<D> di;
  const auto bits = hn::BitCast(du, f);
  const auto sign = hn::And(bits, hn::Set(du, 0x80000000u));
  const auto u = hn::Xor(bits, sign);
  const auto ui = hn::BitCast(di, u);  // < 2^31: signed compares are exact
  const auto big = hn::IfThenElse(hn::RebindMask(du, hn::Gt(ui, hn::Set(di, 0x7f800000))),
                                  hn::Set(du, 0x7e00u), hn::Set(du, 0x7c00u));
  const auto magic = hn::Set(du, 126u << 23);
  const auto small = hn::Sub(
      hn::BitCast(du, hn::Add(hn::BitCast(d, u), hn::BitCast(d, magic))), magic);
  const auto odd = hn::And(hn::ShiftRight<13>(u), hn::Set(du, 1u));
  const auto normal = hn::ShiftRight<13>(
      hn::Add(hn::Add(u, hn::Set(du, static_cast<uint32_t>(15 - 127) << 23)),
              hn::Add(hn::Set(du, 0xfffu), odd)));
  auto r = hn::IfThenElse(hn::RebindMask(du, hn::Lt(ui, hn::Set(di, 113 << 23))), small, normal);
  r = hn::IfThenElse(hn::RebindMask(du, hn::Gt(ui, hn::Set(di, (143 << 23) - 1))), big, r);
  return hn::Or(r, hn::ShiftRight<16>(sign));
}

// fp32 -> bf16 bits (in u32 lanes), round to nearest even; NaN stays a
// quiet NaN (FloatToBF16).
template <class D>
HWY_INLINE hn::Vec<hn::RebindToUnsigned<D>> FloatToBF16Bits(D d, hn::Vec<D> f) {
  const hn::RebindToUnsigned<D> du;
  const auto u = hn::BitCast(du, f);
  const auto odd = hn::And(hn::ShiftRight<16>(u), hn::Set(du, 1u));
  const auto rounded = hn::ShiftRight<16>(hn::Add(u, hn::Add(hn::Set(du, 0x7fffu), odd)));
  const auto nan = hn::Or(hn::ShiftRight<16>(u), hn::Set(du, 0x40u));
  return hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(f)), nan, rounded);
}

template <int G, class D>
HWY_INLINE hn::Vec<D> LoadF(D d, const void* p, size_t i) {
  if constexpr (G == kF32) {
    return hn::LoadU(d, static_cast<const float*>(p) + i);
  } else {
    const hn::Rebind<uint16_t, D> d16;
    const hn::RebindToUnsigned<D> du;
    const auto h = hn::PromoteTo(du, hn::LoadU(d16, static_cast<const uint16_t*>(p) + i));
    if constexpr (G == kBF16) return hn::BitCast(d, hn::ShiftLeft<16>(h));
    return HalfBitsToFloat(d, h);
  }
}

template <int P, class D>
HWY_INLINE void StoreF(D d, hn::Vec<D> v, void* p, size_t i) {
  if constexpr (P == kF32) {
    hn::StoreU(v, d, static_cast<float*>(p) + i);
  } else if constexpr (P != kNone) {
    const hn::Rebind<uint16_t, D> d16;
    const hn::RebindToSigned<D> di;
    const auto bits = P == kBF16 ? FloatToBF16Bits(d, v) : FloatToHalfBits(d, v);
    hn::StoreU(hn::DemoteTo(d16, hn::BitCast(di, bits)), d16, static_cast<uint16_t*>(p) + i);
  }
}

// One vector of one optimizer step (the math of README.md, fp32, FMA).
template <Algo A, class D>
HWY_INLINE void Update(D d, const KernelParams& kp, hn::Vec<D> g, hn::Vec<D>& p, hn::Vec<D>& s0,
                       hn::Vec<D>& s1) {
  g = hn::Mul(g, hn::Set(d, kp.grad_scale));
  if constexpr (A == Algo::kAdam || A == Algo::kAdamW) {
    g = hn::MulAdd(hn::Set(d, kp.l2), p, g);
    p = hn::Mul(p, hn::Set(d, kp.decay));
    s0 = hn::MulAdd(hn::Set(d, kp.b1), s0, hn::Mul(hn::Set(d, kp.omb1), g));
    s1 = hn::MulAdd(hn::Set(d, kp.b2), s1, hn::Mul(hn::Mul(hn::Set(d, kp.omb2), g), g));
    const auto denom = hn::MulAdd(hn::Sqrt(s1), hn::Set(d, kp.inv_sqrt_bc2), hn::Set(d, kp.eps));
    p = hn::NegMulAdd(hn::Set(d, kp.step_size), hn::Div(s0, denom), p);
  } else if constexpr (A == Algo::kAdagrad) {
    g = hn::MulAdd(hn::Set(d, kp.l2), p, g);
    s0 = hn::MulAdd(g, g, s0);
    p = hn::NegMulAdd(hn::Set(d, kp.lr), hn::Div(g, hn::Add(hn::Sqrt(s0), hn::Set(d, kp.eps))), p);
  } else if constexpr (A == Algo::kLion) {
    p = hn::Mul(p, hn::Set(d, kp.decay));
    const auto c = hn::MulAdd(hn::Set(d, kp.b1), s0, hn::Mul(hn::Set(d, kp.omb1), g));
    const auto zero = hn::Zero(d);
    // sign(c): +1, -1, 0 for zero, NaN for NaN (c * 0).
    const auto sgn = hn::IfThenElse(hn::Gt(c, zero), hn::Set(d, 1.f),
                                    hn::IfThenElse(hn::Lt(c, zero), hn::Set(d, -1.f),
                                                   hn::Mul(c, zero)));
    p = hn::NegMulAdd(hn::Set(d, kp.lr), sgn, p);
    s0 = hn::MulAdd(hn::Set(d, kp.b2), s0, hn::Mul(hn::Set(d, kp.omb2), g));
  } else {  // kSgd
    g = hn::MulAdd(hn::Set(d, kp.l2), p, g);
    auto dir = g;
    if (kp.has_momentum) {
      s0 = kp.first_step ? g
                         : hn::MulAdd(hn::Set(d, kp.momentum), s0, hn::Mul(hn::Set(d, kp.omd), g));
      dir = kp.nesterov ? hn::MulAdd(hn::Set(d, kp.momentum), s0, g) : s0;
    }
    p = hn::NegMulAdd(hn::Set(d, kp.lr), dir, p);
  }
}

// One vector of RescaleRange: the Adam step that left p, s0 and s1 ran with
// gradient a = g * grad_scale; the step with b = g * rescale_to has
//   s0' = s0 - (1 - b1) (a - b),   s1' = max(0, s1 - (1 - b2) (a - b) (a + b)),
//   p'  = p + step_size (s0 / den(s1) - s0' / den(s1')),
// the first quotient computed with the same operations as Update, so it is
// the one the step subtracted. The rounding of the stored s0 and s1 is all
// that is not undone: relative to s1', about 2^-24 * s1 / s1'.
template <class D>
HWY_INLINE void Rescale(D d, const KernelParams& kp, hn::Vec<D> g, hn::Vec<D>& p, hn::Vec<D>& s0,
                        hn::Vec<D>& s1) {
  // a - b and a + b as g times the scales' difference and sum (rounded once
  // each, and exactly 0 for equal scales, whatever the compiler contracts).
  const auto diff = hn::Mul(g, hn::Set(d, kp.grad_scale - kp.rescale_to));
  const auto sum = hn::Mul(g, hn::Set(d, kp.grad_scale + kp.rescale_to));
  const auto inv_bc2 = hn::Set(d, kp.inv_sqrt_bc2), eps = hn::Set(d, kp.eps);
  const auto u_ran = hn::Div(s0, hn::MulAdd(hn::Sqrt(s1), inv_bc2, eps));
  s0 = hn::NegMulAdd(hn::Set(d, kp.omb1), diff, s0);
  s1 = hn::Max(hn::Zero(d), hn::NegMulAdd(hn::Mul(hn::Set(d, kp.omb2), diff), sum, s1));
  const auto u_new = hn::Div(s0, hn::MulAdd(hn::Sqrt(s1), inv_bc2, eps));
  p = hn::MulAdd(hn::Set(d, kp.step_size), hn::Sub(u_ran, u_new), p);
}

// kRescale: Rescale instead of Update (A is then kAdamW, unused).
template <Algo A, int G, int P, bool kRescale, class D>
HWY_INLINE void StepVector(D d, const KernelParams& kp, const void* grad, float* master,
                           float* s0, float* s1, void* param, size_t i) {
  constexpr bool kTwo = A == Algo::kAdam || A == Algo::kAdamW;
  constexpr bool kOne = !kTwo && A != Algo::kSgd;
  const bool has0 = kTwo || kOne || kp.has_momentum;
  auto p = hn::LoadU(d, master + i);
  auto v0 = has0 ? hn::LoadU(d, s0 + i) : hn::Zero(d);
  auto v1 = kTwo ? hn::LoadU(d, s1 + i) : hn::Zero(d);
  if constexpr (kRescale) {
    Rescale(d, kp, LoadF<G>(d, grad, i), p, v0, v1);
  } else {
    Update<A>(d, kp, LoadF<G>(d, grad, i), p, v0, v1);
  }
  hn::StoreU(p, d, master + i);
  if (has0) hn::StoreU(v0, d, s0 + i);
  if (kTwo) hn::StoreU(v1, d, s1 + i);
  StoreF<P>(d, p, param, i);
}

template <Algo A, int G, int P, bool kRescale = false>
void StepLoop(const KernelParams& kp, const void* grad, float* master, float* s0, float* s1,
              void* param, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) StepVector<A, G, P, kRescale>(d, kp, grad, master, s0, s1, param, i);
  const size_t rem = n - i;
  if (rem == 0) return;
  constexpr size_t gsz = G == kF32 ? 4 : 2, psz = P == kF32 ? 4 : 2;
  HWY_ALIGN float m[kMaxFloats] = {}, a[kMaxFloats] = {}, b[kMaxFloats] = {};
  HWY_ALIGN uint8_t gb[kMaxFloats * 4] = {}, pb[kMaxFloats * 4] = {};
  std::memcpy(gb, static_cast<const uint8_t*>(grad) + i * gsz, rem * gsz);
  std::memcpy(m, master + i, rem * 4);
  if (s0 != nullptr) std::memcpy(a, s0 + i, rem * 4);
  if (s1 != nullptr) std::memcpy(b, s1 + i, rem * 4);
  StepVector<A, G, P, kRescale>(d, kp, gb, m, a, b, pb, 0);
  std::memcpy(master + i, m, rem * 4);
  if (s0 != nullptr) std::memcpy(s0 + i, a, rem * 4);
  if (s1 != nullptr) std::memcpy(s1 + i, b, rem * 4);
  if (P != kNone) std::memcpy(static_cast<uint8_t*>(param) + i * psz, pb, rem * psz);
}

using StepFn = void (*)(const KernelParams&, const void*, float*, float*, float*, void*, size_t);

template <Algo A, int G, bool kRescale>
StepFn PickParam(int pd) {
  switch (pd) {
    case kF32: return &StepLoop<A, G, kF32, kRescale>;
    case kBF16: return &StepLoop<A, G, kBF16, kRescale>;
    case kF16: return &StepLoop<A, G, kF16, kRescale>;
    default: return &StepLoop<A, G, kNone, kRescale>;
  }
}

template <Algo A, bool kRescale = false>
StepFn PickGrad(int gd, int pd) {
  switch (gd) {
    case kF32: return PickParam<A, kF32, kRescale>(pd);
    case kBF16: return PickParam<A, kBF16, kRescale>(pd);
    default: return PickParam<A, kF16, kRescale>(pd);
  }
}

void StepRangeT(const KernelParams& kp, int gd, const void* grad, float* master, float* s0,
                float* s1, int pd, void* param, size_t n) {
  if (param == nullptr) pd = kNone;
  StepFn fn;
  switch (kp.algo) {
    case Algo::kAdamW: fn = PickGrad<Algo::kAdamW>(gd, pd); break;
    case Algo::kAdam: fn = PickGrad<Algo::kAdam>(gd, pd); break;
    case Algo::kAdagrad: fn = PickGrad<Algo::kAdagrad>(gd, pd); break;
    case Algo::kLion: fn = PickGrad<Algo::kLion>(gd, pd); break;
    default: fn = PickGrad<Algo::kSgd>(gd, pd); break;
  }
  fn(kp, grad, master, s0, s1, param, n);
}

void RescaleRangeT(const KernelParams& kp, int gd, const void* grad, float* master, float* s0,
                   float* s1, int pd, void* param, size_t n) {
  if (param == nullptr) pd = kNone;
  PickGrad<Algo::kAdamW, /*kRescale=*/true>(gd, pd)(kp, grad, master, s0, s1, param, n);
}

// Sum of squares in double over float vectors of the double vector's lane
// count; accum (if not null) receives accum * keep + x * scale first.
template <int G>
double SumLoop(const void* src, float* accum, bool assign, float scale, size_t n) {
  const hn::ScalableTag<double> dd;
  const hn::Rebind<float, decltype(dd)> df;
  const size_t N = hn::Lanes(df);
  auto acc0 = hn::Zero(dd), acc1 = hn::Zero(dd);
  const auto vscale = hn::Set(df, scale);
  auto one = [&](const void* s, float* a, size_t i, decltype(acc0)& acc) {
    auto x = LoadF<G>(df, s, i);
    if (a != nullptr) {
      x = hn::MulAdd(x, vscale, assign ? hn::Zero(df) : hn::LoadU(df, a + i));
      hn::StoreU(x, df, a + i);
    }
    const auto xd = hn::PromoteTo(dd, x);
    acc = hn::MulAdd(xd, xd, acc);
  };
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    one(src, accum, i, acc0);
    one(src, accum, i + N, acc1);
  }
  for (; i + N <= n; i += N) one(src, accum, i, acc0);
  if (const size_t rem = n - i; rem != 0) {
    constexpr size_t sz = G == kF32 ? 4 : 2;
    HWY_ALIGN uint8_t sb[kMaxFloats * 4] = {};
    HWY_ALIGN float ab[kMaxFloats] = {};
    std::memcpy(sb, static_cast<const uint8_t*>(src) + i * sz, rem * sz);
    if (accum != nullptr) std::memcpy(ab, accum + i, rem * 4);
    one(sb, accum != nullptr ? ab : nullptr, 0, acc1);
    if (accum != nullptr) std::memcpy(accum + i, ab, rem * 4);
  }
  return hn::GetLane(hn::SumOfLanes(dd, hn::Add(acc0, acc1)));
}

double AccumulateRangeT(int gd, const void* grad, float* accum, bool assign, float scale,
                        size_t n) {
  if (gd == kF32) return SumLoop<kF32>(grad, accum, assign, scale, n);
  if (gd == kBF16) return SumLoop<kBF16>(grad, accum, assign, scale, n);
  return SumLoop<kF16>(grad, accum, assign, scale, n);
}

double SumSquaresRangeT(int dtype, const void* data, size_t n) {
  return AccumulateRangeT(dtype, data, nullptr, false, 1.f, n);
}

template <int G>
void ConvertLoop(const void* src, float* dst, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(LoadF<G>(d, src, i), d, dst + i);
  if (const size_t rem = n - i; rem != 0) {
    constexpr size_t sz = G == kF32 ? 4 : 2;
    HWY_ALIGN uint8_t sb[kMaxFloats * 4] = {};
    HWY_ALIGN float out[kMaxFloats];
    std::memcpy(sb, static_cast<const uint8_t*>(src) + i * sz, rem * sz);
    hn::Store(LoadF<G>(d, sb, 0), d, out);
    std::memcpy(dst + i, out, rem * 4);
  }
}

void ToFloatRangeT(int dtype, const void* src, float* dst, size_t n) {
  if (dtype == kF32) return ConvertLoop<kF32>(src, dst, n);
  if (dtype == kBF16) return ConvertLoop<kBF16>(src, dst, n);
  ConvertLoop<kF16>(src, dst, n);
}

const char* TargetNameT() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace spill::optim::internal
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace spill::optim::internal {

HWY_EXPORT(StepRangeT);
HWY_EXPORT(RescaleRangeT);
HWY_EXPORT(AccumulateRangeT);
HWY_EXPORT(SumSquaresRangeT);
HWY_EXPORT(ToFloatRangeT);
HWY_EXPORT(TargetNameT);

void StepRange(const KernelParams& kp, int grad_dtype, const void* grad, float* master,
               float* s0, float* s1, int param_dtype, void* param, size_t n) {
  HWY_DYNAMIC_DISPATCH(StepRangeT)(kp, grad_dtype, grad, master, s0, s1, param_dtype, param, n);
}
void RescaleRange(const KernelParams& kp, int grad_dtype, const void* grad, float* master,
                  float* s0, float* s1, int param_dtype, void* param, size_t n) {
  HWY_DYNAMIC_DISPATCH(RescaleRangeT)(kp, grad_dtype, grad, master, s0, s1, param_dtype, param,
                                      n);
}
double AccumulateRange(int grad_dtype, const void* grad, float* accum, bool assign, float scale,
                       size_t n) {
  return HWY_DYNAMIC_DISPATCH(AccumulateRangeT)(grad_dtype, grad, accum, assign, scale, n);
}
double SumSquaresRange(int dtype, const void* data, size_t n) {
  return HWY_DYNAMIC_DISPATCH(SumSquaresRangeT)(dtype, data, n);
}
void ToFloatRange(int dtype, const void* src, float* dst, size_t n) {
  HWY_DYNAMIC_DISPATCH(ToFloatRangeT)(dtype, src, dst, n);
}
const char* TargetName() { return HWY_DYNAMIC_DISPATCH(TargetNameT)(); }

}  // namespace spill::optim::internal
#endif  // HWY_ONCE
