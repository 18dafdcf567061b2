// Crank–Nicolson block kernels. Compiled once per instruction set, each time with
// -DQUFLOW_ISA_NS=<namespace> and that ISA's flags (see CMakeLists.txt).
//
// Layout: the batch is cut into blocks of W lanes (W states). Inside a block a state is
// an array of lane vectors V (W values of T, GCC/Clang vector extensions) over the
// points, in split real/imaginary planes, with a zero vector above and below
// (re[0] and re[n+1]; point j is re[j+1]). Every arithmetic line below therefore acts on
// W states at once, and the tridiagonal recurrences over j never branch.
//
// Notation (h = dt/2, e = 1/dx², d_j = 2e + V_j + u_k·W_j is the diagonal of H_k):
//   M_σ = I + iσh·H_k,  σ = ±1;   (H ψ)_j = d_j ψ_j − e (ψ_{j−1} + ψ_{j+1})
//   forward step    ψ_{k+1} = M_{+1}⁻¹ M_{−1} ψ_k
//   adjoint step    λ = M_{−1}⁻¹ g_{k+1},   g_k = M_{+1} λ,
//                   ∂L/∂d_j (step k) = h · Im(conj(λ_j) (ψ_k + ψ_{k+1})_j)
//   reverse rebuild ψ_k = M_{−1}⁻¹ M_{+1} ψ_{k+1}
//   (the adjoints form both through M_{+1} = 2I − M_{−1}: see adjoint_step)
// Thomas algorithm for M_σ (diagonal a_j = 1 + iσh·d_j, off-diagonal c = −iσ·he):
//   w_0 = a_0,  w_j = a_j + he²/w_{j−1}            (pivots; Re w_j ≥ 1, so no pivoting)
//   m_j = iσ·he / w_j
//   v_j = r_j / w_j + m_j v_{j−1}                  (forward elimination, j = 0 … n−1)
//   x_j = v_j + m_j x_{j+1}                        (back substitution, j = n−2 … 0)
// M_σ is complex symmetric with Hermitian part I, hence the stability of the pivots.
//
// The forward step of a constant H (forward_block → beta_pass) eliminates in the β form
//   v_j = m_j (β_j ψ_j + ψ_{j−1} + ψ_{j+1} + v_{j−1}),   β_j = (1 − i·h·d_j)/(i·he)
//                                                          = −d_j/e − i/he,
// i.e. r_j/w_j + m_j v_{j−1} with r = M_{−1} ψ (m_j β_j = (1 − i·h·d_j)/w_j): three
// scalars per point (β_j real, m_j) and the constant 1/he. Steps alternate the LU
// factorisation above (even steps) with the UL one of the same M_{+1} (odd steps:
//   w'_{n−1} = a_{n−1}, w'_j = a_j + he²/w'_{j+1}, m'_j = i·he/w'_j,
//   v'_j = m'_j (β_j ψ_j + ψ_{j−1} + ψ_{j+1} + v'_{j+1})   (j = n−1 … 0),
//   x_0 = v'_0, x_j = v'_j + m'_j x_{j−1}                  (j = 1 … n−1)),
// so a step's back substitution runs the way the next step's elimination does, and the two
// share one sweep over the planes, the elimination a point behind: one pass per step.
// Where 1/he would be large (he < 2^−20, or a state within 1/he of its type's overflow;
// cn_forward decides, KernelShared::beta is then null) the two-sweep α form
// (forward_step_const) runs instead.
#include "cn_kernels.hpp"

#include <type_traits>

#ifndef QUFLOW_ISA_NS
#error "compile cn_kernels.cpp with -DQUFLOW_ISA_NS=<namespace>"
#endif

namespace quflow {
namespace QUFLOW_ISA_NS {
namespace {

/// The per-point helpers below sit inside the sweeps' loops: a call per point (GCC stops
/// inlining them once a kernel grows) costs the control adjoint 15–20 %.
#define QUFLOW_INLINE __attribute__((always_inline)) inline

template <class T, int W>
struct LaneVector {
  typedef T type __attribute__((vector_size(W * sizeof(T))));
};

/// Bytes of one SIMD register of this translation unit's instruction set.
#if defined(__AVX__)
constexpr int kRegisterBytes = 32;
#else
constexpr int kRegisterBytes = 16;
#endif

/// K native registers acting as one lane vector of K·N values. Wider generic vectors are
/// split by the compiler with poor scheduling; an explicit pack keeps K independent
/// dependency chains in registers, which hides the latency of the Thomas recurrences.
template <class T, int N, int K>
struct Pack {
  using R = typename LaneVector<T, N>::type;
  R v[K];  // no union with a scalar view: copies must stay register moves

  Pack() = default;
  // Member-wise copies: an implicit struct copy is lowered to 16-byte moves, and the
  // 32-byte loads that follow then miss store forwarding (measured 2× slower).
  Pack(const Pack& o) {
    for (int c = 0; c < K; ++c) v[c] = o.v[c];
  }
  Pack& operator=(const Pack& o) {
    for (int c = 0; c < K; ++c) v[c] = o.v[c];
    return *this;
  }
  T operator[](int l) const { return v[l / N][l % N]; }
  void set(int l, T x) { v[l / N][l % N] = x; }

#define QUFLOW_PACK_OP(op)                                                            \
  friend Pack operator op(const Pack& a, const Pack& b) {                             \
    Pack r;                                                                           \
    for (int c = 0; c < K; ++c) r.v[c] = a.v[c] op b.v[c];                            \
    return r;                                                                         \
  }                                                                                   \
  friend Pack operator op(const Pack& a, T b) {                                       \
    Pack r;                                                                           \
    for (int c = 0; c < K; ++c) r.v[c] = a.v[c] op b;                                 \
    return r;                                                                         \
  }                                                                                   \
  friend Pack operator op(T a, const Pack& b) {                                       \
    Pack r;                                                                           \
    for (int c = 0; c < K; ++c) r.v[c] = a op b.v[c];                                 \
    return r;                                                                         \
  }                                                                                   \
  Pack& operator op##=(const Pack& b) {                                               \
    for (int c = 0; c < K; ++c) v[c] = v[c] op b.v[c];                                \
    return *this;                                                                     \
  }
  QUFLOW_PACK_OP(+)
  QUFLOW_PACK_OP(-)
  QUFLOW_PACK_OP(*)
  QUFLOW_PACK_OP(/)
#undef QUFLOW_PACK_OP
  friend Pack operator-(const Pack& a) {
    Pack r;
    for (int c = 0; c < K; ++c) r.v[c] = -a.v[c];
    return r;
  }
};

template <class R>
void set_lane(R& x, int l, decltype(x[0] + 0) value) {
  x[l] = value;
}
template <class T, int N, int K>
void set_lane(Pack<T, N, K>& x, int l, T value) {
  x.set(l, value);
}

/// W lanes: one native vector when they fit a register, else a Pack of registers.
template <class T, int W, bool kFits = (W * int(sizeof(T)) <= kRegisterBytes)>
struct Lanes {
  using type = typename LaneVector<T, W>::type;
};
template <class T, int W>
struct Lanes<T, W, false> {
  static constexpr int kN = kRegisterBytes / int(sizeof(T));
  using type = Pack<T, kN, W / kN>;
};

/// The kernels of one block of W lanes, over a thread's workspace.
template <class T, int W>
class Block {
 public:
  using V = typename Lanes<T, W>::type;
  static_assert(sizeof(V) == W * sizeof(T), "lane vector size");

