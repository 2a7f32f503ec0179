// CPU kernels of the fused FiLM + residual + LayerNorm (OpenMP over rows, one pass per row).
//
//   z'[b, n, j, :] = z[b, n, j, :] + gamma[b, :] * h[b, n, j, :] + beta[b, :]
//   y[b, n, j, :]  = (z' - mean(z')) * rstd * weight + bias,   rstd = 1 / sqrt(var(z') + eps)
//
// for z, h (B, N, J, D) (any strides on B, N, J; channel stride 1), gamma, beta (B, D), weight,
// bias (D,) or absent (ones / zeros). Every row of D values is handled by one thread, start to
// end: the forward reads z and h once and writes z' and y once; z' is rounded to the input dtype
// first and the LayerNorm normalises the rounded value (as the reference, which casts z' before
// its LN). Statistics in fp32 (fp64 for fp64 inputs), two passes over the row kept in a D-element
// buffer (no cancellation from E[x^2] - E[x]^2).
//
// The backward recomputes mean / rstd from the stored z' (a row of D values it reads anyway:
// cheaper than saving and reloading them) and gives, with g = grad_y * weight and
// xhat = (z' - mean) * rstd,
//
//   dz' = grad_z + rstd * (g - mean(g) - xhat * mean(g * xhat))   (per row)
//   dz = dz',  dh = gamma[b] * dz',  dgamma[b] = sum_rows(b) dz' * h,  dbeta[b] = sum_rows(b) dz'
//   dweight = sum_rows grad_y * xhat,  dbias = sum_rows grad_y
//
// The rounding of z' to the input dtype counts as the identity (as in the reference's autograd).
// An absent grad_z / grad_y (undefined tensor) is zero: a row view with zero strides on a zero row.
//
// Work items are chunks of at most kChunkRows rows of one sample. Each item writes its partial
// sums of dgamma / dbeta / dweight / dbias to its own slot and the slots are summed in a fixed
// order afterwards: the result does not depend on the number of threads and needs no atomics.
// The row loops (csrc/cpu/film_layernorm_kernels.h) are small functions with __restrict__ pointer
// parameters, so they vectorise without run-time overlap checks; the row sums use two 16-byte
// vector accumulators and a shuffle at the end (an auto-vectorised reduction spills its vector to
// the stack and adds the lanes one by one, which cost more than the rest of a D = 64 row). The
// per-chunk functions are compiled twice on x86-64 (AVX2 and baseline, picked at load time by the
// dynamic linker); neither contracts a * b + c into an FMA and the reductions have the same lane
// order in both, so both give the same bits (and z' the same bits as the reference's fp32
// z + gamma * h + beta). fp16 / bf16 are converted to fp32 on load and rounded once on store.
//
// Measured on the 2-core dev CPU (1 thread, (32, 28, 7, 64), the tiny denoiser's shape): forward
// ~0.3 ms, backward ~0.65 ms, against ~0.6 ms and ~1.5-2 ms for the reference's eager ops.
//
// Inputs are validated by the binding (csrc/binding.cpp) before these functions run.

// Per-operator ATen headers instead of <ATen/ATen.h>: the torch headers dominate the build time
// of the extension (about 5 s instead of 10 s per file on a 2-core CPU).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>

