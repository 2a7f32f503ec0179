// CPU kernels of the sparse skeletal graph convolution (OpenMP, fused per tile of frames).
//
//   out[f, i, :] = W_self h[f, i, :] + W_neigh (1/|N(i)|) sum_{j in N(i)} h[f, j, :] + bias
//
// for every frame f of h (B, N, J, C_in) (any strides on B, N, J; channel stride 1). The
// neighbourhoods are a CSR (indptr (J+1,), indices (nnz,)) int64, self loops included.
//
// Fusion: the tensor is processed in tiles of whole frames (about 512 rows of J joints). Each
// OpenMP thread builds X = [h | A h] (rows, 2 C_in) for its tile in a thread-local fp32 (fp64
// for fp64 inputs) buffer that stays in L2, and multiplies it by W_cat^T = [W_self | W_neigh]^T
// with one single-threaded BLAS call that writes the output tile directly: h is read once, the
// output written once, nothing of size (B, N, J, *) is materialised besides the output.
// The backward rebuilds X per tile (cheaper than saving A h), accumulates dW_cat += dout^T X and
// dbias per thread, and forms dh = G_self + A^T G_neigh with G = dout W_cat through the
// transposed CSR (a gather: deterministic, no atomics).
//
// BLAS: MKL / OpenBLAS `sgemm_` / `dgemm_` as exported by libtorch_cpu (weak symbols, called
// from inside the OpenMP region, where MKL runs single-threaded); when they are absent the tile
// product falls back to at::mm_out on views of the same buffers (portable, a few us slower per
// tile; SALD_FAST_EXT_NO_BLAS=1 forces it). fp16 / bf16 inputs are converted to fp32 tiles:
// fp32 accumulation, one rounding at the end (the reference computes in fp32 and rounds once).
//
// Inputs are validated by the binding (csrc/binding.cpp) before these functions run.

// Per-operator ATen headers instead of <ATen/ATen.h>: the torch headers dominate the build time
// of the extension (about 5 s instead of 10 s per file on a 2-core CPU).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common.h"

#include <algorithm>
#include <cstdlib>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