  /// constant_forward: for forward_block with a constant H, which reads only P and Q
  /// (written at every point by load() and the sweeps) and the shared tables: only the
  /// planes' zero padding is set, not the per-lane diagonal and pivots (a short call's
  /// setup was ~10 % of its time at n = 256).
  Block(const KernelShared<T>& sh, const KernelWork<T>& wk, Index b0, Index lanes,
        bool constant_forward = false)
      : sh_(sh), sys_(*sh.sys), n_(sys_.n), b0_(b0), lanes_(lanes),
        pr_(as_v(wk.pr)), pi_(as_v(wk.pi)), qr_(as_v(wk.qr)), qi_(as_v(wk.qi)),
        gr_(as_v(wk.gr)), gi_(as_v(wk.gi)), fr_(as_v(wk.fr)), fi_(as_v(wk.fi)),
        base_(as_v(wk.base)), hbase_(as_v(wk.hbase)), sr_(as_v(wk.sr)), si_(as_v(wk.si)),
        rr_(as_v(wk.rr)), ri_(as_v(wk.ri)), hr_(as_v(wk.hr)), hi_(as_v(wk.hi)),
        dbase_(as_v(wk.dbase)), dd_(as_v(wk.dd)), er_(as_v(wk.er)), ei_(as_v(wk.ei)),
        ar_(as_v(wk.ar)), ai_(as_v(wk.ai)) {
    const V zero = {};
    u_ = du_ = zero;
    if (constant_forward) {
      for (V* plane : {pr_, pi_, qr_, qi_}) plane[0] = plane[n_ + 1] = zero;
      return;
    }
    for (V* plane : {pr_, pi_, qr_, qi_, gr_, gi_})
      for (Index j = 0; j < n_ + 2; ++j) plane[j] = zero;
    if (sh_.tan) {  // forward mode / second order: tangent planes and δV per lane
      for (V* plane : {sr_, si_, rr_, ri_, hr_, hi_})
        for (Index j = 0; j < n_ + 2; ++j) plane[j] = zero;
      const Tangents<T>& tan = *sh_.tan;
      for (Index j = 0; j < n_; ++j) dbase_[j] = zero;
      if (tan.potential) {
        for (Index l = 0; l < lanes_; ++l) {
          const T* dv = tan.potential + (tan.potential_rows == 1 ? 0 : (b0_ + l) * n_);
          for (Index j = 0; j < n_; ++j) set_lane(dbase_[j], l, dv[j]);
        }
      }
    }
    // lanes past `lanes` are zero states with V = 0 and u = 0: they stay zero
    for (Index j = 0; j < n_; ++j) base_[j] = zero + sh_.two_e;
    for (Index l = 0; l < lanes_; ++l) {
      const T* v = sys_.potential + (sys_.potential_rows == 1 ? 0 : (b0_ + l) * n_);
      for (Index j = 0; j < n_; ++j) set_lane(base_[j], l, base_[j][l] + v[j]);
    }
    for (Index j = 0; j < n_; ++j) hbase_[j] = sh_.h * base_[j];
    if (sh_.constant) {  // the pivots of M_{+1}, once for every step of this block
      for (Index j = 0; j < n_; ++j) {
        fr_[j] = zero + sh_.cinv_r[j];
        fi_[j] = zero + sh_.cinv_i[j];
      }
    }
  }

  static V* as_v(T* p) { return reinterpret_cast<V*>(p); }

  /// x in every lane: x − 0 = x exactly (−0 included), which compiles to one broadcast.
  static V splat(T x) { return x - V{}; }

  /// u[l] = control value of step k in each lane.
  void set_control(Index k) {
    if (sys_.control_rows == 0) return;
    for (Index l = 0; l < lanes_; ++l) {
      const Index row = sys_.control_rows == 1 ? 0 : b0_ + l;
      set_lane(u_, l, sys_.control[row * sys_.steps + k]);
    }
  }

  /// du[l] = the control's direction δu of step k in each lane (zero without one).
  void set_tangent_control(Index k) {
    const Tangents<T>& tan = *sh_.tan;
    if (!tan.control) return;
    for (Index l = 0; l < lanes_; ++l) {
      const Index row = tan.control_rows == 1 ? 0 : b0_ + l;
      set_lane(du_, l, tan.control[row * sys_.steps + k]);
    }
  }

  /// δd_j = δV_j + δu_k·W_j + u_k·δW_j, the diagonal of δH_k, in every lane.
  V tangent_diag(Index j) const { return dbase_[j] + du_ * sh_.shape[j] + u_ * sh_.dshape[j]; }

  // ---- state transfer: rows b0… of a (batch, stride) complex array, at column offset ----
  // Lane vectors are assembled in registers point by point (a W × n transpose); lanes past
  // `lanes` read a zero row.
  enum class Buf { P, Q, G, S, R, H };  // S, R, H: δψ_{k+1}, δψ_k and δψ's cotangent

  template <bool kAdd>
  void gather(Buf which, const std::complex<T>* src, Index stride, Index offset) {
    V* re = plane_re(which) + 1;
    V* im = plane_im(which) + 1;
    const std::complex<T>* rows[W];
    for (int l = 0; l < W; ++l)
      rows[l] = l < lanes_ ? src + (b0_ + l) * stride + offset : zeros_;
    const bool full = lanes_ == W;
    for (Index j = 0; j < n_; ++j) {
      V r = {}, i = {};  // every lane is written below; zeroed for the compiler's sake
      if (full) {
        for (int l = 0; l < W; ++l) {
          set_lane(r, l, rows[l][j].real());
          set_lane(i, l, rows[l][j].imag());
        }
      } else {
        for (int l = 0; l < W; ++l) {
          set_lane(r, l, rows[l][l < lanes_ ? j : 0].real());
          set_lane(i, l, rows[l][l < lanes_ ? j : 0].imag());
        }
      }
      if constexpr (kAdd) {
        re[j] += r;
        im[j] += i;
      } else {
        re[j] = r;
        im[j] = i;
      }
    }
  }

  void load(Buf which, const std::complex<T>* src, Index stride, Index offset) {
    gather<false>(which, src, stride, offset);
  }

  void add(Buf which, const std::complex<T>* src, Index stride, Index offset) {
    gather<true>(which, src, stride, offset);
  }

  void store(Buf which, std::complex<T>* dst, Index stride, Index offset) const {
    const V* re = plane_re(which) + 1;
    const V* im = plane_im(which) + 1;
    if (lanes_ == W) {
      std::complex<T>* rows[W];
      for (int l = 0; l < W; ++l) rows[l] = dst + (b0_ + l) * stride + offset;
      for (Index j = 0; j < n_; ++j) {
        const V r = re[j], i = im[j];
        for (int l = 0; l < W; ++l) rows[l][j] = std::complex<T>(r[l], i[l]);
      }
      return;
    }
    for (Index l = 0; l < lanes_; ++l) {
      std::complex<T>* row = dst + (b0_ + l) * stride + offset;
      for (Index j = 0; j < n_; ++j) row[j] = std::complex<T>(re[j][l], im[j][l]);
    }
  }

  void swap_pq() {
    V* t = pr_;
    pr_ = qr_;
    qr_ = t;
    t = pi_;
    pi_ = qi_;
    qi_ = t;
  }

  /// Diagonal d_j of H_k in every lane.
  template <bool kConst>
  V diag(Index j) const {
    if constexpr (kConst) return base_[j];
    else return base_[j] + u_ * sh_.shape[j];
  }

  /// Pivot 1/w_j of M_σ from 1/w_{j−1}: w_j = 1 + iσh·d_j + he²/w_{j−1}, formed as
  /// w' = c·w_j (c a power of two, see KernelShared), 1/w_j = (conj(w')/|w'|²)·c; every
  /// intermediate stays a normal number (bitwise the unscaled result where that is one).
  /// The scaled constants c, c·h, c·he², read once into registers by each sweep (the
  /// planes are T arrays, so the compiler cannot keep sh_'s members in registers itself).
  struct Scaled {
    T c, ch, ch2e2;
  };
  Scaled scaled() const { return {sh_.c, sh_.ch, sh_.ch2e2}; }

