// CUDA kernels of the sparse skeletal graph convolution: the CSR neighbourhood gather (the mean
// aggregation A h, fused with the copy that builds [h | A h] for the forward GEMM) and its
// transpose (A^T g, fused with the add of the self term for the backward), plus a one-thread
// CSR transpose. Plain CUDA with C launchers (graph_conv.h): no torch headers, so nvcc compiles
// this file on any machine. fp32, fp16, bf16 (fp32 accumulation) and fp64.
//
// Work split: one thread per (row, 16-byte vector of channels); a frame's J rows are neighbours
// in memory, so the ~3 neighbour reads per output hit L1/L2 and DRAM traffic is one read of the
// input plus the writes. 32-bit index math when the item count allows it.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "graph_conv.h"

// `#pragma unroll` only in the device pass (the host pass of __host__ __device__ bodies warns).
#ifdef __CUDA_ARCH__
#define SALD_UNROLL _Pragma("unroll")
#else
#define SALD_UNROLL
#endif

namespace {

template <typename T>
struct AccType {
  typedef float type;
};
template <>
struct AccType<double> {
  typedef double type;
};

__host__ __device__ inline float to_acc(float x) { return x; }
__host__ __device__ inline double to_acc(double x) { return x; }
__host__ __device__ inline float to_acc(__half x) { return __half2float(x); }
__host__ __device__ inline float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__host__ __device__ inline T from_acc(typename AccType<T>::type x);
template <>
__host__ __device__ inline float from_acc<float>(float x) { return x; }
template <>
__host__ __device__ inline double from_acc<double>(double x) { return x; }
template <>
__host__ __device__ inline __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <>
__host__ __device__ inline __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// One output vector: row r = frame * J + j, channels [cv * V, cv * V + V).
template <typename T, int V, typename I>
__host__ __device__ inline void gather_item(I item, const sald_gc_gather_args& a) {
  typedef typename AccType<T>::type acc_t;
  typedef Pack<T, V> P;
  const I CV = static_cast<I>(a.C / V);
  const I cv = item % CV;
  const I row = item / CV;
  const I j = row % static_cast<I>(a.J);
  const I frame = row / static_cast<I>(a.J);
  const I n = frame % static_cast<I>(a.N);
  const I b = frame / static_cast<I>(a.N);
  const int64_t c0 = static_cast<int64_t>(cv) * V;
  const T* in = static_cast<const T*>(a.in) + static_cast<int64_t>(b) * a.in_sb +
                static_cast<int64_t>(n) * a.in_sn + c0;

  acc_t acc[V];
  if (a.self_in != NULL) {
    const T* self_row = static_cast<const T*>(a.self_in) + static_cast<int64_t>(row) * a.self_ld;
    const P s = *reinterpret_cast<const P*>(self_row + c0);
SALD_UNROLL
    for (int v = 0; v < V; ++v) acc[v] = to_acc(s.v[v]);
  } else {
SALD_UNROLL
    for (int v = 0; v < V; ++v) acc[v] = acc_t(0);
  }

  const int64_t e0 = a.rowptr[j], e1 = a.rowptr[j + 1];
  bool bad = e0 < 0 || e1 < e0 || e1 > a.nnz || (!a.transposed && e1 == e0);
  if (!bad) {
    acc_t sum[V];
SALD_UNROLL
    for (int v = 0; v < V; ++v) sum[v] = acc_t(0);
    for (int64_t e = e0; e < e1; ++e) {
      const int64_t k = a.col[e];
      if (k < 0 || k >= a.J) {
        bad = true;
        break;
      }
      acc_t w = acc_t(1);
      if (a.transposed) {
        const int64_t deg = a.degptr[k + 1] - a.degptr[k];
        if (deg <= 0) {
          bad = true;
          break;
        }
        w = acc_t(1) / static_cast<acc_t>(deg);
      }
      const P p = *reinterpret_cast<const P*>(in + k * a.in_sj);
SALD_UNROLL
      for (int v = 0; v < V; ++v) sum[v] += w * to_acc(p.v[v]);
    }
    const acc_t scale = a.transposed ? acc_t(1) : acc_t(1) / static_cast<acc_t>(e1 - e0);
SALD_UNROLL
    for (int v = 0; v < V; ++v) acc[v] += scale * sum[v];
  }

  T* out = static_cast<T*>(a.out) + static_cast<int64_t>(row) * a.out_ld + c0;
  P o;
SALD_UNROLL
  for (int v = 0; v < V; ++v) o.v[v] = from_acc<T>(bad ? static_cast<acc_t>(NAN) : acc[v]);
  *reinterpret_cast<P*>(out + a.out_col) = o;
  if (a.copy_col >= 0) {
    *reinterpret_cast<P*>(out + a.copy_col) = *reinterpret_cast<const P*>(in + static_cast<int64_t>(j) * a.in_sj);
  }
}

template <typename T, int V, typename I>
__global__ void gather_kernel(sald_gc_gather_args a, I items) {
  const I stride = static_cast<I>(gridDim.x) * static_cast<I>(blockDim.x);
  for (I item = static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x) + threadIdx.x; item < items; item += stride)
    gather_item<T, V, I>(item, a);
}

