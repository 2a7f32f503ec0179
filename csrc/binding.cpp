// torch.library registration of the sparse skeletal graph convolution and the fused FiLM +
// residual + LayerNorm (namespace sald_fast_ext).
//
// Ops (functional; fake implementations and autograd are registered from Python in
// sald_fast/ops/extension_backend.py, where symbolic shapes come for free):
//   graph_conv(h, indptr, indices, w_self, w_neigh, bias?) -> out
//   graph_conv_backward(grad_out, h, indptr, indices, w_self, w_neigh, has_bias, compute_dh,
//                       compute_dw) -> (dh, dw_self, dw_neigh, dbias)   (unneeded ones are (0,))
//   csr_mean_aggregate(x, indptr, indices, transpose) -> A x  (or A^T x)
//   film_layernorm(z, h, gamma, beta, weight?, bias?, eps) -> (z', y)          (CPU kernels only)
//   film_layernorm_backward(grad_z?, grad_y?, z_new, h, gamma, weight?, bias?, eps, compute_dz,
//                           compute_dh, compute_dfilm, compute_daffine)
//       -> (dz, dh, dgamma, dbeta, dweight, dbias)   (unneeded / absent ones are (0,) in z's dtype)
// with h (B, N, J, C_in) (any strides), CSR neighbourhoods (indptr (J+1,), indices (nnz,),
// int32/int64, self loops included, rows sorted), w_* (C_out, C_in), bias (C_out,).
//
// FiLM + LN: z, h (B, N, J, D) (any strides), gamma, beta (B, D) in z's dtype, weight, bias (D,)
// of any float dtype; z' = z + gamma h + beta, y = LayerNorm(z') * weight + bias. Kernels in
// csrc/cpu/film_layernorm.cpp; dgamma / dbeta come back in gamma's dtype, dweight / dbias in
// weight's / bias's.
//
// Graph convolution kernels: CPU in csrc/cpu/graph_conv.cpp (fused per tile). CUDA (compiled only with
// SALD_FAST_WITH_CUDA): the CSR gathers of csrc/cuda/graph_conv.cu build [h | A h] (and A^T g in
// the backward) and cuBLAS (at::addmm / at::mm) does the products with W_cat = [W_self | W_neigh].
//
// Every op validates its arguments here, before any kernel runs: ranks, shapes, dtypes, devices
// (TypeError / ValueError in Python). CSR contents (range, sorted rows) are checked on the host
// for CPU tensors on every call (O(nnz)); for CUDA tensors that would cost a device sync, so the
// public wrapper sald_fast.ops.skeletal_graph_conv checks them (once per CSR) and the CUDA kernels
// write NaN rather than read out of bounds if a bad CSR slips through.

// Per-operator ATen headers instead of <ATen/ATen.h>: the torch headers dominate the build time
// of the extension (about 5 s instead of 10 s per file on a 2-core CPU).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <optional>
#include <sstream>
#include <tuple>

#ifdef SALD_FAST_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/graph_conv.h"
#endif

