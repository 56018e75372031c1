// What every CUDA kernel file shares: the compute precision of a storage type,
// the conversions to and from it, and explicitly rounded arithmetic. nvcc
// contracts a * b + c into an FMA otherwise, which rounds differently from the
// references; __fmul_rn & co. forbid it. Host-device, so that tests can run the
// element functions on the host against the references (host builds contract
// nothing here: -ffp-contract=off).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#define DGM_RN_HD __host__ __device__ __forceinline__

namespace dgm_fast {
namespace rounded {

// Compute precision: double stays, the others work in float (as the references).
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

DGM_RN_HD float widen(float v) { return v; }
DGM_RN_HD double widen(double v) { return v; }
DGM_RN_HD float widen(__half v) { return __half2float(v); }
DGM_RN_HD float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

DGM_RN_HD void narrow(float v, float& d) { d = v; }
DGM_RN_HD void narrow(double v, double& d) { d = v; }
DGM_RN_HD void narrow(float v, __half& d) { d = __float2half_rn(v); }
DGM_RN_HD void narrow(float v, __nv_bfloat16& d) { d = __float2bfloat16_rn(v); }

#if defined(__CUDA_ARCH__)
DGM_RN_HD float mul_rn(float a, float b) { return __fmul_rn(a, b); }
DGM_RN_HD double mul_rn(double a, double b) { return __dmul_rn(a, b); }
DGM_RN_HD float add_rn(float a, float b) { return __fadd_rn(a, b); }
DGM_RN_HD double add_rn(double a, double b) { return __dadd_rn(a, b); }
DGM_RN_HD float sub_rn(float a, float b) { return __fsub_rn(a, b); }
DGM_RN_HD double sub_rn(double a, double b) { return __dsub_rn(a, b); }
DGM_RN_HD float div_rn(float a, float b) { return __fdiv_rn(a, b); }
DGM_RN_HD double div_rn(double a, double b) { return __ddiv_rn(a, b); }
#else
template <typename A>
DGM_RN_HD A mul_rn(A a, A b) { return a * b; }
template <typename A>
DGM_RN_HD A add_rn(A a, A b) { return a + b; }
template <typename A>
DGM_RN_HD A sub_rn(A a, A b) { return a - b; }
template <typename A>
DGM_RN_HD A div_rn(A a, A b) { return a / b; }
#endif

}  // namespace rounded
}  // namespace dgm_fast