__host__ __device__ inline void csr_transpose_body(const int64_t* rowptr, const int64_t* col, int64_t J, int64_t nnz,
                                                   int64_t* t_rowptr, int64_t* t_col, int64_t* cursor) {
  for (int64_t j = 0; j <= J; ++j) t_rowptr[j] = 0;
  for (int64_t e = 0; e < nnz; ++e) {
    const int64_t k = col[e];
    if (k >= 0 && k < J) t_rowptr[k + 1] += 1;
  }
  for (int64_t j = 0; j < J; ++j) t_rowptr[j + 1] += t_rowptr[j];
  for (int64_t j = 0; j < J; ++j) cursor[j] = t_rowptr[j];
  for (int64_t e = t_rowptr[J]; e < nnz; ++e) t_col[e] = 0;
  for (int64_t i = 0; i < J; ++i) {
    int64_t e0 = rowptr[i], e1 = rowptr[i + 1];
    e0 = e0 < 0 ? 0 : (e0 > nnz ? nnz : e0);
    e1 = e1 < e0 ? e0 : (e1 > nnz ? nnz : e1);
    for (int64_t e = e0; e < e1; ++e) {
      const int64_t k = col[e];
      if (k >= 0 && k < J) t_col[cursor[k]++] = i;
    }
  }
}

__global__ void csr_transpose_kernel(const int64_t* rowptr, const int64_t* col, int64_t J, int64_t nnz,
                                     int64_t* t_rowptr, int64_t* t_col, int64_t* cursor) {
  if (blockIdx.x == 0 && threadIdx.x == 0) csr_transpose_body(rowptr, col, J, nnz, t_rowptr, t_col, cursor);
}

template <typename T>
int vector_width(const sald_gc_gather_args& a) {
  const int V = static_cast<int>(16 / sizeof(T));
  const uintptr_t bytes = sizeof(T) * V;
  const bool aligned = reinterpret_cast<uintptr_t>(a.in) % bytes == 0 &&
                       reinterpret_cast<uintptr_t>(a.out) % bytes == 0 &&
                       (a.self_in == NULL || reinterpret_cast<uintptr_t>(a.self_in) % bytes == 0);
  const bool strides = a.C % V == 0 && a.in_sb % V == 0 && a.in_sn % V == 0 && a.in_sj % V == 0 && a.out_ld % V == 0 &&
                       a.out_col % V == 0 && (a.copy_col < 0 || a.copy_col % V == 0) &&
                       (a.self_in == NULL || a.self_ld % V == 0);
  return aligned && strides ? V : 1;
}

const char* check_args(const sald_gc_gather_args* a) {
  if (a == NULL) return "sald_gc_gather: args is NULL";
  if (a->B < 0 || a->N < 0 || a->J < 0 || a->C < 0 || a->nnz < 0) return "sald_gc_gather: negative size";
  if (a->B * a->N * a->J * a->C == 0) return NULL;
  if (a->in == NULL || a->out == NULL || a->rowptr == NULL || a->col == NULL) return "sald_gc_gather: NULL pointer";
  if (a->transposed && a->degptr == NULL) return "sald_gc_gather: transposed gather needs degptr";
  if (a->out_col < 0 || a->out_col + a->C > a->out_ld) return "sald_gc_gather: out_col + C exceeds out_ld";
  if (a->copy_col >= 0 && a->copy_col + a->C > a->out_ld) return "sald_gc_gather: copy_col + C exceeds out_ld";
  if (a->self_in != NULL && a->self_ld < a->C) return "sald_gc_gather: self_ld < C";
  return NULL;
}