namespace sald_fast_ext {

namespace cpu {
at::Tensor graph_conv_forward(const at::Tensor& h, const at::Tensor& indptr, const at::Tensor& indices,
                              const at::Tensor& w_cat, const at::Tensor& bias);
std::tuple<at::Tensor, at::Tensor, at::Tensor> graph_conv_backward(
    const at::Tensor& grad_out, const at::Tensor& h, const at::Tensor& indptr, const at::Tensor& indices,
    const at::Tensor& w_cat, bool has_bias, bool compute_dh, bool compute_dw);
at::Tensor csr_mean_aggregate(const at::Tensor& x, const at::Tensor& indptr, const at::Tensor& indices,
                              bool transpose);
std::tuple<at::Tensor, at::Tensor> film_layernorm_forward(const at::Tensor& z, const at::Tensor& h,
                                                          const at::Tensor& gamma, const at::Tensor& beta,
                                                          const at::Tensor& weight, const at::Tensor& bias,
                                                          double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> film_layernorm_backward(
    const at::Tensor& grad_z, const at::Tensor& grad_y, const at::Tensor& z_new, const at::Tensor& h,
    const at::Tensor& gamma, const at::Tensor& weight, double eps, bool compute_dz, bool compute_dh,
    bool compute_dfilm, bool compute_dweight, bool compute_dbias);
}  // namespace cpu

namespace {

struct Dims {
  int64_t B, N, J, C_in, C_out, nnz;
};

bool is_float(const at::Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16;
}

void check_float(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK_TYPE(is_float(t), op, ": ", name, " has dtype ", t.scalar_type(),
                   "; supported: float32, float16, bfloat16, float64");
}

void check_same(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but ",
                   ref_name, " has ", ref.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
                    ref.device());
}

// CSR structure checks (ranks, dtypes, devices, lengths) for a (B, N, J, C) tensor `x`.
void check_csr_meta(const char* op, const at::Tensor& x, const at::Tensor& indptr, const at::Tensor& indices) {
  const char* names[2] = {"indptr", "indices"};
  const at::Tensor* ts[2] = {&indptr, &indices};
  for (int q = 0; q < 2; ++q) {
    const at::Tensor& t = *ts[q];
    TORCH_CHECK_TYPE(t.defined(), op, ": ", names[q], " is undefined");
    TORCH_CHECK_TYPE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, op, ": ", names[q],
                     " must be int32 or int64, got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.dim() == 1, op, ": ", names[q], " must be 1-D, got shape ", t.sizes());
    TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", names[q], " is on ", t.device(), " but the input is on ",
                      x.device());
  }
  TORCH_CHECK_VALUE(indptr.numel() == x.size(2) + 1, op, ": indptr has ", indptr.numel(), " entries; the input has J=",
                    x.size(2), " joints, so it needs ", x.size(2) + 1);
}

// CSR contents, on the host: indptr starts at 0, ends at nnz, rows non-empty and strictly sorted,
// indices in [0, J). O(nnz); `ip` and `ix` are int64 contiguous CPU tensors.
void check_csr_values(const char* op, const at::Tensor& ip, const at::Tensor& ix, int64_t J) {
  const int64_t* p = ip.data_ptr<int64_t>();
  const int64_t* q = ix.data_ptr<int64_t>();
  const int64_t nnz = ix.numel();
  TORCH_CHECK_VALUE(p[0] == 0 && p[J] == nnz, op, ": indptr must start at 0 and end at nnz=", nnz, ", got ", p[0],
                    "..", p[J]);
  for (int64_t i = 0; i < J; ++i) {
    TORCH_CHECK_VALUE(p[i + 1] > p[i], op, ": CSR row ", i, " is empty or indptr decreases (indptr[", i, "]=", p[i],
                      ", indptr[", i + 1, "]=", p[i + 1], "); every joint needs its self loop");
    TORCH_CHECK_VALUE(p[i + 1] <= nnz, op, ": indptr[", i + 1, "]=", p[i + 1], " exceeds nnz=", nnz);
    for (int64_t e = p[i]; e < p[i + 1]; ++e) {
      TORCH_CHECK_VALUE(q[e] >= 0 && q[e] < J, op, ": indices must lie in [0, J=", J, "), got ", q[e],
                        " at position ", e, " (CSR row ", i, ")");
      TORCH_CHECK_VALUE(e == p[i] || q[e] > q[e - 1], op, ": CSR row ", i, " is not strictly sorted (indices[", e - 1,
                        "]=", q[e - 1], ", indices[", e, "]=", q[e], ")");
    }
  }
}

Dims check_graph_conv(const char* op, const at::Tensor& h, const at::Tensor& indptr, const at::Tensor& indices,
                      const at::Tensor& w_self, const at::Tensor& w_neigh, const std::optional<at::Tensor>& bias) {
  check_float(op, "h", h);
  TORCH_CHECK_VALUE(h.dim() == 4, op, ": h must be (B, N, J, C_in), got shape ", h.sizes());
  check_csr_meta(op, h, indptr, indices);
  check_float(op, "w_self", w_self);
  check_float(op, "w_neigh", w_neigh);
  check_same(op, "w_self", w_self, h, "h");
  check_same(op, "w_neigh", w_neigh, h, "h");
  TORCH_CHECK_VALUE(w_self.dim() == 2 && w_self.size(1) == h.size(3), op, ": w_self must be (C_out, C_in=", h.size(3),
                    "), got shape ", w_self.sizes());
  TORCH_CHECK_VALUE(w_neigh.sizes() == w_self.sizes(), op, ": w_neigh has shape ", w_neigh.sizes(), " but w_self has ",
                    w_self.sizes());
  if (bias.has_value() && bias->defined()) {
    check_float(op, "bias", *bias);
    check_same(op, "bias", *bias, h, "h");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == w_self.size(0), op, ": bias must be (C_out=",
                      w_self.size(0), ",), got shape ", bias->sizes());
  }
  return Dims{h.size(0), h.size(1), h.size(2), h.size(3), w_self.size(0), indices.numel()};
}

