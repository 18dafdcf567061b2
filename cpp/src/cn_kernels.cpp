// Crank–Nicolson kernels. Compiled once per instruction set, each time with
// -DQUFLOW_ISA_NS=<namespace> and that ISA's flags (see CMakeLists.txt).
//
// Layout: the batch is cut into blocks of W lanes (W states). Inside a block a state
// lives "point-major, lane-minor" in split real/imaginary planes, re[(j+1)*W + l] for
// point j and lane l, with a zero row above and below (j = −1 and j = n), so that every
// loop over l is a straight SIMD loop and the tridiagonal recurrences over j never branch.
//
// Notation (h = dt/2, e = 1/dx², d_j = 2e + V_j + u_k·W_j is the diagonal of H_k):
//   M_σ = I + iσh·H_k,  σ = ±1;   (H ψ)_j = d_j ψ_j − e (ψ_{j−1} + ψ_{j+1})
//   forward step   ψ_{k+1} = M_{+1}⁻¹ M_{−1} ψ_k
//   adjoint step   λ = M_{−1}⁻¹ g_{k+1},  g_k = M_{+1} λ,
//                  ∂L/∂d_j (step k) = h · Im(conj(λ_j) (ψ_k + ψ_{k+1})_j)
//   reverse rebuild ψ_k = M_{−1}⁻¹ M_{+1} ψ_{k+1}
// M_σ is complex symmetric with Hermitian part I, so the Thomas algorithm without
// pivoting is stable: every pivot has Re w_j ≥ 1.
#include "cn_kernels.hpp"

#ifndef QUFLOW_ISA_NS
#error "compile cn_kernels.cpp with -DQUFLOW_ISA_NS=<namespace>"
#endif

namespace quflow {
namespace QUFLOW_ISA_NS {
namespace {

template <class T>
void zero(T* p, Index count) {
  for (Index i = 0; i < count; ++i) p[i] = T(0);
}

/// Steps on one block of W lanes, over a thread's workspace.
template <class T, int W>
class Block {
 public:
  Block(const KernelShared<T>& sh, const KernelWork<T>& wk, Index b0, Index lanes)
      : sh_(sh), sys_(*sh.sys), n_(sys_.n), b0_(b0), lanes_(lanes),
        pr_(wk.pr), pi_(wk.pi), qr_(wk.qr), qi_(wk.qi), gr_(wk.gr), gi_(wk.gi),
        fr_(wk.fr), fi_(wk.fi), base_(wk.base) {
    // lanes past `lanes` are zero states with V = 0, u = 0: they stay zero
    for (int l = 0; l < W; ++l) {
      const bool real = l < lanes_;
      const T* v = sys_.potential + (sys_.potential_rows == 1 || !real ? 0 : (b0_ + l) * n_);
      for (Index j = 0; j < n_; ++j) base_[j * W + l] = sh_.two_e + (real ? v[j] : T(0));
      u_[l] = T(0);
    }
    for (T* plane : {pr_, pi_, qr_, qi_, gr_, gi_}) zero(plane, (n_ + 2) * W);
  }

  /// u[l] = control value of step k for each lane.
  void set_control(Index k) {
    if (sys_.control_rows == 0) return;
    for (int l = 0; l < W; ++l) {
      const Index row = sys_.control_rows == 1 ? 0 : b0_ + l;
      u_[l] = l < lanes_ ? sys_.control[row * sys_.steps + k] : T(0);
    }
  }

  // ---- state transfer: rows b0… of a (batch, stride) complex array, at column offset ----
  enum class Buf { P, Q, G };

  void load(Buf which, const std::complex<T>* src, Index stride, Index offset) {
    T* re = plane_re(which) + W;
    T* im = plane_im(which) + W;
    for (Index l = 0; l < lanes_; ++l) {
      const std::complex<T>* row = src + (b0_ + l) * stride + offset;
      for (Index j = 0; j < n_; ++j) {
        re[j * W + l] = row[j].real();
        im[j * W + l] = row[j].imag();
      }
    }
  }