extern "C" {
// Fortran BLAS (LP64), exported by libtorch_cpu when torch is built with MKL or OpenBLAS.
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace sald_fast_ext {
namespace cpu {

namespace {

// Rows of X per tile (whole frames): X is rows x 2 C_in accumulators, ~250 KiB at C_in = 64, so X
// and the output tile stay in L2. 128 rows measured slower on the 2-core dev CPU, 256..1024 alike.
#ifndef SALD_FAST_TILE_ROWS
#define SALD_FAST_TILE_ROWS 512
#endif
constexpr int64_t kTileRows = SALD_FAST_TILE_ROWS;

template <typename acc_t>
inline at::ScalarType acc_scalar_type() {
  return std::is_same<acc_t, double>::value ? at::kDouble : at::kFloat;
}

// Row-major C (m x n, ldc) = alpha * op(A) op(B) + beta * C, op(A) (m x k), op(B) (k x n).
// Row-major arrays are column-major transposes, so this is the BLAS call C^T = op(B)^T op(A)^T.
// Whether the exported Fortran BLAS is used (else at::mm_out); SALD_FAST_EXT_NO_BLAS=1 forces the
// fallback (tests cover both paths). Read once per op call, outside the parallel region.
template <typename acc_t>
bool blas_available() {
  const char* off = std::getenv("SALD_FAST_EXT_NO_BLAS");
  if (off != nullptr && off[0] != '\0' && off[0] != '0') return false;
  if constexpr (std::is_same<acc_t, float>::value) {
    return sgemm_ != nullptr;
  } else {
    return dgemm_ != nullptr;
  }
}

template <typename acc_t>
void gemm_rowmajor(bool blas, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const acc_t* a,
                   int64_t lda, const acc_t* b, int64_t ldb, acc_t beta, acc_t* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  const char ta = trans_b ? 'T' : 'N';
  const char tb = trans_a ? 'T' : 'N';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LDA = static_cast<int>(ldb), LDB = static_cast<int>(lda), LDC = static_cast<int>(ldc);
  const acc_t one = 1;
  if (k == 0) {
    for (int64_t r = 0; r < m; ++r)
      for (int64_t s = 0; s < n; ++s) c[r * ldc + s] = beta == acc_t(0) ? acc_t(0) : beta * c[r * ldc + s];
    return;
  }
  if (blas) {
    if constexpr (std::is_same<acc_t, float>::value) {
      sgemm_(&ta, &tb, &M, &N, &K, &one, b, &LDA, a, &LDB, &beta, c, &LDC);
    } else {
      dgemm_(&ta, &tb, &M, &N, &K, &one, b, &LDA, a, &LDB, &beta, c, &LDC);
    }
    return;
  }
  // Portable fallback: ATen matmul on views of the same buffers (single-threaded in this region).
  const auto opts = at::TensorOptions().dtype(acc_scalar_type<acc_t>());
  at::Tensor A = trans_a ? at::from_blob(const_cast<acc_t*>(a), {k, m}, {lda, 1}, opts).t()
                         : at::from_blob(const_cast<acc_t*>(a), {m, k}, {lda, 1}, opts);
  at::Tensor Bm = trans_b ? at::from_blob(const_cast<acc_t*>(b), {n, k}, {ldb, 1}, opts).t()
                          : at::from_blob(const_cast<acc_t*>(b), {k, n}, {ldb, 1}, opts);
  at::Tensor C = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  if (beta == acc_t(0)) {
    at::mm_out(C, A, Bm);
  } else {
    if (beta != acc_t(1)) C.mul_(beta);
    C.addmm_(A, Bm);
  }
}

// Strided view of h (B, N, J, C) with unit channel stride; frame f = b * N + n.
template <typename scalar_t>
struct Frames {
  const scalar_t* data;
  int64_t N, J, C, sb, sn, sj;
  inline const scalar_t* row(int64_t f, int64_t j) const {
    return data + (f / N) * sb + (f % N) * sn + j * sj;
  }
};

template <typename scalar_t>
Frames<scalar_t> frames_of(const at::Tensor& h) {
  return Frames<scalar_t>{h.data_ptr<scalar_t>(), h.size(1), h.size(2), h.size(3),
                          h.stride(0), h.stride(1), h.stride(2)};
}

// Transposed CSR of the row-normalised neighbourhood matrix A: row j lists (i, 1/|N(i)|) for
// every i with j in N(i), i ascending.
template <typename acc_t>
struct TransposedCsr {
  std::vector<int64_t> indptr, src;
  std::vector<acc_t> weight;
};

template <typename acc_t>
TransposedCsr<acc_t> transpose_csr(const int64_t* indptr, const int64_t* indices, int64_t J) {
  const int64_t nnz = indptr[J];
  TransposedCsr<acc_t> t;
  t.indptr.assign(J + 1, 0);
  t.src.resize(nnz);
  t.weight.resize(nnz);
  for (int64_t e = 0; e < nnz; ++e) t.indptr[indices[e] + 1] += 1;
  for (int64_t j = 0; j < J; ++j) t.indptr[j + 1] += t.indptr[j];
  std::vector<int64_t> cursor(t.indptr.begin(), t.indptr.end() - 1);
  for (int64_t i = 0; i < J; ++i) {
    const acc_t w = acc_t(1) / acc_t(indptr[i + 1] - indptr[i]);
    for (int64_t e = indptr[i]; e < indptr[i + 1]; ++e) {
      const int64_t pos = cursor[indices[e]]++;
      t.src[pos] = i;
      t.weight[pos] = w;
    }
  }
  return t;
}

template <typename acc_t, typename scalar_t>
inline void load_row(acc_t* __restrict dst, const scalar_t* __restrict src, int64_t C) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<acc_t>(src[c]);
}

template <typename acc_t, typename scalar_t>
inline void add_row(acc_t* __restrict dst, const scalar_t* __restrict src, int64_t C) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) dst[c] += static_cast<acc_t>(src[c]);
}

template <typename acc_t, typename scalar_t>
inline void add_scaled_row(acc_t* __restrict dst, const scalar_t* __restrict src, acc_t w, int64_t C) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) dst[c] += w * static_cast<acc_t>(src[c]);
}

template <typename acc_t>
inline void scale_row(acc_t* __restrict dst, acc_t w, int64_t C) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) dst[c] *= w;
}