void check_grad_out(const char* op, const at::Tensor& grad_out, const at::Tensor& h, const Dims& d) {
  check_float(op, "grad_out", grad_out);
  check_same(op, "grad_out", grad_out, h, "h");
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == d.B && grad_out.size(1) == d.N &&
                        grad_out.size(2) == d.J && grad_out.size(3) == d.C_out,
                    op, ": grad_out must be (B, N, J, C_out) = (", d.B, ", ", d.N, ", ", d.J, ", ", d.C_out,
                    "), got ", grad_out.sizes());
}

// The checks of graph_conv_backward (CPU and CUDA): the forward's arguments, then grad_out.
Dims check_graph_conv_backward(const char* op, const at::Tensor& grad_out, const at::Tensor& h_in,
                               const at::Tensor& indptr, const at::Tensor& indices, const at::Tensor& w_self,
                               const at::Tensor& w_neigh) {
  const Dims d = check_graph_conv(op, h_in, indptr, indices, w_self, w_neigh, std::nullopt);
  check_grad_out(op, grad_out, h_in, d);
  return d;
}

at::Tensor unit_channel_stride(const at::Tensor& x) {
  return x.size(3) <= 1 || x.stride(3) == 1 ? x : x.contiguous();
}

std::pair<at::Tensor, at::Tensor> csr_int64(const at::Tensor& indptr, const at::Tensor& indices) {
  return {indptr.to(at::kLong).contiguous(), indices.to(at::kLong).contiguous()};
}