  /// kScaled = false: c = 1 (he ≤ 1), the two multiplications by c are left out.
  template <int kSigma, bool kScaled>
  QUFLOW_INLINE static void pivot(const Scaled& k, const V& d, V& iw_r, V& iw_i) {
    const V wr = (kScaled ? k.c : T(1)) + k.ch2e2 * iw_r;
    const V wi = T(kSigma) * k.ch * d + k.ch2e2 * iw_i;
    const V inv_den = T(1) / (wr * wr + wi * wi);
    if constexpr (kScaled) {
      const V wr_c = wr * k.c, wi_c = wi * k.c;  // beside the division, off its chain
      iw_r = wr_c * inv_den;
      iw_i = -wi_c * inv_den;
    } else {
      iw_r = wr * inv_den;
      iw_i = -wi * inv_den;
    }
  }

  /// h·d_j of H_k in every lane (a variable H): h·base_j + u_k·(h·W_j).
  V hdiag(Index j) const { return hbase_[j] + u_ * sh_.hshape[j]; }

  /// pivot() from hd = h·d_j: the same 1/w_j (bitwise: c·(h·d) = (c·h)·d, c a power of two).
  template <int kSigma, bool kScaled>
  QUFLOW_INLINE static void pivot_hd(const Scaled& k, const V& hd, V& iw_r, V& iw_i) {
    const V wr = (kScaled ? k.c : T(1)) + k.ch2e2 * iw_r;
    const V wi = T(kSigma) * (kScaled ? k.c * hd : hd) + k.ch2e2 * iw_i;
    const V inv_den = T(1) / (wr * wr + wi * wi);
    if constexpr (kScaled) {
      const V wr_c = wr * k.c, wi_c = wi * k.c;
      iw_r = wr_c * inv_den;
      iw_i = -wi_c * inv_den;
    } else {
      iw_r = wr * inv_den;
      iw_i = -wi * inv_den;
    }
  }

  /// One forward-elimination step v ← r/w + m·v (complex, every lane), 1/w = iw.
  QUFLOW_INLINE static void eliminate(const V& iw_r, const V& iw_i, const V& mr, const V& mi,
                                      const V& rr, const V& ri, V& v_r, V& v_i) {
    const V ar = iw_r * rr - iw_i * ri, ai = iw_r * ri + iw_i * rr;
    const V vr = ar + mr * v_r - mi * v_i;
    const V vi = ai + mr * v_i + mi * v_r;
    v_r = vr;
    v_i = vi;
  }

  /// One back-substitution step x ← v + m·x (complex, every lane).
  QUFLOW_INLINE static void substitute(const V& mr, const V& mi, const V& v_r, const V& v_i,
                                       V& x_r, V& x_i) {
    const V yr = v_r + mr * x_r - mi * x_i;
    const V yi = v_i + mr * x_i + mi * x_r;
    x_r = yr;
    x_i = yi;
  }

  /// P ← M_{+1}⁻¹ M_{−1} P: one forward step, in place, by the restructured sweeps
///   v_j = α_j ψ_j + m_j (ψ_{j−1} + ψ_{j+1} + v_{j−1}),  α_j = (1 − i·h·d_j)/w_j,
///   m_j = i·he/w_j          (= r_j/w_j + m_j v_{j−1} with r = M_{−1} ψ, j = 0 … n−1)
///   x_j = v_j + m_j x_{j+1}                                          (j = n−2 … 0)
/// Flops per point and lane: constant H 18 + 8 = 26 (α, m precomputed, see KernelShared);
/// variable H 2 (h·d) + 10 (pivot; 13 scaled) + 6 (α, m) + 18 + 8 = 44 (47).
  template <bool kConst, bool kScaled>
  void forward_step() {
    if constexpr (kConst) {
      forward_step_const();
      return;
    }
    const T he = sh_.he;
    const Scaled k = scaled();
    V* p_r = pr_ + 1;
    V* p_i = pi_ + 1;
    // ψ_{j−1}, ψ_j, ψ_{j+1} are read from P and v_{j−1} is stored over ψ_{j−1} one point
    // late (at j = 0 the zero v_{−1} over the zero padding), so only v_{j−1} is carried:
    // few live registers, which lets a lane vector span up to four registers
    V vp_r = {}, vp_i = {};  // v_{j−1}
    V iw_r = {}, iw_i = {};  // 1/w_j (variable H)
    for (Index j = 0; j < n_; ++j) {
      const V x_r = p_r[j], x_i = p_i[j];
      // s = ψ_{j−1} + ψ_{j+1} (zero padding at j = n−1), t = s + v_{j−1}
      const V tr = (p_r[j - 1] + p_r[j + 1]) + vp_r, ti = (p_i[j - 1] + p_i[j + 1]) + vp_i;
      p_r[j - 1] = vp_r;  // ψ_{j−1} is read: v_{j−1} goes over it, and stops being live
      p_i[j - 1] = vp_i;
      V vr, vi;
      if constexpr (kConst) {
        const T ar = sh_.alpha_r[j], ai = sh_.alpha_i[j], mr = sh_.m_r[j], mi = sh_.m_i[j];
        vr = (ar * x_r - ai * x_i) + mr * tr - mi * ti;  // t last on the chain
        vi = (ar * x_i + ai * x_r) + mr * ti + mi * tr;
      } else {
        const V hd = hdiag(j);
        pivot_hd<+1, kScaled>(k, hd, iw_r, iw_i);
        const V mr = -he * iw_i, mi = he * iw_r;
        const V ar = iw_r + hd * iw_i, ai = iw_i - hd * iw_r;  // (1 − i·hd)/w
        fr_[j] = mr;  // m_j for the back substitution
        fi_[j] = mi;
        vr = (ar * x_r - ai * x_i) + mr * tr - mi * ti;
        vi = (ar * x_i + ai * x_r) + mr * ti + mi * tr;
      }
      vp_r = vr;
      vp_i = vi;
    }
    p_r[n_ - 1] = vp_r;
    p_i[n_ - 1] = vp_i;
    V xr = vp_r, xi = vp_i;  // x_{j+1}
    for (Index j = n_ - 2; j >= 0; --j) {
      V yr, yi;
      if constexpr (kConst) {
        const T mr = sh_.m_r[j], mi = sh_.m_i[j];
        yr = p_r[j] + mr * xr - mi * xi;
        yi = p_i[j] + mr * xi + mi * xr;
      } else {
        const V mr = fr_[j], mi = fi_[j];
        yr = p_r[j] + mr * xr - mi * xi;
        yi = p_i[j] + mr * xi + mi * xr;
      }
      p_r[j] = yr;
      p_i[j] = yi;
      xr = yr;
      xi = yi;
    }
  }

  /// forward_step() of a constant H, written per register: a lane vector of W lanes is K
  /// native registers (columns) and the sweeps below run K independent recurrences side
  /// by side, each column's arithmetic written out in turn, so that its temporaries are
  /// reused and only v_{j−1} (x_{j+1}) of each column stays live. Two sweeps per step; the
  /// forward of a constant H takes it only where the β form's 1/he would be large
  /// (see the file's header), else beta_pass().
  void forward_step_const() {
    using R = Col;
    constexpr int K = kCols;
    R* p_r = col(pr_);  // point j, column c: p_r[j·K + c]
    R* p_i = col(pi_);
    R vp_r[K], vp_i[K];  // v_{j−1}
    for (int c = 0; c < K; ++c) vp_r[c] = vp_i[c] = R{};
    for (Index j = 0; j < n_; ++j) {
      const T ar = sh_.alpha_r[j], ai = sh_.alpha_i[j], mr = sh_.m_r[j], mi = sh_.m_i[j];
      R* q_r = p_r + j * K;
      R* q_i = p_i + j * K;
      for (int c = 0; c < K; ++c) {
        const R x_r = q_r[c], x_i = q_i[c];
        // s = ψ_{j−1} + ψ_{j+1} (zero padding at both ends), t = s + v_{j−1}
        const R tr = (q_r[c - K] + q_r[c + K]) + vp_r[c];
        const R ti = (q_i[c - K] + q_i[c + K]) + vp_i[c];
        q_r[c - K] = vp_r[c];  // v_{j−1} over ψ_{j−1}, once read
        q_i[c - K] = vp_i[c];
        vp_r[c] = (ar * x_r - ai * x_i) + mr * tr - mi * ti;  // t last on the chain
        vp_i[c] = (ar * x_i + ai * x_r) + mr * ti + mi * tr;
      }
    }
    R* last_r = p_r + (n_ - 1) * K;
    R* last_i = p_i + (n_ - 1) * K;
    for (int c = 0; c < K; ++c) {
      last_r[c] = vp_r[c];
      last_i[c] = vp_i[c];
    }
    back_substitution<true>();  // x_j = v_j + m_j x_{j+1}, j = n−2 … 0
  }