// X[r] = [h_r | mean_{j in N(i)} h_j] for the rows of frames [f0, f1); X has ld 2C.
template <typename scalar_t, typename acc_t>
void build_concat_tile(const Frames<scalar_t>& h, const int64_t* indptr, const int64_t* indices,
                       int64_t f0, int64_t f1, acc_t* X) {
  const int64_t J = h.J, C = h.C, ld = 2 * C;
  for (int64_t f = f0; f < f1; ++f) {
    const scalar_t* base = h.row(f, 0);
    for (int64_t i = 0; i < J; ++i) {
      acc_t* x = X + ((f - f0) * J + i) * ld;
      load_row(x, base + i * h.sj, C);
      acc_t* agg = x + C;
      const int64_t e0 = indptr[i], e1 = indptr[i + 1];
      load_row(agg, base + indices[e0] * h.sj, C);
      for (int64_t e = e0 + 1; e < e1; ++e) add_row(agg, base + indices[e] * h.sj, C);
      scale_row(agg, acc_t(1) / acc_t(e1 - e0), C);
    }
  }
}

inline int num_threads_for(int64_t work_items) {
  const int64_t t = std::min<int64_t>(at::get_num_threads(), std::max<int64_t>(work_items, 1));
  return static_cast<int>(std::max<int64_t>(t, 1));
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

template <typename scalar_t>
void forward_impl(const at::Tensor& h, const int64_t* indptr, const int64_t* indices,
                  const at::Tensor& w_cat, const at::Tensor& bias, at::Tensor& out) {
  using acc_t = typename Acc<scalar_t>::type;
  const Frames<scalar_t> hv = frames_of<scalar_t>(h);
  const int64_t J = hv.J, C_in = hv.C, C_out = w_cat.size(0);
  const int64_t frames = h.size(0) * h.size(1);
  const int64_t tile_frames = std::max<int64_t>(1, kTileRows / J);
  const int64_t tiles = (frames + tile_frames - 1) / tile_frames;
  const acc_t* W = w_cat.data_ptr<acc_t>();  // (C_out, 2 C_in)
  const acc_t* b = bias.defined() ? bias.data_ptr<acc_t>() : nullptr;
  scalar_t* O = out.data_ptr<scalar_t>();
  constexpr bool direct = std::is_same<scalar_t, acc_t>::value;
  const bool blas = blas_available<acc_t>();

#pragma omp parallel num_threads(num_threads_for(tiles))
  {
    std::vector<acc_t> X(tile_frames * J * 2 * C_in);
    std::vector<acc_t> Y(direct ? 0 : tile_frames * J * C_out);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t f0 = t * tile_frames, f1 = std::min(frames, f0 + tile_frames);
      const int64_t rows = (f1 - f0) * J;
      build_concat_tile(hv, indptr, indices, f0, f1, X.data());
      acc_t* Yt;
      if constexpr (direct) {
        Yt = reinterpret_cast<acc_t*>(O) + f0 * J * C_out;
      } else {
        Yt = Y.data();
      }
      if (b != nullptr) {
        for (int64_t r = 0; r < rows; ++r) std::copy(b, b + C_out, Yt + r * C_out);
      }
      gemm_rowmajor<acc_t>(blas, false, true, rows, C_out, 2 * C_in, X.data(), 2 * C_in, W, 2 * C_in,
                           b != nullptr ? acc_t(1) : acc_t(0), Yt, C_out);
      if constexpr (!direct) {
        scalar_t* o = O + f0 * J * C_out;
#pragma omp simd
        for (int64_t q = 0; q < rows * C_out; ++q) o[q] = static_cast<scalar_t>(Yt[q]);
      }
    }
  }
}

