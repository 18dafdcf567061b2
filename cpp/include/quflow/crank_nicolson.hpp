// Crank–Nicolson propagation of the 1-D Schrödinger equation and its adjoint.
//
//   i dψ/dt = H_k ψ,   H_k = −(1/dx²)·tridiag(1, −2, 1) + diag(V + u_k·W)
//   step k:  (I + i·dt/2·H_k) ψ_{k+1} = (I − i·dt/2·H_k) ψ_k
//
// on n interior points of a Dirichlet box. Pure C++/Eigen: no Python, no pybind11.
// Arrays are row-major, C-contiguous, complex interleaved (std::complex<T>).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <complex>
#include <cstddef>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>

#include <Eigen/Core>

namespace quflow {

using Index = std::ptrdiff_t;

/// Invariant check inside the core: throws std::invalid_argument (a ValueError in Python).
#define QUFLOW_CHECK(cond, msg)                                                      \
  do {                                                                               \
    if (!(cond)) throw std::invalid_argument(std::string("quflow core: ") + (msg)); \
  } while (0)

/// Thrown by cn_forward/cn_backward when their poll callback asks them to stop; the
/// outputs are then incomplete and must be discarded (the inputs are untouched).
struct Cancelled : std::runtime_error {
  Cancelled() : std::runtime_error("quflow: the call was cancelled") {}
};

/// Asked every few milliseconds, from the calling thread, while a long call runs on worker
/// threads; returning true cancels the call (see Cancelled). Empty: never asked.
using Poll = std::function<bool()>;

/// The range the kernels represent. With h = dt/2, e = 1/dx², he = h·e and
/// d_j = 2e + V_j + u_k·W_j the diagonal of H_k, the Thomas pivots obey
/// 1 ≤ Re w_j ≤ |w_j| ≤ 1 + h·|d_j| + he², and |w_j|² must stay finite and normal. Inside
/// 1 + h·max|d| + he² ≤ 2^(max_exponent/2 − 4) they are formed as they are (c = 1); beyond
/// it, scaled as c·w_j with c = 2^−⌊log2 max(1, he)⌋, which needs
///   max(1, he)                          ≤ 2^(−min_exponent/2 − 4)  (c² stays normal)
///   c·(1 + h·max|d| + he²)               ≤ 2^(max_exponent/2 − 4)   (|c·w|² stays finite)
///   2e + max|V| + max|u|·max|W|         ≤ max / 256                (d itself)
/// i.e. he ≤ 2^58 ≈ 2.9e17 in float and 2^506 ≈ 2.6e152 in double, and
/// h·max|d| ≲ 2^60·max(1, he) in float, 2^508·max(1, he) in double.
template <class T>
double pivot_limit() {
  return std::ldexp(1.0, std::numeric_limits<T>::max_exponent / 2 - 4);
}
template <class T>
double scale_limit() {
  return std::ldexp(1.0, -std::numeric_limits<T>::min_exponent / 2 - 4);
}

/// True when batch · rows · n elements of `bytes` bytes each fit in a ptrdiff_t.
inline bool size_fits(std::ptrdiff_t batch, std::ptrdiff_t rows, std::ptrdiff_t n,
                      std::size_t bytes) {
  std::ptrdiff_t count = 0, total = 0;
  return batch >= 0 && rows >= 0 && n >= 0 &&
         !__builtin_mul_overflow(batch, rows, &count) &&
         !__builtin_mul_overflow(count, n, &count) &&
         !__builtin_mul_overflow(count, static_cast<std::ptrdiff_t>(bytes), &total);
}

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ConstRowMap = Eigen::Map<const RowMatrix<T>>;

/// Non-owning description of one batched problem.
///
/// Shapes (rows of 1 broadcast over the batch):
///   potential      (potential_rows ∈ {1, batch}, n)
///   control        (control_rows ∈ {0, 1, batch}, steps); 0 rows: no control term
///   control_shape  (n,) when control_rows > 0, else may be null
template <class T>
struct System {
  Index batch = 0;
  Index n = 0;
  Index steps = 0;
  T dt = 0;
  T dx = 0;
  const T* potential = nullptr;
  Index potential_rows = 0;
  const T* control = nullptr;
  Index control_rows = 0;
  const T* control_shape = nullptr;

  /// One factorisation serves every state and step: no control, one shared potential.
  bool constant_hamiltonian() const { return control_rows == 0 && potential_rows == 1; }
  ConstRowMap<T> potential_map() const { return {potential, potential_rows, n}; }
  ConstRowMap<T> control_map() const { return {control, control_rows, steps}; }

  /// max|V|, max|u| and max|W| (W: control_shape), one pass over each array.
  struct Bounds {
    double v = 0, u = 0, w = 0;
  };
  Bounds bounds() const {
    Bounds b;
    b.v = max_abs(potential, potential_rows * n);
    if (control_rows > 0) {
      b.u = max_abs(control, control_rows * steps);
      b.w = max_abs(control_shape, n);
    }
    return b;
  }

