/* C interface of the CUDA kernels of the sparse skeletal graph convolution.
 *
 * Plain C (no torch, no CUDA headers needed by the caller): pointers are void*, the stream is a
 * cudaStream_t passed as void*. Every launcher returns NULL on success or a static error message
 * (a bad argument, or the CUDA error string of the launch).
 *
 * The kernels are CSR gathers over the joint axis of (frames, J, C) tensors; the linear maps of
 * the graph convolution run in cuBLAS (see csrc/binding.cpp). Supported dtypes: fp32, fp16, bf16
 * (fp32 accumulation) and fp64. Each kernel's per-element body is __host__ __device__ and has a
 * serial host twin (the *_host launchers), so the CUDA index math is tested on machines without a
 * GPU (tests/test_nvcc.py).
 */
#ifndef SALD_FAST_GRAPH_CONV_CUDA_H_
#define SALD_FAST_GRAPH_CONV_CUDA_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  SALD_GC_F32 = 0,
  SALD_GC_F16 = 1,
  SALD_GC_BF16 = 2,
  SALD_GC_F64 = 3
} sald_gc_dtype;

/* One CSR gather over the joints of every frame:
 *
 *   out[r, out_col + c] = (self_in ? self_in[r * self_ld + c] : 0)
 *                         + sum_{e in rowptr[j] .. rowptr[j+1]) w(e) * in(frame, col[e], c)
 *   out[r, copy_col + c] = in(frame, j, c)                      (only when copy_col >= 0)
 *
 * for r = frame * J + j, frame = b * N + n, c < C. in(frame, j, c) = in[b*in_sb + n*in_sn +
 * j*in_sj + c] (unit channel stride). w(e) = 1 / (degptr[k+1] - degptr[k]) with k = j
 * (transposed == 0: the row mean, degptr = rowptr) or k = col[e] (transposed == 1: rowptr/col is
 * the transposed CSR, degptr the original indptr, so the sum is A^T in). out rows are out_ld
 * apart; in, self_in and out have the same dtype. A row whose CSR entries are out of range
 * ([0, nnz] for rowptr, [0, J) for col) gets NaN instead of an out-of-bounds read. */
typedef struct {
  const void* in;
  int64_t in_sb, in_sn, in_sj;
  const void* self_in;
  int64_t self_ld;
  void* out;
  int64_t out_ld, out_col, copy_col;
  const int64_t* rowptr;
  const int64_t* col;
  const int64_t* degptr;
  int transposed;
  int64_t B, N, J, C, nnz;
} sald_gc_gather_args;

/* Launch the gather on `stream` (a cudaStream_t; NULL for the default stream). */
const char* sald_gc_gather(sald_gc_dtype dtype, const sald_gc_gather_args* args, void* stream);

/* Transpose a CSR pattern on the device (one thread; J and nnz are small):
 * t_rowptr (J+1), t_col (nnz): row j of the transpose lists the rows i with j in row i,
 * ascending. workspace: J int64. Entries of col outside [0, J) are dropped. */
const char* sald_gc_csr_transpose(const int64_t* rowptr, const int64_t* col, int64_t J, int64_t nnz,
                                  int64_t* t_rowptr, int64_t* t_col, int64_t* workspace, void* stream);

/* Serial host twins of the two launchers above (same bodies, host pointers), for tests. */
const char* sald_gc_gather_host(sald_gc_dtype dtype, const sald_gc_gather_args* args);
const char* sald_gc_csr_transpose_host(const int64_t* rowptr, const int64_t* col, int64_t J, int64_t nnz,
                                       int64_t* t_rowptr, int64_t* t_col, int64_t* workspace);

/* The vector width (elements per thread) the gather would use for these arguments: 16 bytes
 * when every pointer, stride and column offset allows it, else 1. Exposed for tests. */
int sald_gc_gather_vector_width(sald_gc_dtype dtype, const sald_gc_gather_args* args);

#ifdef __cplusplus
}
#endif

#endif /* SALD_FAST_GRAPH_CONV_CUDA_H_ */