template <typename scalar_t>
void backward_impl(const at::Tensor& grad_out, const at::Tensor& h, const int64_t* indptr,
                   const int64_t* indices, const at::Tensor& w_cat, bool has_bias, bool compute_dh,
                   bool compute_dw, at::Tensor& dh, at::Tensor& dw_cat, at::Tensor& dbias) {
  using acc_t = typename Acc<scalar_t>::type;
  const Frames<scalar_t> hv = frames_of<scalar_t>(h);
  const int64_t J = hv.J, C_in = hv.C, C_out = w_cat.size(0), K2 = 2 * C_in;
  const int64_t frames = h.size(0) * h.size(1);
  const int64_t tile_frames = std::max<int64_t>(1, kTileRows / J);
  const int64_t tiles = (frames + tile_frames - 1) / tile_frames;
  const acc_t* W = w_cat.data_ptr<acc_t>();
  const scalar_t* D = grad_out.data_ptr<scalar_t>();  // contiguous (frames * J, C_out)
  scalar_t* DH = compute_dh ? dh.data_ptr<scalar_t>() : nullptr;
  constexpr bool direct = std::is_same<scalar_t, acc_t>::value;
  const TransposedCsr<acc_t> tcsr = transpose_csr<acc_t>(indptr, indices, J);
  const int nthreads = num_threads_for(tiles);
  const bool blas = blas_available<acc_t>();
  // Per-thread partial sums of dW_cat (C_out, 2 C_in) and dbias (C_out), reduced at the end.
  std::vector<acc_t> dw_part(compute_dw ? nthreads * C_out * K2 : 0, acc_t(0));
  std::vector<acc_t> db_part(has_bias ? nthreads * C_out : 0, acc_t(0));

#pragma omp parallel num_threads(nthreads)
  {
    const int tid = thread_id();
    const int64_t tile_rows = tile_frames * J;
    std::vector<acc_t> X(compute_dw ? tile_rows * K2 : 0);
    std::vector<acc_t> G(compute_dh ? tile_rows * K2 : 0);
    std::vector<acc_t> Dbuf(direct ? 0 : tile_rows * C_out);
    std::vector<acc_t> acc_row(compute_dh ? C_in : 0);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t f0 = t * tile_frames, f1 = std::min(frames, f0 + tile_frames);
      const int64_t rows = (f1 - f0) * J;
      const acc_t* Dt;
      if constexpr (direct) {
        Dt = reinterpret_cast<const acc_t*>(D) + f0 * J * C_out;
      } else {
        const scalar_t* d = D + f0 * J * C_out;
#pragma omp simd
        for (int64_t q = 0; q < rows * C_out; ++q) Dbuf[q] = static_cast<acc_t>(d[q]);
        Dt = Dbuf.data();
      }
      if (has_bias) {
        acc_t* db = db_part.data() + tid * C_out;
        for (int64_t r = 0; r < rows; ++r) add_row(db, Dt + r * C_out, C_out);
      }
      if (compute_dw) {
        build_concat_tile(hv, indptr, indices, f0, f1, X.data());
        gemm_rowmajor<acc_t>(blas, true, false, C_out, K2, rows, Dt, C_out, X.data(), K2, acc_t(1),
                             dw_part.data() + tid * C_out * K2, K2);
      }
      if (compute_dh) {
        gemm_rowmajor<acc_t>(blas, false, false, rows, K2, C_out, Dt, C_out, W, K2, acc_t(0), G.data(), K2);
        for (int64_t f = f0; f < f1; ++f) {
          const acc_t* Gf = G.data() + (f - f0) * J * K2;
          scalar_t* dhf = DH + f * J * C_in;
          for (int64_t j = 0; j < J; ++j) {
            acc_t* a = acc_row.data();
            std::copy(Gf + j * K2, Gf + j * K2 + C_in, a);
            for (int64_t e = tcsr.indptr[j]; e < tcsr.indptr[j + 1]; ++e)
              add_scaled_row(a, Gf + tcsr.src[e] * K2 + C_in, tcsr.weight[e], C_in);
            scalar_t* o = dhf + j * C_in;
#pragma omp simd
            for (int64_t c = 0; c < C_in; ++c) o[c] = static_cast<scalar_t>(a[c]);
          }
        }
      }
    }
  }
  if (compute_dw) {
    acc_t* out = dw_cat.data_ptr<acc_t>();
    std::copy(dw_part.begin(), dw_part.begin() + C_out * K2, out);
    for (int p = 1; p < nthreads; ++p) add_row(out, dw_part.data() + p * C_out * K2, C_out * K2);
  }
  if (has_bias) {
    acc_t* out = dbias.data_ptr<acc_t>();
    std::copy(db_part.begin(), db_part.begin() + C_out, out);
    for (int p = 1; p < nthreads; ++p) add_row(out, db_part.data() + p * C_out, C_out);
  }
}

template <typename scalar_t>
void aggregate_impl(const at::Tensor& x, const int64_t* indptr, const int64_t* indices,
                    bool transpose, at::Tensor& out) {
  using acc_t = typename Acc<scalar_t>::type;
  const Frames<scalar_t> xv = frames_of<scalar_t>(x);
  const int64_t J = xv.J, C = xv.C, frames = x.size(0) * x.size(1);
  scalar_t* O = out.data_ptr<scalar_t>();
  const TransposedCsr<acc_t> tcsr =
      transpose ? transpose_csr<acc_t>(indptr, indices, J) : TransposedCsr<acc_t>{};
#pragma omp parallel num_threads(num_threads_for(frames / 16 + 1))
  {
    std::vector<acc_t> a(C);
#pragma omp for schedule(static)
    for (int64_t f = 0; f < frames; ++f) {
      const scalar_t* base = xv.row(f, 0);
      for (int64_t i = 0; i < J; ++i) {
        std::fill(a.begin(), a.end(), acc_t(0));
        if (transpose) {
          for (int64_t e = tcsr.indptr[i]; e < tcsr.indptr[i + 1]; ++e)
            add_scaled_row(a.data(), base + tcsr.src[e] * xv.sj, tcsr.weight[e], C);
        } else {
          for (int64_t e = indptr[i]; e < indptr[i + 1]; ++e) add_row(a.data(), base + indices[e] * xv.sj, C);
          scale_row(a.data(), acc_t(1) / acc_t(indptr[i + 1] - indptr[i]), C);
        }
        scalar_t* o = O + (f * J + i) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = static_cast<scalar_t>(a[c]);
      }
    }
  }
}

}  // namespace