#include "film_layernorm_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace sald_fast_ext {
namespace cpu {

namespace {

using namespace film;

// Rows per work item: 128 rows of D = 64 .. 256 are 32 .. 128 KiB per input, a few items per sample.
constexpr int64_t kChunkRows = 128;
// Below this many elements a single thread does the whole op (an OpenMP team costs a few us).
constexpr int64_t kSerialElements = 1 << 15;
template <typename T>
RowView<T> rows_of(const at::Tensor& x) {
  return RowView<T>{static_cast<T*>(x.data_ptr()), x.stride(0), x.stride(1), x.stride(2)};
}

inline int threads_for(int64_t items, int64_t elements) {
  if (elements < kSerialElements) return 1;
  const int64_t t = std::min<int64_t>(at::get_num_threads(), std::max<int64_t>(items, 1));
  return static_cast<int>(std::max<int64_t>(t, 1));
}

// weight (D,) in the accumulation dtype, or `fill` (ones / zeros) when undefined.
template <typename acc_t>
std::vector<acc_t> affine_or(const at::Tensor& t, int64_t D, acc_t fill) {
  if (!t.defined()) return std::vector<acc_t>(D, fill);
  const acc_t* p = t.data_ptr<acc_t>();
  return std::vector<acc_t>(p, p + D);
}

template <typename scalar_t>
void forward_impl(const at::Tensor& z, const at::Tensor& h, const at::Tensor& gamma, const at::Tensor& beta,
                  const at::Tensor& weight, const at::Tensor& bias, double eps, at::Tensor& z_new, at::Tensor& y) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t B = z.size(0), J = z.size(2), R = z.size(1) * J, D = z.size(3);
  const std::vector<acc_t> w = affine_or<acc_t>(weight, D, acc_t(1)), bi = affine_or<acc_t>(bias, D, acc_t(0));
  ForwardArgs<scalar_t> a{rows_of<const scalar_t>(z), rows_of<const scalar_t>(h), gamma.data_ptr<acc_t>(),
                          beta.data_ptr<acc_t>(), w.data(), bi.data(), z_new.data_ptr<scalar_t>(),
                          y.data_ptr<scalar_t>(), J, R, D, static_cast<acc_t>(eps)};
  const int64_t chunks = (R + kChunkRows - 1) / kChunkRows, items = B * chunks;
#pragma omp parallel num_threads(threads_for(items, B * R * D))
  {
    std::vector<acc_t> x(D);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t b = it / chunks, r0 = (it % chunks) * kChunkRows;
      forward_chunk<scalar_t>(a, b, r0, std::min(R, r0 + kChunkRows), x.data());
    }
  }
}

template <typename scalar_t>
void backward_impl(const at::Tensor& grad_z, const at::Tensor& grad_y, const at::Tensor& z_new, const at::Tensor& h,
                   const at::Tensor& gamma, const at::Tensor& weight, double eps, bool compute_dfilm,
                   at::Tensor& dz, at::Tensor& dh, at::Tensor& dgamma, at::Tensor& dbeta, at::Tensor& dweight,
                   at::Tensor& dbias) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t B = z_new.size(0), J = z_new.size(2), R = z_new.size(1) * J, D = z_new.size(3);
  const std::vector<acc_t> w = affine_or<acc_t>(weight, D, acc_t(1));
  const std::vector<scalar_t> zero_row(D, static_cast<scalar_t>(0));
  const RowView<const scalar_t> zeros{zero_row.data(), 0, 0, 0};
  BackwardArgs<scalar_t> a{grad_z.defined() ? rows_of<const scalar_t>(grad_z) : zeros,
                           grad_y.defined() ? rows_of<const scalar_t>(grad_y) : zeros,
                           rows_of<const scalar_t>(z_new),
                           compute_dfilm ? rows_of<const scalar_t>(h) : zeros,
                           gamma.data_ptr<acc_t>(),
                           w.data(),
                           dz.numel() > 0 ? dz.data_ptr<scalar_t>() : nullptr,
                           dh.numel() > 0 ? dh.data_ptr<scalar_t>() : nullptr,
                           J,
                           R,
                           D,
                           static_cast<acc_t>(eps)};
  const int64_t chunks = (R + kChunkRows - 1) / kChunkRows, items = B * chunks;
  // Per work item partial sums [items, D] of dgamma, dbeta, dweight, dbias.
  std::vector<acc_t> part(4 * items * D, acc_t(0));
  acc_t* p_gamma = part.data();
  acc_t* p_beta = p_gamma + items * D;
  acc_t* p_weight = p_beta + items * D;
  acc_t* p_bias = p_weight + items * D;
