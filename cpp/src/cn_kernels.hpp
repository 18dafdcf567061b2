// Private: the per-instruction-set block kernels behind quflow::cn_forward/cn_backward.
//
// cn_kernels.cpp is compiled once per ISA, each time inside its own namespace. To keep
// the copies from meeting at link time (one ISA's inline code standing in for another's)
// the kernel translation unit uses no Eigen, no allocation and no standard algorithms:
// only loops over the raw buffers described here. Allocation, threads and reductions
// live in crank_nicolson.cpp, compiled for the baseline ISA.
#pragma once

#include "quflow/crank_nicolson.hpp"

namespace quflow {

/// Constants of one call, shared by every block (plain view).
template <class T>
struct KernelShared {
  const System<T>* sys = nullptr;
  T h = 0;     // dt/2
  T he = 0;    // dt/(2·dx²)
  T two_e = 0; // 2/dx²
  // Pivots are formed scaled by c = 2^−k ≈ 1/max(1, he) (exact: a power of two), so that
  // |c·w_j|² stays finite up to he ~ 2^(max_exponent/2): c, c·h, c·he²
  T c = 1, ch = 0, ch2e2 = 0;
  bool constant = false;
  const T* shape = nullptr;   // (n) control shape, zeros without control
  const T* cinv_r = nullptr;  // (n) pivots 1/w_j of I + i·h·H for a constant H
  const T* cinv_i = nullptr;
  // Constant H only, per point j (scalars, broadcast over the lanes): the restructured
  // elimination v_j = α_j ψ_j + m_j (ψ_{j−1} + ψ_{j+1} + v_{j−1}) of M_{+1}, with
  // α_j = (1 − i·h·d_j)/w_j and m_j = i·he/w_j
  const T *alpha_r = nullptr, *alpha_i = nullptr, *m_r = nullptr, *m_i = nullptr;
  // The β form of the same elimination and the UL factorisation's multipliers (see
  // cn_kernels.cpp's header): β_j = −d_j/e (its imaginary part −1/he is ihe's), m'_j.
  // Null when he < 2^−20 (1/he would be large: the α form above is used instead).
  const T *beta = nullptr, *um_r = nullptr, *um_i = nullptr;
  T ihe = 0;  // 1/he
  const T* hshape = nullptr;  // (n) h · control shape, zeros without control
  const int* stop = nullptr;  // non-zero: abandon the call (read between steps, atomically)
  // forward mode and second order only (cn_jvp, cn_adjoint2):
  const Tangents<T>* tan = nullptr;
  const T* dshape = nullptr;  // (n) δW, zeros without one
};

/// One thread's workspace for blocks of W lanes (plain view).
///   pr, pi, qr, qi, gr, gi: (n+2)·W zero-padded state planes
///   fr, fi, base, gv, gw:   n·W
///   er, ei:                 n·W, the adjoint's elimination of g_{k+1} (second order: μ)
///   hbase:                  n·W, h·base
/// and, for forward mode and second order only (null otherwise):
///   sr, si, rr, ri, hr, hi: (n+2)·W tangent planes (δψ_{k+1}, δψ_k, its cotangent)
///   dbase, dd, tv, tw:      n·W (δV per lane, δd of a step, Σ ∂/∂δd, Σ ∂/∂δd·u_k)
///   ar, ai:                 n·W, the second-order adjoint's elimination for λ
template <class T>
struct KernelWork {
  T *pr, *pi, *qr, *qi, *gr, *gi, *fr, *fi, *base, *gv, *gw;
  T *hbase, *er, *ei;
  T *sr = nullptr, *si = nullptr, *rr = nullptr, *ri = nullptr, *hr = nullptr, *hi = nullptr;
  T *dbase = nullptr, *dd = nullptr, *tv = nullptr, *tw = nullptr;
  T *ar = nullptr, *ai = nullptr;
};

#define QUFLOW_DECLARE_KERNELS(ns)                                                           \
  namespace ns {                                                                             \
  template <class T, int W>                                                                  \
  void forward_block(const KernelShared<T>& sh, const KernelWork<T>& wk, Index b0,           \
                     Index lanes, const std::complex<T>* psi0, std::complex<T>* out,         \
                     bool trajectory);                                                       \
  template <class T, int W>                                                                  \
  void backward_block(const KernelShared<T>& sh, const KernelWork<T>& wk, Index b0,          \
                      Index lanes, const std::complex<T>* states, bool states_full,          \
                      const std::complex<T>* grad_out, bool grad_full,                       \
                      const Gradients<T>& grads, T* acc_v, T* acc_u, T* acc_w);              \
  template <class T, int W>                                                                  \
  void jvp_block(const KernelShared<T>& sh, const KernelWork<T>& wk, Index b0, Index lanes,  \
                 const std::complex<T>* psi0, std::complex<T>* out, std::complex<T>* tout,   \
                 bool trajectory);                                                           \
  template <class T, int W>                                                                  \
  void adjoint2_block(const KernelShared<T>& sh, const KernelWork<T>& wk, Index b0,          \
                      Index lanes, const std::complex<T>* states,                            \
                      const std::complex<T>* tstates, const std::complex<T>* grad_out,       \
                      const std::complex<T>* tgrad_out, bool grad_full,                      \
                      const Gradients<T>& grads, const Gradients<T>& tgrads, T* const* acc); \
  }

QUFLOW_DECLARE_KERNELS(isa_baseline)
QUFLOW_DECLARE_KERNELS(isa_avx2)

#undef QUFLOW_DECLARE_KERNELS

/// Lane widths (states per block). kNarrowLanes fill one 32-byte AVX2 register (4 doubles,
/// 8 floats); kWideLanes are two registers: two independent dependency chains per grid
/// point, which hides the latency of the Thomas recurrences (forward steps and the adjoint
/// with a control: ~1.3–1.9× faster; the adjoint of a constant Hamiltonian 1.15× in
/// double, 1.3–1.5× in float), at the price of register pressure (the second-order
/// adjoint keeps kNarrowLanes). The constant-H forward's one-pass sweep (beta_pass) also
/// runs on two registers: four (its former width) hold twice the planes, which outgrow L1
/// and L2 sooner, and spill its recurrences. Measured with `make bench-cpp`.
template <class T>
constexpr int kNarrowLanes = 4 * int(sizeof(double) / sizeof(T));
template <class T>
constexpr int kWideLanes = 2 * kNarrowLanes<T>;

}  // namespace quflow