at::ScalarType acc_type(const at::Tensor& h) {
  return h.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// ------------------------------------------------------------------------------------------- CPU

// What the CPU graph convolution kernels take: int64 CSR (values checked), h with unit channel
// stride, and W_cat = [W_self | W_neigh] in h's accumulation type.
struct CpuGraphConvArgs {
  at::Tensor ip, ix, h, w_cat;
};

CpuGraphConvArgs cpu_graph_conv_args(const char* op, const Dims& d, const at::Tensor& h_in, const at::Tensor& indptr,
                                     const at::Tensor& indices, const at::Tensor& w_self, const at::Tensor& w_neigh) {
  auto [ip, ix] = csr_int64(indptr, indices);
  check_csr_values(op, ip, ix, d.J);
  at::Tensor h = unit_channel_stride(h_in);
  at::Tensor w_cat = at::cat({w_self, w_neigh}, 1).to(acc_type(h)).contiguous();
  return {ip, ix, h, w_cat};
}

at::Tensor graph_conv_cpu(const at::Tensor& h_in, const at::Tensor& indptr, const at::Tensor& indices,
                          const at::Tensor& w_self, const at::Tensor& w_neigh, const std::optional<at::Tensor>& bias) {
  const char* op = "sald_fast_ext::graph_conv";
  const Dims d = check_graph_conv(op, h_in, indptr, indices, w_self, w_neigh, bias);
  const auto [ip, ix, h, w_cat] = cpu_graph_conv_args(op, d, h_in, indptr, indices, w_self, w_neigh);
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->to(acc_type(h)).contiguous() : at::Tensor();
  return cpu::graph_conv_forward(h, ip, ix, w_cat, b);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> graph_conv_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& h_in, const at::Tensor& indptr, const at::Tensor& indices,
    const at::Tensor& w_self, const at::Tensor& w_neigh, bool has_bias, bool compute_dh, bool compute_dw) {
  const char* op = "sald_fast_ext::graph_conv_backward";
  const Dims d = check_graph_conv_backward(op, grad_out, h_in, indptr, indices, w_self, w_neigh);
  const auto [ip, ix, h, w_cat] = cpu_graph_conv_args(op, d, h_in, indptr, indices, w_self, w_neigh);
  auto [dh, dw_cat, dbias] =
      cpu::graph_conv_backward(grad_out.contiguous(), h, ip, ix, w_cat, has_bias, compute_dh, compute_dw);
  at::Tensor dws = at::empty({0}, w_self.options()), dwn = at::empty({0}, w_self.options());
  if (compute_dw) {
    dws = dw_cat.narrow(1, 0, d.C_in).to(w_self.scalar_type()).contiguous();
    dwn = dw_cat.narrow(1, d.C_in, d.C_in).to(w_self.scalar_type()).contiguous();
  }
  return {dh, dws, dwn, dbias.to(h.scalar_type())};
}

at::Tensor csr_mean_aggregate_cpu(const at::Tensor& x_in, const at::Tensor& indptr, const at::Tensor& indices,
                                  bool transpose) {
  const char* op = "sald_fast_ext::csr_mean_aggregate";
  check_float(op, "x", x_in);
  TORCH_CHECK_VALUE(x_in.dim() == 4, op, ": x must be (B, N, J, C), got shape ", x_in.sizes());
  check_csr_meta(op, x_in, indptr, indices);
  auto [ip, ix] = csr_int64(indptr, indices);
  check_csr_values(op, ip, ix, x_in.size(2));
  return cpu::csr_mean_aggregate(unit_channel_stride(x_in), ip, ix, transpose);
}

// ------------------------------------------------------------------------- FiLM + residual + LN

// z, h (B, N, J, D) one float dtype; gamma, beta (B, D) in z's dtype; weight, bias (D,) any float
// dtype or absent; all on z's device.
void check_film(const char* op, const at::Tensor& z, const at::Tensor& h, const at::Tensor& gamma,
                const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias) {
  check_float(op, "z", z);
  TORCH_CHECK_VALUE(z.dim() == 4, op, ": z must be (B, N, J, D), got shape ", z.sizes());
  check_float(op, "h", h);
  check_same(op, "h", h, z, "z");
  TORCH_CHECK_VALUE(h.sizes() == z.sizes(), op, ": h has shape ", h.sizes(), " but z has ", z.sizes());
  check_float(op, "gamma", gamma);
  check_same(op, "gamma", gamma, z, "z");
  TORCH_CHECK_VALUE(gamma.dim() == 2 && gamma.size(0) == z.size(0) && gamma.size(1) == z.size(3), op,
                    ": gamma must be (B, D) = (", z.size(0), ", ", z.size(3), "), got shape ", gamma.sizes());
  const char* names[2] = {"weight", "bias"};
  const std::optional<at::Tensor>* ts[2] = {&weight, &bias};
  for (int q = 0; q < 2; ++q) {
    if (!ts[q]->has_value() || !(*ts[q])->defined()) continue;
    const at::Tensor& t = **ts[q];
    check_float(op, names[q], t);
    TORCH_CHECK_VALUE(t.device() == z.device(), op, ": ", names[q], " is on ", t.device(), " but z is on ",
                      z.device());
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == z.size(3), op, ": ", names[q], " must be (D,) = (", z.size(3),
                      ",), got shape ", t.sizes());
  }
}

at::Tensor acc_contiguous(const std::optional<at::Tensor>& t, at::ScalarType acc) {
  return t.has_value() && t->defined() ? t->to(acc).contiguous() : at::Tensor();
}

bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