  void store(Buf which, std::complex<T>* dst, Index stride, Index offset) const {
    const T* re = plane_re(which) + W;
    const T* im = plane_im(which) + W;
    for (Index l = 0; l < lanes_; ++l) {
      std::complex<T>* row = dst + (b0_ + l) * stride + offset;
      for (Index j = 0; j < n_; ++j) row[j] = std::complex<T>(re[j * W + l], im[j * W + l]);
    }
  }

  void add(Buf which, const std::complex<T>* src, Index stride, Index offset) {
    T* re = plane_re(which) + W;
    T* im = plane_im(which) + W;
    for (Index l = 0; l < lanes_; ++l) {
      const std::complex<T>* row = src + (b0_ + l) * stride + offset;
      for (Index j = 0; j < n_; ++j) {
        re[j * W + l] += row[j].real();
        im[j * W + l] += row[j].imag();
      }
    }
  }

  void swap_pq() {
    T* t = pr_;
    pr_ = qr_;
    qr_ = t;
    t = pi_;
    pi_ = qi_;
    qi_ = t;
  }

  /// P ← M_{+1}⁻¹ M_{−1} P (one forward step, in place).
  template <bool kConst>
  void forward_step() {
    const T h = sh_.h, he = sh_.he, h2e2 = sh_.h2e2;
    T* __restrict pr = pr_ + W;
    T* __restrict pi = pi_ + W;
    T* __restrict fr = fr_;
    T* __restrict fi = fi_;
    const T* __restrict base = base_;
    const T* __restrict shape = sh_.shape;
    alignas(64) T op_r[W] = {}, op_i[W] = {};  // old ψ_{j−1}
    alignas(64) T vp_r[W] = {}, vp_i[W] = {};  // v_{j−1} = y_{j−1}/w_{j−1}
    alignas(64) T wp_r[W] = {}, wp_i[W] = {};  // 1/w_{j−1}
    // forward elimination, j = 0 … n−1: r = M_{−1}ψ, y = r + i·he·v_{j−1}, v = y/w_j
    for (Index j = 0; j < n_; ++j) {
      T* cr = pr + j * W;
      T* ci = pi + j * W;
      const T cbase = kConst ? sh_.cbase[j] : T(0);
      const T ciwr = kConst ? sh_.cinv_r[j] : T(0);
      const T ciwi = kConst ? sh_.cinv_i[j] : T(0);
      const T sj = shape[j];
      for (int l = 0; l < W; ++l) {
        const T d = kConst ? cbase : base[j * W + l] + u_[l] * sj;
        const T xr = cr[l], xi = ci[l];
        const T sr = op_r[l] + cr[W + l], si = op_i[l] + ci[W + l];
        const T rr = xr + h * d * xi - he * si;
        const T ri = xi - h * d * xr + he * sr;
        const T yr = rr - he * vp_i[l];
        const T yi = ri + he * vp_r[l];
        T iwr, iwi;
        if constexpr (kConst) {
          iwr = ciwr;
          iwi = ciwi;
        } else {
          const T wr = T(1) + h2e2 * wp_r[l];
          const T wi = h * d + h2e2 * wp_i[l];
          const T den = wr * wr + wi * wi;
          iwr = wr / den;
          iwi = -wi / den;
          wp_r[l] = iwr;
          wp_i[l] = iwi;
          fr[j * W + l] = iwr;
          fi[j * W + l] = iwi;
        }
        const T vr = iwr * yr - iwi * yi;
        const T vi = iwr * yi + iwi * yr;
        op_r[l] = xr;
        op_i[l] = xi;
        vp_r[l] = vr;
        vp_i[l] = vi;
        cr[l] = vr;
        ci[l] = vi;
      }
    }
    // back substitution, j = n−2 … 0: x_j = v_j + i·he·(x_{j+1}/w_j)
    for (Index j = n_ - 2; j >= 0; --j) {
      T* cr = pr + j * W;
      T* ci = pi + j * W;
      for (int l = 0; l < W; ++l) {
        const T iwr = kConst ? sh_.cinv_r[j] : fr[j * W + l];
        const T iwi = kConst ? sh_.cinv_i[j] : fi[j * W + l];
        const T tr = iwr * cr[W + l] - iwi * ci[W + l];
        const T ti = iwr * ci[W + l] + iwi * cr[W + l];
        cr[l] -= he * ti;
        ci[l] += he * tr;
      }
    }
  }