template <typename T, int V, typename I>
const char* run_gather(const sald_gc_gather_args& a, int64_t items, cudaStream_t stream, bool host) {
  if (host) {
    for (int64_t item = 0; item < items; ++item) gather_item<T, V, I>(static_cast<I>(item), a);
    return NULL;
  }
  const int threads = 256;
  int64_t blocks = (items + threads - 1) / threads;
  if (blocks > (int64_t(1) << 20)) blocks = int64_t(1) << 20;  // grid-stride loop covers the rest
  gather_kernel<T, V, I><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(a, static_cast<I>(items));
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? NULL : cudaGetErrorString(err);
}

template <typename T, int V>
const char* run_gather_v(const sald_gc_gather_args& a, cudaStream_t stream, bool host) {
  const int64_t items = a.B * a.N * a.J * (a.C / V);
  if (items == 0) return NULL;
  // 32-bit index math when items plus one grid stride fit (the VAE's shapes do).
  if (items < (int64_t(1) << 31) - (int64_t(1) << 28)) return run_gather<T, V, uint32_t>(a, items, stream, host);
  return run_gather<T, V, int64_t>(a, items, stream, host);
}

template <typename T>
const char* gather_typed(const sald_gc_gather_args& a, cudaStream_t stream, bool host) {
  const int V = static_cast<int>(16 / sizeof(T));
  if (vector_width<T>(a) == V) return run_gather_v<T, 16 / sizeof(T)>(a, stream, host);
  return run_gather_v<T, 1>(a, stream, host);
}

const char* gather_dispatch(sald_gc_dtype dtype, const sald_gc_gather_args* args, cudaStream_t stream, bool host) {
  const char* err = check_args(args);
  if (err != NULL) return err;
  if (args->B * args->N * args->J * args->C == 0) return NULL;
  switch (dtype) {
    case SALD_GC_F32: return gather_typed<float>(*args, stream, host);
    case SALD_GC_F16: return gather_typed<__half>(*args, stream, host);
    case SALD_GC_BF16: return gather_typed<__nv_bfloat16>(*args, stream, host);
    case SALD_GC_F64: return gather_typed<double>(*args, stream, host);
  }
  return "sald_gc_gather: unknown dtype";
}

}  // namespace

extern "C" {

const char* sald_gc_gather(sald_gc_dtype dtype, const sald_gc_gather_args* args, void* stream) {
  return gather_dispatch(dtype, args, static_cast<cudaStream_t>(stream), false);
}

const char* sald_gc_gather_host(sald_gc_dtype dtype, const sald_gc_gather_args* args) {
  return gather_dispatch(dtype, args, NULL, true);
}

int sald_gc_gather_vector_width(sald_gc_dtype dtype, const sald_gc_gather_args* args) {
  if (check_args(args) != NULL) return 0;
  switch (dtype) {
    case SALD_GC_F32: return vector_width<float>(*args);
    case SALD_GC_F16: return vector_width<__half>(*args);
    case SALD_GC_BF16: return vector_width<__nv_bfloat16>(*args);
    case SALD_GC_F64: return vector_width<double>(*args);
  }
  return 0;
}

const char* sald_gc_csr_transpose(const int64_t* rowptr, const int64_t* col, int64_t J, int64_t nnz,
                                  int64_t* t_rowptr, int64_t* t_col, int64_t* workspace, void* stream) {
  if (J < 0 || nnz < 0) return "sald_gc_csr_transpose: negative size";
  if (rowptr == NULL || t_rowptr == NULL || (nnz > 0 && (col == NULL || t_col == NULL)) || (J > 0 && workspace == NULL))
    return "sald_gc_csr_transpose: NULL pointer";
  csr_transpose_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(rowptr, col, J, nnz, t_rowptr, t_col, workspace);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? NULL : cudaGetErrorString(err);
}

const char* sald_gc_csr_transpose_host(const int64_t* rowptr, const int64_t* col, int64_t J, int64_t nnz,
                                       int64_t* t_rowptr, int64_t* t_col, int64_t* workspace) {
  if (J < 0 || nnz < 0) return "sald_gc_csr_transpose: negative size";
  if (rowptr == NULL || t_rowptr == NULL || (nnz > 0 && (col == NULL || t_col == NULL)) || (J > 0 && workspace == NULL))
    return "sald_gc_csr_transpose: NULL pointer";
  csr_transpose_body(rowptr, col, J, nnz, t_rowptr, t_col, workspace);
  return NULL;
}

}  // extern "C"