  // ---- the constant-H forward in the β form, one pass per step (see the file's header) ----
  // Written per register like forward_step_const(): K columns of native registers.
  static constexpr int kColLanes =
      W * int(sizeof(T)) <= kRegisterBytes ? W : kRegisterBytes / int(sizeof(T));
  using Col = typename LaneVector<T, kColLanes>::type;
  static constexpr int kCols = W / kColLanes;
  static_assert(sizeof(Col) * kCols == sizeof(V), "columns");
  Col* col(V* plane) const { return reinterpret_cast<Col*>(plane + 1); }

  /// u = β_j ψ_j + t (t = ψ_{j−1} + ψ_{j+1} + v_{j∓1}, added last: it carries the chain),
  /// then v = m_j u; β_j ψ_j = (b ψ_r + ψ_i/he, b ψ_i − ψ_r/he). 12 + 6 flops.
  QUFLOW_INLINE static void beta_eliminate(T b, T ihe, T mr, T mi, const Col& x_r,
                                           const Col& x_i, const Col& s_r, const Col& s_i,
                                           Col& v_r, Col& v_i) {
    const Col ur = ((b * x_r + ihe * x_i) + s_r) + v_r;
    const Col ui = ((b * x_i - ihe * x_r) + s_i) + v_i;
    v_r = mr * ur - mi * ui;
    v_i = mr * ui + mi * ur;
  }

  /// Step 0's LU elimination: P = ψ on entry, v on exit (v_{j−1} stored over ψ_{j−1} once
  /// read, as forward_step_const() does).
  void beta_first_elimination() {
    constexpr int K = kCols;
    Col* p_r = col(pr_);
    Col* p_i = col(pi_);
    const T ihe = sh_.ihe;
    Col v_r[K], v_i[K];
    for (int c = 0; c < K; ++c) v_r[c] = v_i[c] = Col{};
    for (Index j = 0; j < n_; ++j) {
      const T b = sh_.beta[j], mr = sh_.m_r[j], mi = sh_.m_i[j];
      Col* q_r = p_r + j * K;
      Col* q_i = p_i + j * K;
      for (int c = 0; c < K; ++c) {
        const Col x_r = q_r[c], x_i = q_i[c];
        const Col s_r = q_r[c - K] + q_r[c + K], s_i = q_i[c - K] + q_i[c + K];
        q_r[c - K] = v_r[c];
        q_i[c - K] = v_i[c];
        beta_eliminate(b, ihe, mr, mi, x_r, x_i, s_r, s_i, v_r[c], v_i[c]);
      }
    }
    for (int c = 0; c < K; ++c) {
      p_r[(n_ - 1) * K + c] = v_r[c];
      p_i[(n_ - 1) * K + c] = v_i[c];
    }
  }

  /// One pass: the back substitution of step k (LU when kDown, j = n−1 … 0; UL otherwise,
  /// j = 0 … n−1) and, a point behind it, the elimination of step k+1 (UL when kDown, LU
  /// otherwise). P holds step k's eliminated v on entry, step k+1's on exit; kKeep also
  /// writes ψ_{k+1} to Q (trajectories). At point j of the pass, ψ_{k+1,j} is formed,
  /// the elimination runs at the point before it (whose neighbours are now known) and
  /// stores its previous value over the point two back (whose ψ_{k+1} was last read).
  /// 26 flops per point and lane, two loads and four stores per column.
  template <bool kDown, bool kKeep>
  void beta_pass() {
    constexpr int K = kCols;
    constexpr Index s = kDown ? -1 : 1;
    Col* p_r = col(pr_);
    Col* p_i = col(pi_);
    Col* k_r = col(qr_);
    Col* k_i = col(qi_);
    const T* sub_r = kDown ? sh_.m_r : sh_.um_r;  // step k's substitution
    const T* sub_i = kDown ? sh_.m_i : sh_.um_i;
    const T* el_r = kDown ? sh_.um_r : sh_.m_r;  // step k+1's elimination
    const T* el_i = kDown ? sh_.um_i : sh_.m_i;
    const T ihe = sh_.ihe;
    const Index j0 = kDown ? n_ - 1 : 0;
    Col x_r[K], x_i[K], v_r[K], v_i[K];  // ψ_{k+1} at the point before, v' two before
    for (int c = 0; c < K; ++c) {
      x_r[c] = p_r[j0 * K + c];  // the substitution's first point: x = v
      x_i[c] = p_i[j0 * K + c];
      v_r[c] = v_i[c] = Col{};
      if constexpr (kKeep) {
        k_r[j0 * K + c] = x_r[c];
        k_i[j0 * K + c] = x_i[c];
      }
    }
    for (Index t = 1; t < n_; ++t) {
      const Index j = j0 + s * t, je = j - s;  // je: the elimination's point
      Col* q_r = p_r + j * K;
      Col* q_i = p_i + j * K;
      Col* z_r = p_r + (je - s) * K;  // ψ_{k+1} there (zero padding at t = 1)
      Col* z_i = p_i + (je - s) * K;
      // The scalars are read where they are used, in every column (the stores before
      // may alias them, so the compiler reloads them): broadcasts from memory, no
      // registers held across the columns, which would push a recurrence to the stack.
      for (int c = 0; c < K; ++c) {
        const T ar = sub_r[j], ai = sub_i[j];
        const Col y_r = q_r[c] + ar * x_r[c] - ai * x_i[c];  // ψ_{k+1,j}
        const Col y_i = q_i[c] + ar * x_i[c] + ai * x_r[c];
        const Col s_r = y_r + z_r[c], s_i = y_i + z_i[c];
        z_r[c] = v_r[c];
        z_i[c] = v_i[c];
        q_r[c] = y_r;
        q_i[c] = y_i;
        if constexpr (kKeep) {
          k_r[j * K + c] = y_r;
          k_i[j * K + c] = y_i;
        }
        beta_eliminate(sh_.beta[je], ihe, el_r[je], el_i[je], x_r[c], x_i[c], s_r, s_i, v_r[c],
                       v_i[c]);
        x_r[c] = y_r;
        x_i[c] = y_i;
      }
    }
    // the elimination's last point, whose outer neighbour is the zero padding
    const Index je = j0 + s * (n_ - 1);
    const T b = sh_.beta[je], mr = el_r[je], mi = el_i[je];
    Col* z_r = p_r + (je - s) * K;
    Col* z_i = p_i + (je - s) * K;
    Col* q_r = p_r + je * K;
    Col* q_i = p_i + je * K;
    for (int c = 0; c < K; ++c) {
      const Col s_r = z_r[c], s_i = z_i[c];
      z_r[c] = v_r[c];
      z_i[c] = v_i[c];
      beta_eliminate(b, ihe, mr, mi, x_r[c], x_i[c], s_r, s_i, v_r[c], v_i[c]);
      q_r[c] = v_r[c];
      q_i[c] = v_i[c];
    }
  }