  /// One adjoint step k. On entry P = ψ_{k+1}, G = g_{k+1}, and Q = ψ_k when !kRebuild.
  /// On exit Q = ψ_k, G = g_k, and ∂L/∂d (this step) has been added to the accumulators:
  /// gv (n·W) += ∂L/∂d,  gw (n·W) += ∂L/∂d · u_k,  du (W) = Σ_j ∂L/∂d_j · W_j.
  template <bool kConst, bool kRebuild>
  void adjoint_step(T* gv, T* gw, T* du) {
    const T h = sh_.h, he = sh_.he, h2e2 = sh_.h2e2, e = sh_.two_e / T(2);
    const T* __restrict pr = pr_ + W;
    const T* __restrict pi = pi_ + W;
    T* __restrict qr = qr_ + W;
    T* __restrict qi = qi_ + W;
    T* __restrict gr = gr_ + W;
    T* __restrict gi = gi_ + W;
    T* __restrict fr = fr_;
    T* __restrict fi = fi_;
    const T* __restrict base = base_;
    const T* __restrict shape = sh_.shape;

    // pass 1, j = 0 … n−1: factor M_{−1} (pivots 1/w̃_j = conj of M_{+1}'s) and eliminate
    // the right-hand sides g_{k+1} and (when rebuilding) M_{+1} ψ_{k+1}.
    {
      alignas(64) T wp_r[W] = {}, wp_i[W] = {};
      alignas(64) T vg_r[W] = {}, vg_i[W] = {};
      alignas(64) T vq_r[W] = {}, vq_i[W] = {};
      for (Index j = 0; j < n_; ++j) {
        const T sj = shape[j];
        for (int l = 0; l < W; ++l) {
          const Index a = j * W + l;
          const T d = kConst ? sh_.cbase[j] : base[a] + u_[l] * sj;
          T iwr, iwi;
          if constexpr (kConst) {
            iwr = sh_.cinv_r[j];
            iwi = -sh_.cinv_i[j];
          } else {
            const T wr = T(1) + h2e2 * wp_r[l];
            const T wi = -h * d + h2e2 * wp_i[l];
            const T den = wr * wr + wi * wi;
            iwr = wr / den;
            iwi = -wi / den;
            wp_r[l] = iwr;
            wp_i[l] = iwi;
            fr[a] = iwr;
            fi[a] = iwi;
          }
          {  // g: y = g + (−i·he)·v_{j−1}
            const T yr = gr[a] + he * vg_i[l];
            const T yi = gi[a] - he * vg_r[l];
            const T vr = iwr * yr - iwi * yi;
            const T vi = iwr * yi + iwi * yr;
            vg_r[l] = vr;
            vg_i[l] = vi;
            gr[a] = vr;
            gi[a] = vi;
          }
          if constexpr (kRebuild) {  // q = M_{+1} ψ_{k+1}, then the same elimination
            const T xr = pr[a], xi = pi[a];
            const T sr = pr[a - W] + pr[a + W], si = pi[a - W] + pi[a + W];
            const T rr = xr - h * d * xi + he * si;
            const T ri = xi + h * d * xr - he * sr;
            const T yr = rr + he * vq_i[l];
            const T yi = ri - he * vq_r[l];
            const T vr = iwr * yr - iwi * yi;
            const T vi = iwr * yi + iwi * yr;
            vq_r[l] = vr;
            vq_i[l] = vi;
            qr[a] = vr;
            qi[a] = vi;
          }
        }
      }
    }

    // pass 2, j = n−1 … 0: back substitution x_j = v_j − i·he·(x_{j+1}/w̃_j) gives λ_j (and
    // ψ_k[j]); then ∂L/∂d_j, and g_k[j+1] = (M_{+1} λ)_{j+1} from λ_j, λ_{j+1}, λ_{j+2}.
    alignas(64) T l1_r[W] = {}, l1_i[W] = {};  // λ_{j+1}
    alignas(64) T l2_r[W] = {}, l2_i[W] = {};  // λ_{j+2}
    alignas(64) T d1[W] = {};                  // d_{j+1}
    for (Index j = n_ - 1; j >= 0; --j) {
      const T sj = shape[j];
      for (int l = 0; l < W; ++l) {
        const Index a = j * W + l;
        const T d = kConst ? sh_.cbase[j] : base[a] + u_[l] * sj;
        const T iwr = kConst ? sh_.cinv_r[j] : fr[a];
        const T iwi = kConst ? -sh_.cinv_i[j] : fi[a];
        // λ_j
        const T tr = iwr * l1_r[l] - iwi * l1_i[l];
        const T ti = iwr * l1_i[l] + iwi * l1_r[l];
        const T lr = gr[a] + he * ti;
        const T li = gi[a] - he * tr;
        if constexpr (kRebuild) {
          const T xr = qr[a + W], xi = qi[a + W];
          const T ur = iwr * xr - iwi * xi;
          const T ui = iwr * xi + iwi * xr;
          qr[a] += he * ui;
          qi[a] -= he * ur;
        }
        // ∂L/∂d_j = h·Im(conj(λ_j)·(ψ_k + ψ_{k+1})_j)
        const T sr = qr[a] + pr[a], si = qi[a] + pi[a];
        const T gd = h * (lr * si - li * sr);
        gv[a] += gd;
        gw[a] += gd * u_[l];
        du[l] += gd * sj;
        // g_k[j+1] = λ_{j+1} + i·h·(d_{j+1} λ_{j+1} − e (λ_j + λ_{j+2})); row n is padding
        const T nr = lr + l2_r[l], ni = li + l2_i[l];
        gr[a + W] = l1_r[l] - h * (d1[l] * l1_i[l] - e * ni);
        gi[a + W] = l1_i[l] + h * (d1[l] * l1_r[l] - e * nr);
        l2_r[l] = l1_r[l];
        l2_i[l] = l1_i[l];
        l1_r[l] = lr;
        l1_i[l] = li;
        d1[l] = d;
      }
    }
    for (int l = 0; l < W; ++l) {  // g_k[0] from λ_0, λ_1 (λ_{−1} = 0)
      gr[l] = l1_r[l] - h * (d1[l] * l1_i[l] - e * l2_i[l]);
      gi[l] = l1_i[l] + h * (d1[l] * l1_r[l] - e * l2_r[l]);
    }
    // the padding row n was written above with a meaningless value: clear it
    zero(gr + n_ * W, W);
    zero(gi + n_ * W, W);
  }