  /// Throws std::invalid_argument on any structural violation or an input outside the
  /// representable range (see range_error); returns the bounds it measured.
  Bounds check() const {
    QUFLOW_CHECK(batch >= 1, "batch must be >= 1");
    QUFLOW_CHECK(n >= 1, "n must be >= 1");
    QUFLOW_CHECK(steps >= 0, "steps must be >= 0");
    QUFLOW_CHECK(dt > 0 && dt < std::numeric_limits<T>::infinity(), "dt must be finite and > 0");
    QUFLOW_CHECK(dx > 0 && dx < std::numeric_limits<T>::infinity(), "dx must be finite and > 0");
    QUFLOW_CHECK(potential != nullptr, "potential is null");
    QUFLOW_CHECK(potential_rows == 1 || potential_rows == batch, "potential rows must be 1 or batch");
    QUFLOW_CHECK(control_rows == 0 || control_rows == 1 || control_rows == batch,
                 "control rows must be 0, 1 or batch");
    if (control_rows > 0) {
      QUFLOW_CHECK(control != nullptr || steps == 0, "control is null");
      QUFLOW_CHECK(control_shape != nullptr, "control_shape is null while control is given");
    }
    const Bounds b = bounds();
    const std::string range = range_error(b);
    QUFLOW_CHECK(range.empty(), range);
    return b;
  }

  /// Largest max|ψ_j| of a state (initial state or cotangent) the kernels accept: a step
  /// forms (I ∓ i·h·H)ψ, up to (1 + h·max|d| + 2h·e) times larger than ψ, and ψ's norm (up
  /// to √n·max|ψ_j|) must leave that finite, with a margin of 16.
  double max_state(const Bounds& b) const {
    const double h = double(dt) / 2, he = h / double(dx) / double(dx);
    const double hd = 2 * he + h * b.v + h * b.u * b.w;
    return double(std::numeric_limits<T>::max()) / 16 / (1 + hd + 2 * he) /
           std::sqrt(double(n));
  }

  static double max_abs(const T* p, Index size) {
    T m = 0;
    for (Index i = 0; i < size; ++i) {
      const T a = std::abs(p[i]);
      m = a > m ? a : m;  // vectorises (max instructions)
    }
    return double(m);
  }

  /// Empty when dt, dx, the potential and the control are inside the range the kernels
  /// represent (see pivot_limit), else a message naming the argument that leaves it.
  /// Computed in double, in an order that cannot overflow before the comparison.
  /// The scale c of the pivots (see pivot_limit): 1 where they need none, else
  /// 2^−⌊log2 max(1, he)⌋.
  double pivot_scale(const Bounds& b) const {
    const double h = double(dt) / 2, he = h / double(dx) / double(dx);
    const double e2 = 2 / double(dx) / double(dx);
    if (1 + h * (e2 + b.v + b.u * b.w) + he * he <= pivot_limit<T>()) return 1.0;
    return std::ldexp(1.0, -std::ilogb(std::max(1.0, he)));
  }

  std::string range_error(const Bounds& b) const {
    const double h = double(dt) / 2, he = h / double(dx) / double(dx);
    const double v = b.v, u = b.u, w = b.w;
    const double e2 = 2 / double(dx) / double(dx);  // the Laplacian's diagonal 2e
    const double c = pivot_scale(b);
    auto fmt = [](double x) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.3g", x);
      return std::string(buf);
    };
    const std::string in = std::string(", the limit in ") +
                           (sizeof(T) == 4 ? "float32" : "float64") +
                           " (the Crank–Nicolson pivots would overflow)";
    if (!(std::max(1.0, he) <= scale_limit<T>()))
      return "dt, dx: dt/(2·dx²) = " + fmt(he) + " exceeds " + fmt(scale_limit<T>()) + in +
             "; use a larger dx or a smaller dt";
    const double big = std::numeric_limits<T>::max() / 256.0;
    if (!(e2 + v + u * w <= big)) {  // the diagonal d_j itself
      if (e2 >= v && e2 >= u * w) return "dx: 2/dx² = " + fmt(e2) + " exceeds " + fmt(big) + in;
      if (v >= u * w) return "potential: max|V| = " + fmt(v) + " exceeds " + fmt(big) + in;
      return "control: max|u|·max|control_shape| = " + fmt(u * w) + " exceeds " + fmt(big) + in;
    }
    const double pot = c * h * v, ctl = c * h * u * w;
    if (!(c * (1 + h * e2) + c * he * he + pot + ctl <= pivot_limit<T>())) {
      const std::string ratio = " / max(1, dt/(2·dx²)) = ";
      if (pot >= ctl)
        return "potential: dt/2·max|V|" + ratio + fmt(pot) + " exceeds " +
               fmt(pivot_limit<T>()) + in;
      return "control: dt/2·max|u|·max|control_shape|" + ratio + fmt(ctl) + " exceeds " +
             fmt(pivot_limit<T>()) + in;
    }
    return {};
  }
};