  /// A step's back substitution alone (LU when kDown, UL otherwise), in place: the last
  /// step of the one-pass forward, and every step of the two-sweep α form (LU).
  template <bool kDown>
  void back_substitution() {
    constexpr int K = kCols;
    constexpr Index s = kDown ? -1 : 1;
    Col* p_r = col(pr_);
    Col* p_i = col(pi_);
    const T* sub_r = kDown ? sh_.m_r : sh_.um_r;
    const T* sub_i = kDown ? sh_.m_i : sh_.um_i;
    const Index j0 = kDown ? n_ - 1 : 0;
    Col x_r[K], x_i[K];
    for (int c = 0; c < K; ++c) {
      x_r[c] = p_r[j0 * K + c];
      x_i[c] = p_i[j0 * K + c];
    }
    for (Index t = 1; t < n_; ++t) {
      const Index j = j0 + s * t;
      const T ar = sub_r[j], ai = sub_i[j];
      Col* q_r = p_r + j * K;
      Col* q_i = p_i + j * K;
      for (int c = 0; c < K; ++c) {
        const Col y_r = q_r[c] + ar * x_r[c] - ai * x_i[c];
        const Col y_i = q_i[c] + ar * x_i[c] + ai * x_r[c];
        q_r[c] = x_r[c] = y_r;
        q_i[c] = x_i[c] = y_i;
      }
    }
  }

  /// Which parts of ∂L/∂d an adjoint step accumulates (bits): gv, gw, du (see adjoint_step).
  enum Acc : int { kAccV = 1, kAccW = 2, kAccU = 4 };

  /// One adjoint step k. On entry P = ψ_{k+1}, G = g_{k+1}, and Q = ψ_k when !kRebuild.
  /// On exit Q = ψ_k, G = g_k, and this step's ∂L/∂d has been added to the accumulators
  /// kAcc asks for: gv[j] += ∂L/∂d_j,  gw[j] += ∂L/∂d_j · u_k,  du += Σ_j ∂L/∂d_j · W_j.
  /// Pivots w̃_j of M_{−1} are the conjugates of M_{+1}'s; m̃_j = −i·he/w̃_j = conj(m_j).
  /// Both products with M_{+1} are written through M_{+1} = 2I − M_{−1} (Cayley form):
  ///   λ = M_{−1}⁻¹ g_{k+1},   g_k = M_{+1} λ = 2λ − g_{k+1},
  ///   x = M_{−1}⁻¹ ψ_{k+1},   ψ_k = M_{−1}⁻¹ M_{+1} ψ_{k+1} = 2x − ψ_{k+1},
  ///   ∂L/∂d_j = h·Im(conj(λ_j) (ψ_k + ψ_{k+1})_j) = 2h·Im(conj(λ_j) x_j),
  /// so both solves share M_{−1}'s pivots, and neither needs H's diagonal again nor a
  /// neighbour of any point (no tridiagonal product).
  /// Flops per point and lane, constant H: 14 (eliminate g) + 8 (λ) + 4 (g_k) = 26,
  /// + 26 to rebuild ψ_k (14 + 8 + 4), + 4 for ∂L/∂d (6 from stored states) and 1 (gv),
  /// 2 (gw), 2 (du) per accumulator; variable H adds 2 (h·d), 10 (pivot; 13 scaled) and
  /// 2 (m̃): 52 / 57 (constant H, without / with ∂L/∂V), 75 (variable H, every
  /// accumulator; 72 for ∂L/∂u alone).
  template <bool kConst, bool kRebuild, bool kScaled, int kAcc>
  void adjoint_step(V* gv, V* gw, V& du) {
    const T h = sh_.h, he = sh_.he;
    const Scaled k = scaled();
    const V* p_r = pr_ + 1;
    const V* p_i = pi_ + 1;
    V* q_r = qr_ + 1;
    V* q_i = qi_ + 1;
    V* g_r = gr_ + 1;
    V* g_i = gi_ + 1;

    // pass 1, j = 0 … n−1: the forward eliminations of g_{k+1} (into E, G is kept for
    // g_k) and, when rebuilding, of ψ_{k+1} (into Q):  v_j = r_j/w̃_j + m̃_j v_{j−1}
    {
      V iw_r = {}, iw_i = {}, vg_r = {}, vg_i = {}, vq_r = {}, vq_i = {};
      for (Index j = 0; j < n_; ++j) {
        V mr, mi;  // m̃_j
        if constexpr (kConst) {
          iw_r = splat(sh_.cinv_r[j]);
          iw_i = splat(-sh_.cinv_i[j]);
          mr = splat(sh_.m_r[j]);
          mi = splat(-sh_.m_i[j]);
        } else {
          pivot_hd<-1, kScaled>(k, hdiag(j), iw_r, iw_i);
          mr = he * iw_i;
          mi = -he * iw_r;
          fr_[j] = mr;  // m̃_j for pass 2
          fi_[j] = mi;
        }
        eliminate(iw_r, iw_i, mr, mi, g_r[j], g_i[j], vg_r, vg_i);
        er_[j] = vg_r;
        ei_[j] = vg_i;
        if constexpr (kRebuild) {
          eliminate(iw_r, iw_i, mr, mi, p_r[j], p_i[j], vq_r, vq_i);
          q_r[j] = vq_r;
          q_i[j] = vq_i;
        }
      }
    }

    // pass 2, j = n−1 … 0: the back substitutions λ_j = v_j + m̃_j λ_{j+1} (and x_j), then
    // ψ_k[j], ∂L/∂d_j and g_k[j] = 2λ_j − g_{k+1}[j], all at point j
    const T h2 = 2 * h;
    V l_r = {}, l_i = {};  // λ_{j+1}, then λ_j
    V x_r = {}, x_i = {};  // x_{j+1}, then x_j (rebuild)
    for (Index j = n_ - 1; j >= 0; --j) {
      V mr, mi;
      if constexpr (kConst) {
        mr = splat(sh_.m_r[j]);
        mi = splat(-sh_.m_i[j]);
      } else {
        mr = fr_[j];
        mi = fi_[j];
      }
      substitute(mr, mi, er_[j], ei_[j], l_r, l_i);
      [[maybe_unused]] V gd;
      if constexpr (kRebuild) {
        substitute(mr, mi, q_r[j], q_i[j], x_r, x_i);
        q_r[j] = T(2) * x_r - p_r[j];
        q_i[j] = T(2) * x_i - p_i[j];
        if constexpr (kAcc != 0) gd = h2 * (l_r * x_i - l_i * x_r);
      } else if constexpr (kAcc != 0) {
        gd = h * (l_r * (q_i[j] + p_i[j]) - l_i * (q_r[j] + p_r[j]));
      }
      if constexpr ((kAcc & kAccV) != 0) gv[j] += gd;
      if constexpr ((kAcc & kAccW) != 0) gw[j] += gd * u_;
      if constexpr ((kAcc & kAccU) != 0) du += gd * sh_.shape[j];
      g_r[j] = T(2) * l_r - g_r[j];
      g_i[j] = T(2) * l_i - g_i[j];
    }
  }