 private:
  T* plane_re(Buf b) const { return b == Buf::P ? pr_ : b == Buf::Q ? qr_ : gr_; }
  T* plane_im(Buf b) const { return b == Buf::P ? pi_ : b == Buf::Q ? qi_ : gi_; }

  const KernelShared<T>& sh_;
  const System<T>& sys_;
  Index n_, b0_, lanes_;
  T *pr_, *pi_, *qr_, *qi_, *gr_, *gi_;  // (n+2)·W padded state planes
  T *fr_, *fi_;                          // n·W per-lane pivots 1/w_j
  T* base_;                              // n·W: 2e + V_j per lane
  alignas(64) T u_[W];
};

}  // namespace

template <class T, int W>
void forward_block(const KernelShared<T>& sh, const KernelWork<T>& wk, Index b0, Index lanes,
                   const std::complex<T>* psi0, std::complex<T>* out, bool trajectory) {
  using B = Block<T, W>;
  const Index n = sh.sys->n, steps = sh.sys->steps;
  const Index stride = trajectory ? (steps + 1) * n : n;
  B blk(sh, wk, b0, lanes);
  blk.load(B::Buf::P, psi0, n, 0);
  if (trajectory) blk.store(B::Buf::P, out, stride, 0);
  for (Index k = 0; k < steps; ++k) {
    if (sh.constant) {
      blk.template forward_step<true>();
    } else {
      blk.set_control(k);
      blk.template forward_step<false>();
    }
    if (trajectory) blk.store(B::Buf::P, out, stride, (k + 1) * n);
  }
  if (!trajectory) blk.store(B::Buf::P, out, stride, 0);
}

template <class T, int W>
void backward_block(const KernelShared<T>& sh, const KernelWork<T>& wk, Index b0, Index lanes,
                    const std::complex<T>* states, bool states_full,
                    const std::complex<T>* grad_out, bool grad_full, const Gradients<T>& grads,
                    T* acc_v, T* acc_u, T* acc_w) {
  using B = Block<T, W>;
  const System<T>& sys = *sh.sys;
  const Index n = sys.n, steps = sys.steps;
  const Index sstride = states_full ? (steps + 1) * n : n;
  const Index gstride = grad_full ? (steps + 1) * n : n;
  B blk(sh, wk, b0, lanes);
  T* gv = wk.gv;  // Σ_k ∂L/∂d per lane
  T* gw = wk.gw;  // Σ_k ∂L/∂d · u_k per lane
  zero(gv, n * W);
  zero(gw, n * W);
  alignas(64) T du[W];
  blk.load(B::Buf::P, states, sstride, states_full ? steps * n : 0);
  blk.load(B::Buf::G, grad_out, gstride, grad_full ? steps * n : 0);
  for (Index k = steps - 1; k >= 0; --k) {  // adjoint sweep k = T−1 … 0
    zero(du, W);
    blk.set_control(k);
    if (states_full) {
      blk.load(B::Buf::Q, states, sstride, k * n);
      if (sh.constant) blk.template adjoint_step<true, false>(gv, gw, du);
      else blk.template adjoint_step<false, false>(gv, gw, du);
    } else {
      if (sh.constant) blk.template adjoint_step<true, true>(gv, gw, du);
      else blk.template adjoint_step<false, true>(gv, gw, du);
    }
    if (grads.control) {
      for (Index l = 0; l < lanes; ++l) {
        if (sys.control_rows == 1) acc_u[k] += du[l];
        else grads.control[(b0 + l) * steps + k] = du[l];
      }
    }
    if (grad_full) blk.add(B::Buf::G, grad_out, gstride, k * n);
    blk.swap_pq();
  }
  if (grads.psi0) blk.store(B::Buf::G, grads.psi0, n, 0);
  for (Index l = 0; l < lanes; ++l) {
    for (Index j = 0; j < n; ++j) {
      if (grads.potential) {
        if (sys.potential_rows == 1) acc_v[j] += gv[j * W + l];
        else grads.potential[(b0 + l) * n + j] = gv[j * W + l];
      }
      if (grads.control_shape) acc_w[j] += gw[j * W + l];
    }
  }
}

#define QUFLOW_INSTANTIATE(T, W)                                                              \
  template void forward_block<T, W>(const KernelShared<T>&, const KernelWork<T>&, Index, Index, \
                                    const std::complex<T>*, std::complex<T>*, bool);            \
  template void backward_block<T, W>(const KernelShared<T>&, const KernelWork<T>&, Index,       \
                                     Index, const std::complex<T>*, bool,                       \
                                     const std::complex<T>*, bool, const Gradients<T>&, T*, T*, \
                                     T*);
QUFLOW_INSTANTIATE(float, 1)
QUFLOW_INSTANTIATE(float, kWideLanes<float>)
QUFLOW_INSTANTIATE(double, 1)
QUFLOW_INSTANTIATE(double, kWideLanes<double>)
#undef QUFLOW_INSTANTIATE

}  // namespace QUFLOW_ISA_NS
}  // namespace quflow