std::tuple<at::Tensor, at::Tensor> film_layernorm_cpu(const at::Tensor& z_in, const at::Tensor& h_in,
                                                      const at::Tensor& gamma, const at::Tensor& beta,
                                                      const std::optional<at::Tensor>& weight,
                                                      const std::optional<at::Tensor>& bias, double eps) {
  const char* op = "sald_fast_ext::film_layernorm";
  check_film(op, z_in, h_in, gamma, weight, bias);
  check_float(op, "beta", beta);
  check_same(op, "beta", beta, z_in, "z");
  TORCH_CHECK_VALUE(beta.sizes() == gamma.sizes(), op, ": beta must be (B, D) = (", z_in.size(0), ", ", z_in.size(3),
                    "), got shape ", beta.sizes());
  const at::ScalarType acc = acc_type(z_in);
  return cpu::film_layernorm_forward(unit_channel_stride(z_in), unit_channel_stride(h_in), gamma.to(acc).contiguous(),
                                     beta.to(acc).contiguous(), acc_contiguous(weight, acc), acc_contiguous(bias, acc),
                                     eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> film_layernorm_backward_cpu(
    const std::optional<at::Tensor>& grad_z, const std::optional<at::Tensor>& grad_y, const at::Tensor& z_new,
    const at::Tensor& h, const at::Tensor& gamma, const std::optional<at::Tensor>& weight,
    const std::optional<at::Tensor>& bias, double eps, bool compute_dz, bool compute_dh, bool compute_dfilm,
    bool compute_daffine) {
  const char* op = "sald_fast_ext::film_layernorm_backward";
  check_film(op, z_new, h, gamma, weight, bias);
  const char* names[2] = {"grad_z", "grad_y"};
  const std::optional<at::Tensor>* grads[2] = {&grad_z, &grad_y};
  at::Tensor g[2];
  for (int q = 0; q < 2; ++q) {
    if (!given(*grads[q])) continue;
    const at::Tensor& t = **grads[q];
    check_float(op, names[q], t);
    check_same(op, names[q], t, z_new, "z_new");
    TORCH_CHECK_VALUE(t.sizes() == z_new.sizes(), op, ": ", names[q], " has shape ", t.sizes(), " but z_new has ",
                      z_new.sizes());
    g[q] = unit_channel_stride(t);
  }
  const at::ScalarType acc = acc_type(z_new);
  const bool dweight = compute_daffine && given(weight), dbias = compute_daffine && given(bias);
  auto [dz, dh, dgamma, dbeta, dw, db] = cpu::film_layernorm_backward(
      g[0], g[1], unit_channel_stride(z_new), unit_channel_stride(h), gamma.to(acc).contiguous(),
      acc_contiguous(weight, acc), eps, compute_dz, compute_dh, compute_dfilm, dweight, dbias);
  const at::Tensor none = at::empty({0}, z_new.options());
  return {dz, dh, compute_dfilm ? dgamma.to(gamma.scalar_type()) : none,
          compute_dfilm ? dbeta.to(gamma.scalar_type()) : none, dweight ? dw.to(weight->scalar_type()) : none,
          dbias ? db.to(bias->scalar_type()) : none};
}

// ------------------------------------------------------------------------------------------ CUDA
#ifdef SALD_FAST_WITH_CUDA

sald_gc_dtype gc_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return SALD_GC_F32;
    case at::kHalf: return SALD_GC_F16;
    case at::kBFloat16: return SALD_GC_BF16;
    case at::kDouble: return SALD_GC_F64;
    default: TORCH_CHECK_TYPE(false, "sald_fast_ext: unsupported dtype ", t.scalar_type());
  }
  return SALD_GC_F32;
}

void check_launch(const char* op, const char* err) {
  TORCH_CHECK(err == nullptr, op, ": CUDA kernel launch failed: ", err);
}

// Gather args for x (B, N, J, C) (unit channel stride) -> out (rows, out_ld) at out_col.
sald_gc_gather_args gather_args(const at::Tensor& x, const at::Tensor& out, int64_t out_ld, int64_t out_col,
                                const at::Tensor& ip, const at::Tensor& ix) {
  sald_gc_gather_args a{};
  a.in = x.data_ptr();
  a.in_sb = x.stride(0);
  a.in_sn = x.stride(1);
  a.in_sj = x.stride(2);
  a.self_in = nullptr;
  a.self_ld = 0;
  a.out = out.data_ptr();
  a.out_ld = out_ld;
  a.out_col = out_col;
  a.copy_col = -1;
  a.rowptr = ip.data_ptr<int64_t>();
  a.col = ix.data_ptr<int64_t>();
  a.degptr = ip.data_ptr<int64_t>();
  a.transposed = 0;
  a.B = x.size(0);
  a.N = x.size(1);
  a.J = x.size(2);
  a.C = x.size(3);
  a.nnz = ix.numel();
  return a;
}

