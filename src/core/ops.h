// Dense fp32 kernels the model is built from, each a forward/backward pair. Backward functions
// ACCUMULATE (+=) into gradient outputs; a null gradient pointer skips that gradient.
#pragma once
#include <cstddef>

namespace mtp {

// y[T,out] = x[T,in] · w[out,in]^T   (torch Linear without bias); accumulate adds into y.
// linear_forward / linear_backward run in the process's matmul precision (core/gemm_bf16.h): fp32 sgemm, or bf16
// inputs with fp32 accumulation.
void linear_forward(float* y, const float* x, const float* w, int T, int in, int out, bool accumulate = false);
// dx[T,in] += dy[T,out] · w[out,in];  dw[out,in] += dy^T · x
void linear_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int T, int in, int out);

// While one is alive on a thread, the elementwise ops below (norms, RoPE, adds; not the cross-entropy) run on that
// thread alone, without an OpenMP fork. For decoding, whose passes are a few hundred rows at most and whose GEMVs have
// helper threads of their own: a fork there wakes libgomp's workers, which then spin (GOMP_SPINCOUNT) and take a core
// from the process's other threads (a server's slot and HTTP threads) for longer than the fork saved.
class serial_ops_scope {
public:
    serial_ops_scope();
    ~serial_ops_scope();
    serial_ops_scope(const serial_ops_scope&) = delete;
    serial_ops_scope& operator=(const serial_ops_scope&) = delete;
private:
    bool prev_;
};
// How many times the elementwise ops here have asked OpenMP for a team, on any thread (tests).
long long ops_fork_requests();

// y[T,n] = w[n] * x / sqrt(mean(x^2) + eps); rstd[T] saved for backward. y may alias x.
void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int T, int n, float eps);
// dx[T,n] += ..., dw[n] += ...   (x is the forward input)
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                      int T, int n);

// Interleaved RoPE, in place, on n_heads vectors of `rope` floats per row: row t, head h starts at
// x + t*ld + h*head_stride + offset. cos/sin are [T, rope/2] (row t already at that row's position).
void rope_forward(float* x, int T, int ld, int n_heads, int head_stride, int offset, int rope,
                  const float* cos, const float* sin);
// The transpose (inverse) rotation, applied in place to a gradient.
void rope_backward(float* dx, int T, int ld, int n_heads, int head_stride, int offset, int rope,
                   const float* cos, const float* sin);

// a[n] = silu(g) * u
void silu_mul_forward(float* a, const float* g, const float* u, size_t n);
// dg[n], du[n] = (overwritten) gradients of a = silu(g)*u
void silu_mul_backward(float* dg, float* du, const float* da, const float* g, const float* u, size_t n);

// Softmax cross-entropy over rows of logits[T,V] against targets[T] (target < 0: row ignored).
// Returns the SUM of the losses; when dlogits is non-null writes dlogits = scale * (softmax - onehot)
// (ignored rows get 0). dlogits may alias logits.
double cross_entropy(float* dlogits, const float* logits, const int* targets, int T, int V, float scale);

// Σ_i a_i·b[i] in double, a_i = a[i] (or float(w[i]·a[i]) when w is given), as 8 lane chains combined in a fixed
// order, then the tail: the same value for the same row wherever it sits.
double dot_double(const float* a, const float* b, int n, const float* w = nullptr);
void add_inplace(float* y, const float* x, size_t n);           // y += x
void scale_inplace(float* y, float s, size_t n);                // y *= s
// Rows by index: out[t, :] = table[idx[t], :] for t < T (the embedding lookup).
void gather_rows(float* out, const float* table, const int* idx, int T, int d);
// table[idx[t], :] += x[t, :] for t < T, each table row's additions in ascending t (the embedding gradient): the
// threads split the table's rows, not t, so the result is the serial loop's bit for bit.
void scatter_add_rows(float* table, const float* x, const int* idx, int T, int d);

} // namespace mtp