/// Where backward writes each gradient; a null pointer means "not needed" and skips its work.
///   psi0 (batch, n) complex, potential (potential_rows, n), control (control_rows, steps),
///   control_shape (n,). Buffers are overwritten (not accumulated into).
template <class T>
struct Gradients {
  std::complex<T>* psi0 = nullptr;
  T* potential = nullptr;
  T* control = nullptr;
  T* control_shape = nullptr;
};

/// Forward propagation.
///   psi0 (batch, n). out: (batch, n) final states, or (batch, steps+1, n) when trajectory.
/// The step is unitary: ‖ψ_k‖ is conserved to round-off.
/// Long calls run on worker threads while the calling thread asks `poll` every few
/// milliseconds; it throws Cancelled when poll returns true. If a worker thread cannot be
/// started, the started ones are stopped and joined and std::runtime_error is thrown.
template <class T>
void cn_forward(const System<T>& sys, const std::complex<T>* psi0, std::complex<T>* out,
                bool trajectory, int threads, const Poll& poll = {});

/// Adjoint (reverse-mode) sweep, k = steps−1 … 0.
///   states: (batch, steps+1, n) stored states when states_full, else the final states
///           (batch, n), and earlier states are rebuilt backwards by inverting each step
///           (ψ_k = (I − i·dt/2·H_k)⁻¹ (I + i·dt/2·H_k) ψ_{k+1}), so memory does not grow
///           with steps.
///   grad_out: (batch, steps+1, n) cotangents of every state when grad_full, else (batch, n)
///           the cotangent of the final state. PyTorch's convention: ∂L/∂Re ψ + i ∂L/∂Im ψ.
template <class T>
void cn_backward(const System<T>& sys, const std::complex<T>* states, bool states_full,
                 const std::complex<T>* grad_out, bool grad_full, const Gradients<T>& grads,
                 int threads, const Poll& poll = {});

/// Directions of a forward-mode (tangent) propagation: δψ0, δV, δu, δW, shaped as the
/// inputs they perturb (δV: (potential_rows ∈ {1, batch}, n), δu: (control_rows ∈ {1,
/// batch}, steps), δW: (n,)). A null pointer means a zero direction; δu and δW need a
/// control in the System.
template <class T>
struct Tangents {
  const std::complex<T>* psi0 = nullptr;
  const T* potential = nullptr;
  Index potential_rows = 0;
  const T* control = nullptr;
  Index control_rows = 0;
  const T* control_shape = nullptr;
};

/// Forward mode: the forward sweep fused with its tangent,
///   (I + i·dt/2·H_k) δψ_{k+1} = (I − i·dt/2·H_k) δψ_k − i·dt/2·δH_k (ψ_k + ψ_{k+1}),
///   δH_k = diag(δV + δu_k·W + u_k·δW),
/// solved with the same tridiagonal factorisation as the step itself.
///   out, tout: (batch, n) final ψ and δψ, or (batch, steps+1, n) when trajectory.
template <class T>
void cn_jvp(const System<T>& sys, const Tangents<T>& tan, const std::complex<T>* psi0,
            std::complex<T>* out, std::complex<T>* tout, bool trajectory, int threads,
            const Poll& poll = {});

/// Second order: the adjoint of the tangent-augmented step
///   X = (ψ, δψ),  (I + i·dt/2·A_k) X_{k+1} = (I − i·dt/2·A_k) X_k,  A_k = [[H_k, 0], [δH_k, H_k]],
/// i.e. the reverse-mode gradient of Re⟨a, ψ⟩ + Re⟨b, δψ⟩ with respect to (ψ0, V, u, W)
/// (`grads`) and to the directions (δψ0, δV, δu, δW) (`tgrads`, equal to the first-order
/// adjoint of b). With a = 0 its `grads` are Hessian–vector products of Re⟨b, ψ⟩.
/// States are always rebuilt backwards from the final ψ and δψ (memory independent of
/// steps).
///   states, tstates: (batch, n) final ψ and δψ (from cn_jvp).
///   grad_out: cotangent a of ψ, null for zero; tgrad_out: cotangent b of δψ. Both
///             (batch, n), or (batch, steps+1, n) when grad_full.
template <class T>
void cn_adjoint2(const System<T>& sys, const Tangents<T>& tan, const std::complex<T>* states,
                 const std::complex<T>* tstates, const std::complex<T>* grad_out,
                 const std::complex<T>* tgrad_out, bool grad_full, const Gradients<T>& grads,
                 const Gradients<T>& tgrads, int threads, const Poll& poll = {});

/// Name of the instruction-set variant the kernels dispatch to on this CPU ("avx2" or "baseline").
const char* kernel_isa();

/// Where multi-threaded calls run: "openmp" (built with OpenMP: the process's OpenMP team,
/// torch's, for up to omp_get_max_threads() threads, else the core's own pool) or "pool".
const char* thread_runtime();

/// Whether multi-threaded calls may run on the calling thread's OpenMP team: false without
/// OpenMP and in a forked child (libgomp's team does not survive fork()).
bool team_allowed();

}  // namespace quflow
