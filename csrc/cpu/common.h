// Helpers shared by the CPU kernels of the extension: the accumulation type of a scalar type
// and a dtype switch over the float types the ops accept.
#pragma once

#include <ATen/core/Tensor.h>

namespace sald_fast_ext {
namespace cpu {

// fp32 accumulation for fp32/fp16/bf16, fp64 for fp64.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

// Calls f(scalar_t{}) for t in {float, double, Half, BFloat16}; a type error naming `name` otherwise.
template <typename F>
void dispatch_float(at::ScalarType t, const char* name, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default: TORCH_CHECK_TYPE(false, name, ": unsupported dtype ", t);
  }
}

}  // namespace cpu
}  // namespace sald_fast_ext