  /// Forward mode: P ← M_{+1}⁻¹ M_{−1} P and, with S = δψ,
  /// S ← M_{+1}⁻¹ (M_{−1} S − i·h·δD (P_old + P_new)), δD = diag(δd). Four sweeps: the
  /// step's elimination (the tangent's right-hand side built beside it, in S), the step's
  /// back substitution (adding δD's term of ψ_{k+1}), then the tangent's two sweeps with
  /// the same pivots.
  template <bool kConst, bool kScaled>
  void tangent_step() {
    const T h = sh_.h, he = sh_.he;
    const Scaled k = scaled();
    V* p_r = pr_ + 1;
    V* p_i = pi_ + 1;
    V* s_r = sr_ + 1;
    V* s_i = si_ + 1;
    V op_r = {}, op_i = {}, os_r = {}, os_i = {};  // ψ_{j−1}, δψ_{j−1} before overwritten
    V vp_r = {}, vp_i = {};
    V iw_r = {}, iw_i = {};
    for (Index j = 0; j < n_; ++j) {
      const V d = diag<kConst>(j);
      const V hdd = h * tangent_diag(j);
      dd_[j] = hdd;
      const V xr = p_r[j], xi = p_i[j];
      const V sr = op_r + p_r[j + 1], si = op_i + p_i[j + 1];
      const V rr = xr + h * d * xi - he * si;
      const V ri = xi - h * d * xr + he * sr;
      const V yr = s_r[j], yi = s_i[j];
      const V tr = os_r + s_r[j + 1], ti = os_i + s_i[j + 1];
      // M_{−1} δψ_k − i·h·δd·ψ_k
      s_r[j] = yr + h * d * yi - he * ti + hdd * xi;
      s_i[j] = yi - h * d * yr + he * tr - hdd * xr;
      if constexpr (kConst) {
        iw_r = fr_[j];
        iw_i = fi_[j];
      } else {
        pivot<+1, kScaled>(k, d, iw_r, iw_i);
        fr_[j] = iw_r;
        fi_[j] = iw_i;
      }
      eliminate(iw_r, iw_i, -he * iw_i, he * iw_r, rr, ri, vp_r, vp_i);
      op_r = xr;
      op_i = xi;
      os_r = yr;
      os_i = yi;
      p_r[j] = vp_r;
      p_i[j] = vp_i;
    }
    for (Index j = n_ - 1; j >= 0; --j) {
      if (j < n_ - 1) {
        const V mr = -he * fi_[j], mi = he * fr_[j];
        const V xr = p_r[j + 1], xi = p_i[j + 1];
        p_r[j] += mr * xr - mi * xi;
        p_i[j] += mr * xi + mi * xr;
      }
      s_r[j] += dd_[j] * p_i[j];  // − i·h·δd·ψ_{k+1}
      s_i[j] -= dd_[j] * p_r[j];
    }
    V vs_r = {}, vs_i = {};
    for (Index j = 0; j < n_; ++j) {
      const V wr = fr_[j], wi = fi_[j];
      eliminate(wr, wi, -he * wi, he * wr, s_r[j], s_i[j], vs_r, vs_i);
      s_r[j] = vs_r;
      s_i[j] = vs_i;
    }
    for (Index j = n_ - 2; j >= 0; --j) {
      const V mr = -he * fi_[j], mi = he * fr_[j];
      const V xr = s_r[j + 1], xi = s_i[j + 1];
      s_r[j] += mr * xr - mi * xi;
      s_i[j] += mr * xi + mi * xr;
    }
  }

  /// Accumulators of the second-order adjoint, each n lane vectors (see adjoint2_step).
  struct Acc2 {
    V *gv, *gw, *tv, *tw;
  };

  /// One step k of the adjoint of the tangent-augmented step (see cn_adjoint2). On entry
  /// P = ψ_{k+1}, S = δψ_{k+1}, G = a_{k+1} (ψ's cotangent), H = b_{k+1} (δψ's). With the
  /// pivots of M_{−1}:
  ///   ψ_k  = M_{−1}⁻¹ M_{+1} ψ_{k+1}                           (rebuilt, into Q)
  ///   μ    = M_{−1}⁻¹ b_{k+1}
  ///   δψ_k = M_{−1}⁻¹ (M_{+1} δψ_{k+1} + i·h·δD (ψ_k + ψ_{k+1})) (rebuilt, into R)
  ///   λ    = M_{−1}⁻¹ (a_{k+1} + i·h·δD μ)
  ///   a_k  = M_{+1} λ + i·h·δD μ,   b_k = M_{+1} μ
  ///   ∂/∂d_j  = h·Im(conj(λ_j)(ψ_k + ψ_{k+1})_j + conj(μ_j)(δψ_k + δψ_{k+1})_j)
  ///   ∂/∂δd_j = h·Im(conj(μ_j)(ψ_k + ψ_{k+1})_j)
  /// all formed through M_{+1} = 2I − M_{−1}, as adjoint_step: with x = M_{−1}⁻¹ ψ_{k+1} and
  /// y = M_{−1}⁻¹ (δψ_{k+1} + i·h·δD x), ψ_k = 2x − ψ_{k+1}, δψ_k = 2y − δψ_{k+1} (so the
  /// sums above are 2x and 2y), a_k = 2λ − a_{k+1} and b_k = 2μ − b_{k+1}: four solves
  /// with one set of pivots and no tridiagonal product.
  /// On exit Q = ψ_k, R = δψ_k, G = a_k, H = b_k; the accumulators hold
  /// gv += ∂/∂d, gw += ∂/∂d·u_k + ∂/∂δd·δu_k, tv += ∂/∂δd, tw += ∂/∂δd·u_k, and
  /// du = Σ_j ∂/∂d_j W_j + ∂/∂δd_j δW_j, tdu = Σ_j ∂/∂δd_j W_j.
  template <bool kConst, bool kScaled>
  void adjoint2_step(const Acc2& acc, V& du, V& tdu) {
    const T h = sh_.h, he = sh_.he, h2 = 2 * h;
    const Scaled k = scaled();
    const V* p_r = pr_ + 1;
    const V* p_i = pi_ + 1;
    const V* s_r = sr_ + 1;
    const V* s_i = si_ + 1;
    V* q_r = qr_ + 1;
    V* q_i = qi_ + 1;
    V* r_r = rr_ + 1;
    V* r_i = ri_ + 1;
    V* g_r = gr_ + 1;
    V* g_i = gi_ + 1;
    V* b_r = hr_ + 1;
    V* b_i = hi_ + 1;
    // 1/w̃_j and m̃_j of M_{−1} at j from the pivots of pass 1 (a constant H: M_{+1}'s, set
    // once, conjugated here)
    auto pivot_of = [&](Index j, V& iw_r, V& iw_i, V& mr, V& mi) {
      iw_r = fr_[j];
      iw_i = kConst ? -fi_[j] : fi_[j];
      mr = he * iw_i;
      mi = -he * iw_r;
    };
    // pass 1, j = 0 … n−1: the pivots of M_{−1} (variable H), δd of this step, and the
    // eliminations of ψ_{k+1} (into Q) and b_{k+1} (into E; H keeps b_{k+1} for b_k)
    {
      V iw_r = {}, iw_i = {}, vq_r = {}, vq_i = {}, vb_r = {}, vb_i = {};
      for (Index j = 0; j < n_; ++j) {
        dd_[j] = h * tangent_diag(j);
        if constexpr (kConst) {
          iw_r = fr_[j];
          iw_i = -fi_[j];
        } else {
          pivot<-1, kScaled>(k, diag<kConst>(j), iw_r, iw_i);
          fr_[j] = iw_r;
          fi_[j] = iw_i;
        }
        const V mr = he * iw_i, mi = -he * iw_r;
        eliminate(iw_r, iw_i, mr, mi, p_r[j], p_i[j], vq_r, vq_i);
        q_r[j] = vq_r;
        q_i[j] = vq_i;
        eliminate(iw_r, iw_i, mr, mi, b_r[j], b_i[j], vb_r, vb_i);
        er_[j] = vb_r;
        ei_[j] = vb_i;
      }
    }
    // pass 2, j = n−1 … 0: the back substitutions x (in Q) and μ (in E); b_k = 2μ − b_{k+1}
    {
      V x_r = {}, x_i = {}, u_r = {}, u_i = {};  // x_{j+1}, μ_{j+1}, then at j
      for (Index j = n_ - 1; j >= 0; --j) {
        V iw_r, iw_i, mr, mi;
        pivot_of(j, iw_r, iw_i, mr, mi);
        substitute(mr, mi, q_r[j], q_i[j], x_r, x_i);
        substitute(mr, mi, er_[j], ei_[j], u_r, u_i);
        q_r[j] = x_r;
        q_i[j] = x_i;
        er_[j] = u_r;
        ei_[j] = u_i;
        b_r[j] = T(2) * u_r - b_r[j];
        b_i[j] = T(2) * u_i - b_i[j];
      }
    }
    // pass 3, j = 0 … n−1: the eliminations of δψ_{k+1} + i·h·δD x (into R) and
    // a_{k+1} + i·h·δD μ (into A; G keeps a_{k+1} for a_k)
    {
      V vr_r = {}, vr_i = {}, vg_r = {}, vg_i = {};
      for (Index j = 0; j < n_; ++j) {
        V iw_r, iw_i, mr, mi;
        pivot_of(j, iw_r, iw_i, mr, mi);
        const V hdd = dd_[j];
        eliminate(iw_r, iw_i, mr, mi, s_r[j] - hdd * q_i[j], s_i[j] + hdd * q_r[j], vr_r, vr_i);
        r_r[j] = vr_r;
        r_i[j] = vr_i;
        eliminate(iw_r, iw_i, mr, mi, g_r[j] - hdd * ei_[j], g_i[j] + hdd * er_[j], vg_r,
                  vg_i);
        ar_[j] = vg_r;
        ai_[j] = vg_i;
      }
    }
    // pass 4, j = n−1 … 0: the back substitutions y and λ; the gradients at j; then
    // δψ_k = 2y − δψ_{k+1} (R), a_k = 2λ − a_{k+1} (G), ψ_k = 2x − ψ_{k+1} (Q)
    V y_r = {}, y_i = {}, l_r = {}, l_i = {};  // y_{j+1}, λ_{j+1}, then at j
    for (Index j = n_ - 1; j >= 0; --j) {
      V iw_r, iw_i, mr, mi;
      pivot_of(j, iw_r, iw_i, mr, mi);
      substitute(mr, mi, r_r[j], r_i[j], y_r, y_i);
      substitute(mr, mi, ar_[j], ai_[j], l_r, l_i);
      const V xr = q_r[j], xi = q_i[j], ur = er_[j], ui = ei_[j];
      const V gd = h2 * (l_r * xi - l_i * xr + ur * y_i - ui * y_r);
      const V gdd = h2 * (ur * xi - ui * xr);
      acc.gv[j] += gd;
      acc.gw[j] += gd * u_ + gdd * du_;
      acc.tv[j] += gdd;
      acc.tw[j] += gdd * u_;
      du += gd * sh_.shape[j] + gdd * sh_.dshape[j];
      tdu += gdd * sh_.shape[j];
      r_r[j] = T(2) * y_r - s_r[j];
      r_i[j] = T(2) * y_i - s_i[j];
      g_r[j] = T(2) * l_r - g_r[j];
      g_i[j] = T(2) * l_i - g_i[j];
      q_r[j] = T(2) * xr - p_r[j];
      q_i[j] = T(2) * xi - p_i[j];
    }
  }

