// Row kernels of the fused FiLM + residual + LayerNorm on the CPU (see film_layernorm.cpp for the
// math and the parallel driver). Free of ATen: raw pointers and strides only, so the loops can be
// benchmarked on their own.
#ifndef SALD_FAST_FILM_LAYERNORM_KERNELS_H_
#define SALD_FAST_FILM_LAYERNORM_KERNELS_H_

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace sald_fast_ext {
namespace cpu {
namespace film {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(SALD_FAST_NO_TARGET_CLONES)
#define SALD_FAST_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SALD_FAST_CLONES
#endif

// Rows of a (B, N, J, D) tensor with channel stride 1; zero strides repeat one row.
template <typename T>
struct RowView {
  T* data = nullptr;
  int64_t sb = 0, sn = 0, sj = 0;
  T* at(int64_t b, int64_t n, int64_t j) const { return data + b * sb + n * sn + j * sj; }
};

// Walks rows r0, r0 + 1, ... of one sample as (n, j) without an integer division per row.
struct RowCursor {
  int64_t n, j, J;
  RowCursor(int64_t r, int64_t J_) : n(r / J_), j(r % J_), J(J_) {}
  void next() {
    if (++j == J) {
      j = 0;
      ++n;
    }
  }
};

template <typename acc_t, typename T>
inline acc_t up(T v) {
  return static_cast<acc_t>(v);
}

// ------------------------------------------------------------------------------ row helpers
// Elementwise loops live in small functions whose pointer parameters are __restrict__ (what the
// compilers honour, unlike restrict locals), so they vectorise without run-time overlap checks.
// GCC / Clang only (vector extensions, target_clones), like the rest of the extension's build.

#if defined(__GNUC__) || defined(__clang__)
#define SALD_FAST_RESTRICT __restrict__
#else
#define SALD_FAST_RESTRICT
#endif

// 16-byte vectors (4 floats / 2 doubles; SSE2 and NEON have them, AVX2 code uses their VEX form)
// for the row sums: two accumulators, summed across lanes with register shuffles at the end.
// (Auto-vectorised reductions spill the vector to the stack and add its lanes one by one.)
template <typename acc_t>
struct Vec {
  static constexpr int kWidth = 16 / sizeof(acc_t);
  typedef acc_t V __attribute__((vector_size(16)));
  static inline V load(const acc_t* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static inline acc_t hsum(V v) {
    if constexpr (kWidth == 4) {
      return (v[0] + v[2]) + (v[1] + v[3]);
    } else {
      return v[0] + v[1];
    }
  }
};

// sum_d x[d]
template <typename acc_t>
inline acc_t row_sum(const acc_t* SALD_FAST_RESTRICT x, int64_t D) {
  using L = Vec<acc_t>;
  constexpr int W = L::kWidth;
  typename L::V a0 = {}, a1 = {};
  int64_t d = 0;
  for (; d + 2 * W <= D; d += 2 * W) {
    a0 += L::load(x + d);
    a1 += L::load(x + d + W);
  }
  acc_t tail = 0;
  for (; d < D; ++d) tail += x[d];
  return L::hsum(a0 + a1) + tail;
}

// sum_d (x[d] - c)^2
template <typename acc_t>
inline acc_t row_sumsq(const acc_t* SALD_FAST_RESTRICT x, acc_t c, int64_t D) {
  using L = Vec<acc_t>;
  constexpr int W = L::kWidth;
  typename L::V a0 = {}, a1 = {};
  int64_t d = 0;
  for (; d + 2 * W <= D; d += 2 * W) {
    const typename L::V t0 = L::load(x + d) - c, t1 = L::load(x + d + W) - c;
    a0 += t0 * t0;
    a1 += t1 * t1;
  }
  acc_t tail = 0;
  for (; d < D; ++d) tail += (x[d] - c) * (x[d] - c);
  return L::hsum(a0 + a1) + tail;
}

// sum_d x[d] * y[d]
template <typename acc_t>
inline acc_t row_dot(const acc_t* SALD_FAST_RESTRICT x, const acc_t* SALD_FAST_RESTRICT y, int64_t D) {
  using L = Vec<acc_t>;
  constexpr int W = L::kWidth;
  typename L::V a0 = {}, a1 = {};
  int64_t d = 0;
  for (; d + 2 * W <= D; d += 2 * W) {
    a0 += L::load(x + d) * L::load(y + d);
    a1 += L::load(x + d + W) * L::load(y + d + W);
  }
  acc_t tail = 0;
  for (; d < D; ++d) tail += x[d] * y[d];
  return L::hsum(a0 + a1) + tail;
}

// zn = round(z + g h + be); x = zn in the accumulation dtype.
template <typename scalar_t, typename acc_t>
inline void film_row(const scalar_t* SALD_FAST_RESTRICT z, const scalar_t* SALD_FAST_RESTRICT h,
                     const acc_t* SALD_FAST_RESTRICT g, const acc_t* SALD_FAST_RESTRICT be,
                     scalar_t* SALD_FAST_RESTRICT zn, acc_t* SALD_FAST_RESTRICT x, int64_t D) {
  for (int64_t d = 0; d < D; ++d) {
    const scalar_t q = static_cast<scalar_t>(up<acc_t>(z[d]) + g[d] * up<acc_t>(h[d]) + be[d]);
    zn[d] = q;
    x[d] = up<acc_t>(q);
  }
}

// y = (x - mean) * rstd * w + bi
template <typename scalar_t, typename acc_t>
inline void norm_row(const acc_t* SALD_FAST_RESTRICT x, acc_t mean, acc_t rstd, const acc_t* SALD_FAST_RESTRICT w,
                     const acc_t* SALD_FAST_RESTRICT bi, scalar_t* SALD_FAST_RESTRICT y, int64_t D) {
  for (int64_t d = 0; d < D; ++d) y[d] = static_cast<scalar_t>((x[d] - mean) * rstd * w[d] + bi[d]);
}

template <typename scalar_t, typename acc_t>
inline void load_row(const scalar_t* SALD_FAST_RESTRICT src, acc_t* SALD_FAST_RESTRICT x, int64_t D) {
  for (int64_t d = 0; d < D; ++d) x[d] = up<acc_t>(src[d]);
}

// x <- xhat = (x - mean) * rstd; gw = grad_y * w; p_weight += grad_y * xhat; p_bias += grad_y.
template <typename scalar_t, typename acc_t>
inline void backward_prep_row(acc_t* SALD_FAST_RESTRICT x, acc_t mean, acc_t rstd,
                              const scalar_t* SALD_FAST_RESTRICT gy, const acc_t* SALD_FAST_RESTRICT w,
                              acc_t* SALD_FAST_RESTRICT gw, acc_t* SALD_FAST_RESTRICT p_weight,
                              acc_t* SALD_FAST_RESTRICT p_bias, int64_t D) {
  for (int64_t d = 0; d < D; ++d) {
    const acc_t xh = (x[d] - mean) * rstd;
    const acc_t v = up<acc_t>(gy[d]);
    x[d] = xh;
    gw[d] = v * w[d];
    p_weight[d] += v * xh;
    p_bias[d] += v;
  }
}

// dz' = rstd * (gw - m1 - xhat * m2) + grad_z; dz = dz'; dh = dz' * g; p_gamma += dz' * h; p_beta += dz'.
template <typename scalar_t, typename acc_t>
inline void backward_out_row(const acc_t* SALD_FAST_RESTRICT gw, const acc_t* SALD_FAST_RESTRICT xhat, acc_t rstd,
                             acc_t m1, acc_t m2, const scalar_t* SALD_FAST_RESTRICT gz,
                             const acc_t* SALD_FAST_RESTRICT g, const scalar_t* SALD_FAST_RESTRICT h,
                             scalar_t* SALD_FAST_RESTRICT dz, scalar_t* SALD_FAST_RESTRICT dh,
                             acc_t* SALD_FAST_RESTRICT p_gamma, acc_t* SALD_FAST_RESTRICT p_beta, int64_t D) {
  for (int64_t d = 0; d < D; ++d) {
    const acc_t v = rstd * (gw[d] - m1 - xhat[d] * m2) + up<acc_t>(gz[d]);
    dz[d] = static_cast<scalar_t>(v);
    dh[d] = static_cast<scalar_t>(v * g[d]);
    p_gamma[d] += v * up<acc_t>(h[d]);
    p_beta[d] += v;
  }
}

// ------------------------------------------------------------------------------ chunks

template <typename scalar_t>
struct ForwardArgs {
  using acc_t = typename Acc<scalar_t>::type;
  RowView<const scalar_t> z, h;
  const acc_t *gamma, *beta, *weight, *bias;  // (B, D), (B, D), (D,), (D,): weight / bias never null
  scalar_t *z_new, *y;                         // contiguous (B, N, J, D)
  int64_t J, R, D;                             // R = N * J rows per sample
  acc_t eps;
};

// Rows r0 .. r1 of sample b. x: D accumulators of scratch.
template <typename scalar_t>
SALD_FAST_CLONES void forward_chunk(const ForwardArgs<scalar_t>& a, int64_t b, int64_t r0, int64_t r1,
                                    typename Acc<scalar_t>::type* x) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t D = a.D;
  const acc_t inv_d = acc_t(1) / static_cast<acc_t>(D);
  RowCursor cur(r0, a.J);
  for (int64_t r = r0; r < r1; ++r, cur.next()) {
    const int64_t off = (b * a.R + r) * D;
    film_row(a.z.at(b, cur.n, cur.j), a.h.at(b, cur.n, cur.j), a.gamma + b * D, a.beta + b * D, a.z_new + off, x, D);
    const acc_t mean = row_sum(x, D) * inv_d;
    const acc_t rstd = acc_t(1) / std::sqrt(row_sumsq(x, mean, D) * inv_d + a.eps);
    norm_row(x, mean, rstd, a.weight, a.bias, a.y + off, D);
  }
}

template <typename scalar_t>
struct BackwardArgs {
  using acc_t = typename Acc<scalar_t>::type;
  // grad_z / grad_y / h may be zero-stride views of a zero row (absent / not needed)
  RowView<const scalar_t> grad_z, grad_y, z_new, h;
  const acc_t *gamma, *weight;  // (B, D), (D,) (ones when absent)
  scalar_t *dz, *dh;            // contiguous (B, N, J, D), or null: not wanted (written to scratch)
  int64_t J, R, D;
  acc_t eps;
};

// Rows r0 .. r1 of sample b; adds this chunk's sums to p_gamma, p_beta, p_weight, p_bias (D each).
// buf: 2 D accumulators and 2 D scalar_t of scratch.
template <typename scalar_t>
SALD_FAST_CLONES void backward_chunk(const BackwardArgs<scalar_t>& a, int64_t b, int64_t r0, int64_t r1,
                                     typename Acc<scalar_t>::type* buf, scalar_t* scratch,
                                     typename Acc<scalar_t>::type* p_gamma, typename Acc<scalar_t>::type* p_beta,
                                     typename Acc<scalar_t>::type* p_weight, typename Acc<scalar_t>::type* p_bias) {
  using acc_t = typename Acc<scalar_t>::type;
  const int64_t D = a.D;
  const acc_t inv_d = acc_t(1) / static_cast<acc_t>(D);
  acc_t* x = buf;       // z', then xhat
  acc_t* gw = buf + D;  // grad_y * weight
  RowCursor cur(r0, a.J);
  for (int64_t r = r0; r < r1; ++r, cur.next()) {
    load_row(a.z_new.at(b, cur.n, cur.j), x, D);
    const acc_t mean = row_sum(x, D) * inv_d;
    const acc_t rstd = acc_t(1) / std::sqrt(row_sumsq(x, mean, D) * inv_d + a.eps);
    backward_prep_row(x, mean, rstd, a.grad_y.at(b, cur.n, cur.j), a.weight, gw, p_weight, p_bias, D);
    const acc_t m1 = row_sum(gw, D) * inv_d, m2 = row_dot(gw, x, D) * inv_d;
    const int64_t off = (b * a.R + r) * D;
    backward_out_row(gw, x, rstd, m1, m2, a.grad_z.at(b, cur.n, cur.j), a.gamma + b * D, a.h.at(b, cur.n, cur.j),
                     a.dz != nullptr ? a.dz + off : scratch, a.dh != nullptr ? a.dh + off : scratch + D, p_gamma,
                     p_beta, D);
  }
}

}  // namespace film
}  // namespace cpu
}  // namespace sald_fast_ext

#endif  // SALD_FAST_FILM_LAYERNORM_KERNELS_H_