// h (B, N, J, C_in) with h.stride(3) == 1; indptr/indices int64 contiguous CPU (validated);
// w_cat (C_out, 2 C_in) contiguous in the accumulation dtype; bias (C_out,) same or undefined.
// Returns out (B, N, J, C_out) contiguous in h's dtype.
at::Tensor graph_conv_forward(const at::Tensor& h, const at::Tensor& indptr, const at::Tensor& indices,
                              const at::Tensor& w_cat, const at::Tensor& bias) {
  at::Tensor out = at::empty({h.size(0), h.size(1), h.size(2), w_cat.size(0)}, h.options());
  if (out.numel() == 0) return out;
  if (h.size(3) == 0) {  // no input channels: out = bias
    return bias.defined() ? out.copy_(bias.to(h.scalar_type()).view({1, 1, 1, -1}).expand_as(out)) : out.zero_();
  }
  dispatch_float(h.scalar_type(), "graph_conv_forward", [&](auto tag) {
    using scalar_t = decltype(tag);
    forward_impl<scalar_t>(h, indptr.data_ptr<int64_t>(), indices.data_ptr<int64_t>(), w_cat, bias, out);
  });
  return out;
}

// grad_out (B, N, J, C_out) contiguous in h's dtype. Returns dh (B, N, J, C_in) (or (0,) when
// !compute_dh), dw_cat (C_out, 2 C_in) in the accumulation dtype (or (0,)), dbias (C_out,) in
// the accumulation dtype (or (0,) when !has_bias).
std::tuple<at::Tensor, at::Tensor, at::Tensor> graph_conv_backward(
    const at::Tensor& grad_out, const at::Tensor& h, const at::Tensor& indptr, const at::Tensor& indices,
    const at::Tensor& w_cat, bool has_bias, bool compute_dh, bool compute_dw) {
  const auto acc_opts = w_cat.options();
  at::Tensor dh = compute_dh ? at::empty({h.size(0), h.size(1), h.size(2), h.size(3)}, h.options())
                             : at::empty({0}, h.options());
  at::Tensor dw_cat = compute_dw ? at::zeros({w_cat.size(0), w_cat.size(1)}, acc_opts) : at::empty({0}, acc_opts);
  at::Tensor dbias = has_bias ? at::zeros({w_cat.size(0)}, acc_opts) : at::empty({0}, acc_opts);
  if (grad_out.numel() == 0) {
    if (compute_dh) dh.zero_();
    return {dh, dw_cat, dbias};
  }
  dispatch_float(h.scalar_type(), "graph_conv_backward", [&](auto tag) {
    using scalar_t = decltype(tag);
    backward_impl<scalar_t>(grad_out, h, indptr.data_ptr<int64_t>(), indices.data_ptr<int64_t>(), w_cat,
                            has_bias, compute_dh, compute_dw, dh, dw_cat, dbias);
  });
  return {dh, dw_cat, dbias};
}

// x (B, N, J, C) with x.stride(3) == 1. Returns A x (or A^T x) per frame, contiguous.
at::Tensor csr_mean_aggregate(const at::Tensor& x, const at::Tensor& indptr, const at::Tensor& indices,
                              bool transpose) {
  at::Tensor out = at::empty({x.size(0), x.size(1), x.size(2), x.size(3)}, x.options());
  if (out.numel() == 0) return out;
  dispatch_float(x.scalar_type(), "csr_mean_aggregate", [&](auto tag) {
    using scalar_t = decltype(tag);
    aggregate_impl<scalar_t>(x, indptr.data_ptr<int64_t>(), indices.data_ptr<int64_t>(), transpose, out);
  });
  return out;
}

}  // namespace cpu
}  // namespace sald_fast_ext