#pragma omp parallel num_threads(threads_for(items, B * R * D))
  {
    std::vector<acc_t> buf(2 * D);
    std::vector<scalar_t> scratch(2 * D);  // dz / dh rows that are not wanted
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t b = it / chunks, r0 = (it % chunks) * kChunkRows;
      backward_chunk<scalar_t>(a, b, r0, std::min(R, r0 + kChunkRows), buf.data(), scratch.data(), p_gamma + it * D,
                               p_beta + it * D, p_weight + it * D, p_bias + it * D);
    }
  }
  // Fixed-order reductions of the partial sums (outputs are zero-initialised).
  auto add_rows = [D](acc_t* out, const acc_t* rows, int64_t count) {
    for (int64_t i = 0; i < count; ++i)
      for (int64_t d = 0; d < D; ++d) out[d] += rows[i * D + d];
  };
  if (compute_dfilm) {
    for (int64_t b = 0; b < B; ++b) {
      add_rows(dgamma.data_ptr<acc_t>() + b * D, p_gamma + b * chunks * D, chunks);
      add_rows(dbeta.data_ptr<acc_t>() + b * D, p_beta + b * chunks * D, chunks);
    }
  }
  if (dweight.numel() > 0) add_rows(dweight.data_ptr<acc_t>(), p_weight, items);
  if (dbias.numel() > 0) add_rows(dbias.data_ptr<acc_t>(), p_bias, items);
}

}  // namespace

// z, h (B, N, J, D) in one dtype, channel stride 1; gamma, beta (B, D) contiguous in the
// accumulation dtype (fp64 for fp64 inputs, else fp32); weight, bias (D,) contiguous in the
// accumulation dtype or undefined. Returns (z', y), both (B, N, J, D) contiguous in z's dtype.
std::tuple<at::Tensor, at::Tensor> film_layernorm_forward(const at::Tensor& z, const at::Tensor& h,
                                                          const at::Tensor& gamma, const at::Tensor& beta,
                                                          const at::Tensor& weight, const at::Tensor& bias,
                                                          double eps) {
  at::Tensor z_new = at::empty({z.size(0), z.size(1), z.size(2), z.size(3)}, z.options());
  at::Tensor y = at::empty({z.size(0), z.size(1), z.size(2), z.size(3)}, z.options());
  if (z.numel() == 0) return {z_new, y};
  dispatch_float(z.scalar_type(), "film_layernorm_forward", [&](auto tag) {
    using scalar_t = decltype(tag);
    forward_impl<scalar_t>(z, h, gamma, beta, weight, bias, eps, z_new, y);
  });
  return {z_new, y};
}

// grad_z, grad_y: (B, N, J, D) in z_new's dtype with channel stride 1, or undefined (zero);
// z_new, h (B, N, J, D) channel stride 1; gamma (B, D), weight (D,) or undefined: contiguous in
// the accumulation dtype. Returns dz, dh (B, N, J, D) contiguous in z_new's dtype (or (0,) when
// not wanted), dgamma, dbeta (B, D), dweight, dbias (D,) in the accumulation dtype (or (0,)).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> film_layernorm_backward(
    const at::Tensor& grad_z, const at::Tensor& grad_y, const at::Tensor& z_new, const at::Tensor& h,
    const at::Tensor& gamma, const at::Tensor& weight, double eps, bool compute_dz, bool compute_dh,
    bool compute_dfilm, bool compute_dweight, bool compute_dbias) {
  const auto opts = z_new.options();
  const auto acc_opts = gamma.options();
  const int64_t B = z_new.size(0), D = z_new.size(3);
  const auto shape = z_new.sizes();
  at::Tensor dz = compute_dz ? at::empty(shape, opts) : at::empty({0}, opts);
  at::Tensor dh = compute_dh ? at::empty(shape, opts) : at::empty({0}, opts);
  at::Tensor dgamma = compute_dfilm ? at::zeros({B, D}, acc_opts) : at::empty({0}, acc_opts);
  at::Tensor dbeta = compute_dfilm ? at::zeros({B, D}, acc_opts) : at::empty({0}, acc_opts);
  at::Tensor dweight = compute_dweight ? at::zeros({D}, acc_opts) : at::empty({0}, acc_opts);
  at::Tensor dbias = compute_dbias ? at::zeros({D}, acc_opts) : at::empty({0}, acc_opts);
  if (z_new.numel() == 0) return {dz, dh, dgamma, dbeta, dweight, dbias};
  dispatch_float(z_new.scalar_type(), "film_layernorm_backward", [&](auto tag) {
    using scalar_t = decltype(tag);
    backward_impl<scalar_t>(grad_z, grad_y, z_new, h, gamma, weight, eps, compute_dfilm, dz, dh, dgamma, dbeta,
                            dweight, dbias);
  });
  return {dz, dh, dgamma, dbeta, dweight, dbias};
}

}  // namespace cpu
}  // namespace sald_fast_ext