// X = [h | A h] as (B*N*J, 2 C_in), in h's dtype.
at::Tensor build_concat_cuda(const char* op, const at::Tensor& h, const at::Tensor& ip, const at::Tensor& ix) {
  const int64_t C = h.size(3);
  at::Tensor X = at::empty({h.size(0) * h.size(1) * h.size(2), 2 * C}, h.options());
  sald_gc_gather_args a = gather_args(h, X, 2 * C, C, ip, ix);
  a.copy_col = 0;
  check_launch(op, sald_gc_gather(gc_dtype(h), &a, c10::cuda::getCurrentCUDAStream().stream()));
  return X;
}

// (t_rowptr (J+1), t_col (nnz)) of the transposed pattern, computed on the device.
std::pair<at::Tensor, at::Tensor> transpose_csr_cuda(const char* op, const at::Tensor& ip, const at::Tensor& ix) {
  const int64_t J = ip.numel() - 1, nnz = ix.numel();
  at::Tensor ws = at::empty({(J + 1) + nnz + J}, ip.options());
  at::Tensor t_ip = ws.narrow(0, 0, J + 1), t_ix = ws.narrow(0, J + 1, nnz), cursor = ws.narrow(0, J + 1 + nnz, J);
  check_launch(op, sald_gc_csr_transpose(ip.data_ptr<int64_t>(), ix.data_ptr<int64_t>(), J, nnz,
                                         t_ip.data_ptr<int64_t>(), t_ix.data_ptr<int64_t>(),
                                         cursor.data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream().stream()));
  return {t_ip, t_ix};
}

at::Tensor graph_conv_cuda(const at::Tensor& h_in, const at::Tensor& indptr, const at::Tensor& indices,
                           const at::Tensor& w_self, const at::Tensor& w_neigh, const std::optional<at::Tensor>& bias) {
  const char* op = "sald_fast_ext::graph_conv";
  const Dims d = check_graph_conv(op, h_in, indptr, indices, w_self, w_neigh, bias);
  const c10::cuda::CUDAGuard guard(h_in.device());
  auto [ip, ix] = csr_int64(indptr, indices);
  const at::Tensor h = unit_channel_stride(h_in);
  const at::Tensor X = build_concat_cuda(op, h, ip, ix);
  const at::Tensor w_cat_t = at::cat({w_self, w_neigh}, 1).t();  // (2 C_in, C_out)
  const at::Tensor out = bias.has_value() && bias->defined() ? at::addmm(*bias, X, w_cat_t) : at::mm(X, w_cat_t);
  return out.view({d.B, d.N, d.J, d.C_out});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> graph_conv_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& h_in, const at::Tensor& indptr, const at::Tensor& indices,
    const at::Tensor& w_self, const at::Tensor& w_neigh, bool has_bias, bool compute_dh, bool compute_dw) {
  const char* op = "sald_fast_ext::graph_conv_backward";
  const Dims d = check_graph_conv_backward(op, grad_out, h_in, indptr, indices, w_self, w_neigh);
  const c10::cuda::CUDAGuard guard(h_in.device());
  auto [ip, ix] = csr_int64(indptr, indices);
  const at::Tensor h = unit_channel_stride(h_in);
  const int64_t rows = d.B * d.N * d.J;
  const at::Tensor D = grad_out.contiguous().view({rows, d.C_out});
  const at::Tensor w_cat = at::cat({w_self, w_neigh}, 1);  // (C_out, 2 C_in)
  at::Tensor dh = at::empty({0}, h.options());
  at::Tensor dws = at::empty({0}, w_self.options()), dwn = at::empty({0}, w_self.options());
  at::Tensor db = at::empty({0}, h.options());
  if (compute_dh) {
    const at::Tensor G = at::mm(D, w_cat);  // (rows, 2 C_in) = [G_self | G_neigh]
    dh = at::empty({d.B, d.N, d.J, d.C_in}, h.options());
    if (dh.numel() > 0) {
      auto [t_ip, t_ix] = transpose_csr_cuda(op, ip, ix);
      const at::Tensor G_neigh = G.narrow(1, d.C_in, d.C_in).view({d.B, d.N, d.J, d.C_in});  // strided view
      sald_gc_gather_args a = gather_args(G_neigh, dh, d.C_in, 0, t_ip, t_ix);
      a.self_in = G.data_ptr();
      a.self_ld = 2 * d.C_in;
      a.degptr = ip.data_ptr<int64_t>();
      a.transposed = 1;
      check_launch(op, sald_gc_gather(gc_dtype(h), &a, c10::cuda::getCurrentCUDAStream().stream()));
    }
  }
  if (compute_dw) {
    const at::Tensor X = build_concat_cuda(op, h, ip, ix);
    const at::Tensor dw_cat = at::mm(D.t(), X);  // (C_out, 2 C_in)
    dws = dw_cat.narrow(1, 0, d.C_in).contiguous();
    dwn = dw_cat.narrow(1, d.C_in, d.C_in).contiguous();
  }
  if (has_bias) db = D.sum(0);
  return {dh, dws, dwn, db};
}

