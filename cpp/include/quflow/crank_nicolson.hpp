// Crank–Nicolson propagation of the 1-D Schrödinger equation and its adjoint.
//
//   i dψ/dt = H_k ψ,   H_k = −(1/dx²)·tridiag(1, −2, 1) + diag(V + u_k·W)
//   step k:  (I + i·dt/2·H_k) ψ_{k+1} = (I − i·dt/2·H_k) ψ_k
//
// on n interior points of a Dirichlet box. Pure C++/Eigen: no Python, no pybind11.
// Arrays are row-major, C-contiguous, complex interleaved (std::complex<T>).
#pragma once

#include <complex>
#include <cstddef>
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

  /// Throws std::invalid_argument on any structural violation.
  void check() const {
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
template <class T>
void cn_forward(const System<T>& sys, const std::complex<T>* psi0, std::complex<T>* out,
                bool trajectory, int threads);

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
                 int threads);

/// Name of the instruction-set variant the kernels dispatch to on this CPU ("avx2" or "baseline").
const char* kernel_isa();

}  // namespace quflow