  V* plane_re(Buf b) const {
    switch (b) {
      case Buf::P: return pr_;
      case Buf::Q: return qr_;
      case Buf::G: return gr_;
      case Buf::S: return sr_;
      case Buf::R: return rr_;
      default: return hr_;
    }
  }
  V* plane_im(Buf b) const {
    switch (b) {
      case Buf::P: return pi_;
      case Buf::Q: return qi_;
      case Buf::G: return gi_;
      case Buf::S: return si_;
      case Buf::R: return ri_;
      default: return hi_;
    }
  }

  void swap_sr() {
    V* t = sr_;
    sr_ = rr_;
    rr_ = t;
    t = si_;
    si_ = ri_;
    ri_ = t;
  }

 private:
  const KernelShared<T>& sh_;
  const System<T>& sys_;
  Index n_, b0_, lanes_;
  V *pr_, *pi_, *qr_, *qi_, *gr_, *gi_;  // n+2 padded state planes
  V *fr_, *fi_;                          // n per-lane pivots 1/w_j (of M_{+1} if constant)
  V* base_;                              // n: 2e + V_j per lane
  V* hbase_;                             // n: h·(2e + V_j) per lane
  V *sr_, *si_, *rr_, *ri_, *hr_, *hi_;  // n+2 tangent planes (forward mode / second order)
  V *dbase_, *dd_;                       // n: δV_j per lane, δd_j of the current step
  V *er_, *ei_;                          // n: the adjoint's elimination of g_{k+1} (μ)
  V *ar_, *ai_;                          // n: second order: the elimination for λ
  V u_, du_;                             // control values (and directions) of the step
  static constexpr std::complex<T> zeros_[1] = {};
};

/// True once another thread has asked every block to stop (an error or a cancelled call).
template <class T>
bool stopped(const KernelShared<T>& sh) {
  return __atomic_load_n(sh.stop, __ATOMIC_RELAXED) != 0;
}

}  // namespace

template <class T, int W>
void forward_block(const KernelShared<T>& sh, const KernelWork<T>& wk, Index b0, Index lanes,
                   const std::complex<T>* psi0, std::complex<T>* out, bool trajectory) {
  using B = Block<T, W>;
  const Index n = sh.sys->n, steps = sh.sys->steps;
  const Index stride = trajectory ? (steps + 1) * n : n;
  B blk(sh, wk, b0, lanes, sh.constant);
  const bool scaled = sh.c != T(1);  // he > 1: pivots formed scaled (see pivot)
  blk.load(B::Buf::P, psi0, n, 0);
  if (trajectory) blk.store(B::Buf::P, out, stride, 0);
  if (sh.beta && steps > 0) {  // a constant H: one pass per step (see the file's header)
    blk.beta_first_elimination();
    for (Index k = 1; k < steps; ++k) {  // step k−1's substitution, step k's elimination
      if (stopped(sh)) return;
      const bool down = (k - 1) % 2 == 0;  // step k−1 was LU
      if (trajectory) {
        if (down) blk.template beta_pass<true, true>();
        else blk.template beta_pass<false, true>();
        blk.store(B::Buf::Q, out, stride, k * n);
      } else {
        if (down) blk.template beta_pass<true, false>();
        else blk.template beta_pass<false, false>();
      }
    }
    if ((steps - 1) % 2 == 0) blk.template back_substitution<true>();
    else blk.template back_substitution<false>();
    blk.store(B::Buf::P, out, stride, trajectory ? steps * n : 0);
    return;
  }
  for (Index k = 0; k < steps; ++k) {
    if (stopped(sh)) return;
    if (sh.constant) {
      blk.template forward_step<true, false>();
    } else {
      blk.set_control(k);
      if (scaled) blk.template forward_step<false, true>();
      else blk.template forward_step<false, false>();
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
  using V = typename B::V;
  const System<T>& sys = *sh.sys;
  const Index n = sys.n, steps = sys.steps;
  const Index sstride = states_full ? (steps + 1) * n : n;
  const Index gstride = grad_full ? (steps + 1) * n : n;
  B blk(sh, wk, b0, lanes);
  const bool scaled = sh.c != T(1);  // he > 1: pivots formed scaled (see pivot)
  V* gv = B::as_v(wk.gv);  // Σ_k ∂L/∂d_j per lane
  V* gw = B::as_v(wk.gw);  // Σ_k ∂L/∂d_j · u_k per lane
  for (Index j = 0; j < n; ++j) gv[j] = gw[j] = V{};
  blk.load(B::Buf::P, states, sstride, states_full ? steps * n : 0);
  blk.load(B::Buf::G, grad_out, gstride, grad_full ? steps * n : 0);
  // the accumulators this call needs: gv (∂L/∂V), du (∂L/∂u), all three with ∂L/∂W;
  // a constant H has no control and needs at most gv
  const bool want_v = grads.potential != nullptr;
  auto step = [&](auto rebuild, V& du) {
    constexpr bool kR = decltype(rebuild)::value;
    if (sh.constant) {
      if (want_v) blk.template adjoint_step<true, kR, false, B::kAccV>(gv, gw, du);
      else blk.template adjoint_step<true, kR, false, 0>(gv, gw, du);
      return;
    }
    // each accumulator only when its gradient is asked for: one left out saves its flops
    // and a plane's read-modify-write per point and step; ∂L/∂W takes all three
    constexpr int kV = B::kAccV, kU = B::kAccU, kAll = B::kAccV | B::kAccW | B::kAccU;
    const int acc = grads.control_shape ? kAll : (want_v ? kV : 0) | (grads.control ? kU : 0);
    auto go = [&](auto sc) {
      constexpr bool kS = decltype(sc)::value;
      switch (acc) {
        case kAll: blk.template adjoint_step<false, kR, kS, kAll>(gv, gw, du); break;
        case kV | kU: blk.template adjoint_step<false, kR, kS, kV | kU>(gv, gw, du); break;
        case kU: blk.template adjoint_step<false, kR, kS, kU>(gv, gw, du); break;
        case kV: blk.template adjoint_step<false, kR, kS, kV>(gv, gw, du); break;
        default: blk.template adjoint_step<false, kR, kS, 0>(gv, gw, du);
      }
    };
    if (scaled) go(std::true_type{});
    else go(std::false_type{});
  };
  for (Index k = steps - 1; k >= 0; --k) {  // adjoint sweep k = T−1 … 0
    if (stopped(sh)) return;
    V du = {};
    blk.set_control(k);
    if (states_full) {
      blk.load(B::Buf::Q, states, sstride, k * n);
      step(std::false_type{}, du);
    } else {
      step(std::true_type{}, du);
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
        if (sys.potential_rows == 1) acc_v[j] += gv[j][l];
        else grads.potential[(b0 + l) * n + j] = gv[j][l];
      }
      if (grads.control_shape) acc_w[j] += gw[j][l];
    }
  }
}

template <class T, int W>
void jvp_block(const KernelShared<T>& sh, const KernelWork<T>& wk, Index b0, Index lanes,
               const std::complex<T>* psi0, std::complex<T>* out, std::complex<T>* tout,
               bool trajectory) {
  using B = Block<T, W>;
  const Index n = sh.sys->n, steps = sh.sys->steps;
  const Index stride = trajectory ? (steps + 1) * n : n;
  B blk(sh, wk, b0, lanes);
  const bool scaled = sh.c != T(1);
  blk.load(B::Buf::P, psi0, n, 0);
  if (sh.tan->psi0) blk.load(B::Buf::S, sh.tan->psi0, n, 0);
  if (trajectory) {
    blk.store(B::Buf::P, out, stride, 0);
    blk.store(B::Buf::S, tout, stride, 0);
  }
  for (Index k = 0; k < steps; ++k) {
    if (stopped(sh)) return;
    blk.set_control(k);
    blk.set_tangent_control(k);
    if (sh.constant) blk.template tangent_step<true, false>();
    else if (scaled) blk.template tangent_step<false, true>();
    else blk.template tangent_step<false, false>();
    if (trajectory) {
      blk.store(B::Buf::P, out, stride, (k + 1) * n);
      blk.store(B::Buf::S, tout, stride, (k + 1) * n);
    }
  }
  if (!trajectory) {
    blk.store(B::Buf::P, out, stride, 0);
    blk.store(B::Buf::S, tout, stride, 0);
  }
}

template <class T, int W>
void adjoint2_block(const KernelShared<T>& sh, const KernelWork<T>& wk, Index b0, Index lanes,
                    const std::complex<T>* states, const std::complex<T>* tstates,
                    const std::complex<T>* grad_out, const std::complex<T>* tgrad_out,
                    bool grad_full, const Gradients<T>& grads, const Gradients<T>& tgrads,
                    T* const* acc) {
  using B = Block<T, W>;
  using V = typename B::V;
  const System<T>& sys = *sh.sys;
  const Index n = sys.n, steps = sys.steps;
  const Index gstride = grad_full ? (steps + 1) * n : n;
  const Index last = grad_full ? steps * n : 0;
  B blk(sh, wk, b0, lanes);
  const bool scaled = sh.c != T(1);
  const typename B::Acc2 a2{B::as_v(wk.gv), B::as_v(wk.gw), B::as_v(wk.tv), B::as_v(wk.tw)};
  for (Index j = 0; j < n; ++j) a2.gv[j] = a2.gw[j] = a2.tv[j] = a2.tw[j] = V{};
  blk.load(B::Buf::P, states, n, 0);
  blk.load(B::Buf::S, tstates, n, 0);
  if (grad_out) blk.load(B::Buf::G, grad_out, gstride, last);
  blk.load(B::Buf::H, tgrad_out, gstride, last);
  T* acc_u = acc[1];
  T* tacc_u = acc[4];
  for (Index k = steps - 1; k >= 0; --k) {
    if (stopped(sh)) return;
    V du = {}, tdu = {};
    blk.set_control(k);
    blk.set_tangent_control(k);
    if (sh.constant) blk.template adjoint2_step<true, false>(a2, du, tdu);
    else if (scaled) blk.template adjoint2_step<false, true>(a2, du, tdu);
    else blk.template adjoint2_step<false, false>(a2, du, tdu);
    for (Index l = 0; l < lanes; ++l) {
      if (grads.control) {
        if (sys.control_rows == 1) acc_u[k] += du[l];
        else grads.control[(b0 + l) * steps + k] = du[l];
      }
      if (tgrads.control) {
        if (sh.tan->control_rows == 1) tacc_u[k] += tdu[l];
        else tgrads.control[(b0 + l) * steps + k] = tdu[l];
      }
    }
    if (grad_full) {
      if (grad_out) blk.add(B::Buf::G, grad_out, gstride, k * n);
      blk.add(B::Buf::H, tgrad_out, gstride, k * n);
    }
    blk.swap_pq();
    blk.swap_sr();
  }
  if (grads.psi0) blk.store(B::Buf::G, grads.psi0, n, 0);
  if (tgrads.psi0) blk.store(B::Buf::H, tgrads.psi0, n, 0);
  for (Index l = 0; l < lanes; ++l) {
    for (Index j = 0; j < n; ++j) {
      if (grads.potential) {
        if (sys.potential_rows == 1) acc[0][j] += a2.gv[j][l];
        else grads.potential[(b0 + l) * n + j] = a2.gv[j][l];
      }
      if (tgrads.potential) {
        if (sh.tan->potential_rows == 1) acc[3][j] += a2.tv[j][l];
        else tgrads.potential[(b0 + l) * n + j] = a2.tv[j][l];
      }
      if (grads.control_shape) acc[2][j] += a2.gw[j][l];
      if (tgrads.control_shape) acc[5][j] += a2.tw[j][l];
    }
  }
}

#define QUFLOW_INSTANTIATE(T, W)                                                              \
  template void forward_block<T, W>(const KernelShared<T>&, const KernelWork<T>&, Index, Index, \
                                    const std::complex<T>*, std::complex<T>*, bool);            \
  template void backward_block<T, W>(const KernelShared<T>&, const KernelWork<T>&, Index,       \
                                     Index, const std::complex<T>*, bool,                       \
                                     const std::complex<T>*, bool, const Gradients<T>&, T*, T*, \
                                     T*);                                                      \
  template void jvp_block<T, W>(const KernelShared<T>&, const KernelWork<T>&, Index, Index,     \
                                const std::complex<T>*, std::complex<T>*, std::complex<T>*,     \
                                bool);                                                          \
  template void adjoint2_block<T, W>(const KernelShared<T>&, const KernelWork<T>&, Index,       \
                                     Index, const std::complex<T>*, const std::complex<T>*,     \
                                     const std::complex<T>*, const std::complex<T>*, bool,      \
                                     const Gradients<T>&, const Gradients<T>&, T* const*);
QUFLOW_INSTANTIATE(float, 1)
QUFLOW_INSTANTIATE(float, kNarrowLanes<float>)
QUFLOW_INSTANTIATE(float, kWideLanes<float>)
QUFLOW_INSTANTIATE(double, 1)
QUFLOW_INSTANTIATE(double, kNarrowLanes<double>)
QUFLOW_INSTANTIATE(double, kWideLanes<double>)
#undef QUFLOW_INSTANTIATE

#undef QUFLOW_INLINE

}  // namespace QUFLOW_ISA_NS
}  // namespace quflow