at::Tensor csr_mean_aggregate_cuda(const at::Tensor& x_in, const at::Tensor& indptr, const at::Tensor& indices,
                                   bool transpose) {
  const char* op = "sald_fast_ext::csr_mean_aggregate";
  check_float(op, "x", x_in);
  TORCH_CHECK_VALUE(x_in.dim() == 4, op, ": x must be (B, N, J, C), got shape ", x_in.sizes());
  check_csr_meta(op, x_in, indptr, indices);
  const c10::cuda::CUDAGuard guard(x_in.device());
  auto [ip, ix] = csr_int64(indptr, indices);
  const at::Tensor x = unit_channel_stride(x_in);
  at::Tensor out = at::empty(x.sizes(), x.options());
  if (out.numel() == 0) return out;
  if (transpose) {
    auto [t_ip, t_ix] = transpose_csr_cuda(op, ip, ix);
    sald_gc_gather_args a = gather_args(x, out, x.size(3), 0, t_ip, t_ix);
    a.degptr = ip.data_ptr<int64_t>();
    a.transposed = 1;
    check_launch(op, sald_gc_gather(gc_dtype(x), &a, c10::cuda::getCurrentCUDAStream().stream()));
  } else {
    sald_gc_gather_args a = gather_args(x, out, x.size(3), 0, ip, ix);
    check_launch(op, sald_gc_gather(gc_dtype(x), &a, c10::cuda::getCurrentCUDAStream().stream()));
  }
  return out;
}

#endif  // SALD_FAST_WITH_CUDA

}  // namespace
}  // namespace sald_fast_ext

TORCH_LIBRARY(sald_fast_ext, m) {
  m.set_python_module("sald_fast.ops.extension_backend");
  m.def("graph_conv(Tensor h, Tensor indptr, Tensor indices, Tensor w_self, Tensor w_neigh, Tensor? bias) -> Tensor");
  m.def(
      "graph_conv_backward(Tensor grad_out, Tensor h, Tensor indptr, Tensor indices, Tensor w_self, Tensor w_neigh, "
      "bool has_bias, bool compute_dh, bool compute_dw) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("csr_mean_aggregate(Tensor x, Tensor indptr, Tensor indices, bool transpose) -> Tensor");
  m.def("film_layernorm(Tensor z, Tensor h, Tensor gamma, Tensor beta, Tensor? weight, Tensor? bias, float eps) "
        "-> (Tensor, Tensor)");
  m.def(
      "film_layernorm_backward(Tensor? grad_z, Tensor? grad_y, Tensor z_new, Tensor h, Tensor gamma, Tensor? weight, "
      "Tensor? bias, float eps, bool compute_dz, bool compute_dh, bool compute_dfilm, bool compute_daffine) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sald_fast_ext, CPU, m) {
  m.impl("graph_conv", &sald_fast_ext::graph_conv_cpu);
  m.impl("graph_conv_backward", &sald_fast_ext::graph_conv_backward_cpu);
  m.impl("csr_mean_aggregate", &sald_fast_ext::csr_mean_aggregate_cpu);
  m.impl("film_layernorm", &sald_fast_ext::film_layernorm_cpu);
  m.impl("film_layernorm_backward", &sald_fast_ext::film_layernorm_backward_cpu);
}

#ifdef SALD_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(sald_fast_ext, CUDA, m) {
  m.impl("graph_conv", &sald_fast_ext::graph_conv_cuda);
  m.impl("graph_conv_backward", &sald_fast_ext::graph_conv_backward_cuda);
  m.impl("csr_mean_aggregate", &sald_fast_ext::csr_mean_aggregate_cuda);
}
#endif
