"""Circuit recording and execution for :class:`quflow.QuantumLayer` (private).

A user circuit ``circuit(inputs, **weights)`` is recorded with torch tensors as
arguments, so every gate angle is a torch expression of the inputs and weights.
The recorded operations are expanded into a fixed gate set in which every
parametrised gate has the two-term shift rule

    ∂f/∂a = [f(a + π/2) − f(a − π/2)] / 2,                                   (1)

(RX, RY, RZ, PhaseShift, IsingXX, IsingYY, IsingZZ, MultiRZ: generator spectrum
{±1/2} or {0, 1}). The circuit is then a *program* — a static gate list — plus an
angle matrix ``A`` of shape ``(B, G)`` (one column per parametrised gate), and an
engine evaluates ``f(A)`` of shape ``(B, M)`` and the vector–Jacobian product
``gᵀ ∂f/∂A`` of shape ``(B, G)``.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ._extras import require

qml = require("pennylane", "quantum")
require("pennylane_lightning", "quantum")  # the lightning.qubit device

SHIFT = math.pi / 2

_PARAM_GATES = frozenset(
    {"RX", "RY", "RZ", "PhaseShift", "IsingXX", "IsingYY", "IsingZZ", "MultiRZ"}
)
_FIXED_GATES = frozenset(
    {
        "CNOT", "CZ", "CY", "SWAP", "Hadamard", "PauliX", "PauliY", "PauliZ",
        "S", "T", "SX", "Toffoli", "CSWAP", "Identity",
    }
)
_IGNORED = frozenset({"GlobalPhase", "Barrier", "Snapshot"})
_MAX_DEPTH = 32


MATRIX = "QubitUnitary"  # gate name of a fixed matrix (ops given only by a matrix)


@dataclass(frozen=True)
class Gate:
    """One gate of a program: lightning method name, device wires, inverse flag,
    and the angle column (−1 for a gate without parameter). A fixed-matrix gate
    (name ``MATRIX``) carries its ``(2**k, 2**k)`` complex128 matrix, compared by content."""

    name: str
    wires: tuple[int, ...]
    inverse: bool
    column: int
    digest: bytes = b""
    matrix: Any = field(default=None, compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class Readout:
    """How one returned measurement is computed from the raw expectation values ``e``
    (the program's outputs): ``"expval"``: ``e_i``; ``"var"``: ``e_j − e_i²`` with
    ``O_j = O_i²``; ``"probs"``: ``p_k = 2^{-m} (1 + Σ_S (−1)^{|k ∧ S|} e_S)`` over the
    non-empty subsets ``S`` of the ``m`` wires (``e_S = ⟨Π_{w∈S} Z_w⟩``), bit ``m−1−i`` of
    ``k`` and ``S`` for the ``i``-th wire (PennyLane's order)."""

    kind: str
    raw: tuple[int, ...]


@dataclass(frozen=True)
class Program:
    """A static circuit: gates, and the measured observables as Pauli sums.

    ``terms[m]`` lists ``(coefficient, ((wire, "X"|"Y"|"Z"), ...))`` of measurement
    ``m``; ``matrices[m]`` holds ``(matrix, wires)`` for an observable without a
    Pauli representation (then ``terms[m]`` is empty). These are the *raw* expectation
    values; ``readout`` maps them to the returned measurements (expval, var, probs).
    """

    n_wires: int
    gates: tuple[Gate, ...]
    terms: tuple[tuple[tuple[float, tuple[tuple[int, str], ...]], ...], ...]
    matrices: tuple[Any, ...]
    single_output: bool
    readout: tuple[Readout, ...] = ()
    labels: tuple = field(default=(), compare=False)

    @property
    def n_outputs(self) -> int:
        return len(self.terms)

    @property
    def n_angles(self) -> int:
        return sum(g.column >= 0 for g in self.gates)

    def key(self) -> tuple:
        """Hashable structure (for caching engines); matrices by content."""
        mats = tuple(
            None if m is None else (m[0].tobytes(), m[1]) for m in self.matrices
        )
        return (self.n_wires, self.gates, self.terms, mats, self.readout)

    @property
    def plain(self) -> bool:
        """Every returned measurement is one raw expectation value, in order."""
        return all(r.kind == "expval" and r.raw == (i,) for i, r in enumerate(self.readout))

    def read(self, raw: torch.Tensor) -> torch.Tensor:
        """The returned measurements ``(B, O)`` from raw expectation values ``(B, R)``
        (differentiable torch ops, so derivatives of every order stay exact)."""
        if self.plain:
            return raw
        blocks = []
        for r in self.readout:
            if r.kind == "expval":
                blocks.append(raw[:, r.raw[0] : r.raw[0] + 1])
            elif r.kind == "var":
                blocks.append(raw[:, r.raw[1] : r.raw[1] + 1] - raw[:, r.raw[0] : r.raw[0] + 1] ** 2)
            else:
                m = (len(r.raw) + 1).bit_length() - 1
                blocks.append((1.0 + raw[:, list(r.raw)] @ _subset_signs(m).to(raw.dtype)) / 2**m)
        return torch.cat(blocks, dim=1)


def _subset_signs(m: int) -> torch.Tensor:
    """``(2^m − 1, 2^m)``: ``(−1)^{popcount(S & k)}`` for subsets ``S = 1 … 2^m−1``."""
    s = torch.arange(1, 2**m)[:, None]
    k = torch.arange(2**m)[None, :]
    parity = torch.zeros(s.shape[0], k.shape[1], dtype=torch.int64)
    both = s & k
    for bit in range(m):
        parity ^= (both >> bit) & 1
    return (1 - 2 * parity).to(torch.float64)


def _trainable(op: Any) -> bool:
    return any(isinstance(p, torch.Tensor) and p.requires_grad for p in op.data)


def _expand(op: Any, out: list, depth: int = 0) -> None:
    name = op.name
    if name in _IGNORED:
        return
    if isinstance(op, qml.measurements.MidMeasureMP) or name.startswith("Conditional"):
        raise ValueError(
            f"QuantumLayer: mid-circuit measurements and qml.cond are not supported ({name} "
            f"on wires {list(op.wires)}); measure at the end of the circuit"
        )
    if name in _PARAM_GATES or name in _FIXED_GATES:
        out.append((op, False))
        return
    base = getattr(op, "base", None)
    if name.startswith("Adjoint(") and base is not None and base.name in _FIXED_GATES:
        out.append((base, True))
        return
    # an operation given by a matrix (QubitUnitary, custom ops with compute_matrix):
    # applied as that matrix when nothing in it is differentiated
    matrix_only = name == "QubitUnitary" or not op.has_decomposition
    if matrix_only and op.has_matrix and not _trainable(op):
        if getattr(op, "batch_size", None) is not None:
            raise ValueError(
                f"QuantumLayer: operation {name} on wires {list(op.wires)} has a batch of "
                "matrices; give it one matrix per call (index the inputs per sample)"
            )
        out.append((op, "matrix"))
        return
    if depth >= _MAX_DEPTH or not op.has_decomposition:
        trainable = (
            " Its matrix depends on differentiated inputs or weights, and an operation given "
            "only by a matrix has no exact derivative rule here; decompose it into rotations."
            if op.has_matrix else ""
        )
        raise ValueError(
            f"QuantumLayer: operation {name} on wires {list(op.wires)} has no "
            f"decomposition into the supported gates ({sorted(_PARAM_GATES)} with "
            f"parameters, {sorted(_FIXED_GATES)} without, or a fixed matrix).{trainable}"
        )
    for sub in op.decomposition():
        _expand(sub, out, depth + 1)


def _observable_terms(obs: Any, wire_index: dict, square: bool = False) -> tuple[tuple, Any]:
    """Pauli terms of ``obs`` (or of ``obs²``), or its matrix if it has no Pauli form."""
    rep = obs.pauli_rep
    if rep is not None:
        if square:
            rep = rep @ rep
        terms = []
        for word, coeff in rep.items():
            if isinstance(coeff, torch.Tensor) and coeff.requires_grad:
                raise ValueError(
                    f"QuantumLayer: observable {obs} has a trainable coefficient; "
                    "put trainable scalings in a classical layer after the circuit"
                )
            c = complex(coeff)
            if abs(c.imag) > 1e-12:
                raise ValueError(f"QuantumLayer: observable {obs} is not Hermitian")
            if abs(c) < 1e-15:
                continue
            paulis = tuple(sorted((wire_index[w], p) for w, p in dict(word).items()))
            terms.append((float(c.real), paulis))
        return tuple(terms), None
    matrix = np.ascontiguousarray(qml.matrix(obs), dtype=np.complex128)
    if not np.allclose(matrix, matrix.conj().T, atol=1e-12):
        raise ValueError(f"QuantumLayer: observable {obs} is not Hermitian")
    return (), (matrix, tuple(wire_index[w] for w in obs.wires))


def _wire_labels(tape: Any) -> list:
    labels = list(tape.wires)
    try:
        return sorted(labels)
    except TypeError:
        return labels


def _raw_index(raw: dict, terms: tuple, matrix: Any) -> int:
    key = (terms, None if matrix is None else (matrix[0].tobytes(), matrix[1]))
    if key not in raw:
        raw[key] = (len(raw), terms, matrix)
    return raw[key][0]


def _readout(mp: Any, wire_index: dict, raw: dict) -> Readout:
    """Raw expectation values of one measurement (see :class:`Readout`)."""
    if isinstance(mp, qml.measurements.ExpectationMP) and mp.obs is not None:
        t, m = _observable_terms(mp.obs, wire_index)
        return Readout("expval", (_raw_index(raw, t, m),))
    if isinstance(mp, qml.measurements.VarianceMP) and mp.obs is not None:
        t, m = _observable_terms(mp.obs, wire_index)
        if m is None:
            t2, m2 = _observable_terms(mp.obs, wire_index, square=True)
        else:
            t2, m2 = (), (np.ascontiguousarray(m[0] @ m[0]), m[1])
        return Readout("var", (_raw_index(raw, t, m), _raw_index(raw, t2, m2)))
    if isinstance(mp, qml.measurements.ProbabilityMP) and mp.mv is None:
        if mp.obs is not None and mp.obs.diagonalizing_gates():
            raise ValueError(
                f"QuantumLayer: {mp} is in a rotated basis; rotate the state in the circuit "
                "and measure qml.probs(wires=...)"
            )
        wires = list(mp.wires) if len(mp.wires) else list(wire_index)
        m = len(wires)
        if m > 12:
            raise ValueError(f"QuantumLayer: qml.probs over {m} wires (2^{m} outputs) is too large; at most 12")
        index = []
        for subset in range(1, 2**m):
            paulis = tuple(
                sorted((wire_index[wires[i]], "Z") for i in range(m) if subset >> (m - 1 - i) & 1)
            )
            index.append(_raw_index(raw, ((1.0, paulis),), None))
        return Readout("probs", tuple(index))
    raise ValueError(
        f"QuantumLayer: {type(mp).__name__} ({mp}) is not supported; return qml.expval(obs), "
        "qml.var(obs), qml.probs(wires=...) or a list of them"
    )


def record(
    func: Callable,
    args: tuple,
    kwargs: dict,
    wires: Sequence | None,
    batch: int,
    columns_out: list | None = None,
) -> tuple[Program, torch.Tensor]:
    """Record ``func(*args, **kwargs)`` and return its program and angles ``(B, G)``.

    Angles are float64 torch tensors carrying the autograd graph back to the
    inputs and weights. If ``columns_out`` is a list, it receives one
    ``(angle, per_sample)`` pair per column: the recorded angle before broadcasting
    (a scalar when it is shared by all samples). ``wires=None``: the wires the circuit
    touches, sorted (``Program.labels``).
    """
    with qml.queuing.AnnotatedQueue() as queue:
        result = func(*args, **kwargs)
    tape = qml.tape.QuantumScript.from_queue(queue)
    if wires is None:
        wires = _wire_labels(tape)
    wire_index = {w: i for i, w in enumerate(wires)}

    def check_wires(what: Any, name: str) -> None:
        unknown = [w for w in what.wires if w not in wire_index]
        if unknown:
            raise ValueError(
                f"QuantumLayer: {name} acts on wires {unknown} that are not in the "
                f"layer's wires {list(wires)}"
            )

    expanded: list = []
    for op in tape.operations:
        check_wires(op, op.name)
        _expand(op, expanded)

    gates, columns = [], []
    for op, how in expanded:
        wires_of = tuple(wire_index[w] for w in op.wires)
        if how == "matrix":
            matrix = np.ascontiguousarray(
                qml.math.toarray(qml.math.unwrap(qml.matrix(op))), dtype=np.complex128
            )
            gates.append(Gate(MATRIX, wires_of, False, -1, matrix.tobytes(), matrix))
            continue
        col = -1
        if op.num_params:
            angle = op.data[0]
            if not isinstance(angle, torch.Tensor):
                angle = torch.as_tensor(np.asarray(angle, dtype=np.float64))
            angle = angle.to(torch.float64)
            if angle.ndim > 1 or (angle.ndim == 1 and angle.shape[0] not in (1, batch)):
                raise ValueError(
                    f"QuantumLayer: the angle of {op.name} on wires {list(op.wires)} has "
                    f"shape {tuple(angle.shape)}; expected a scalar or one angle per "
                    f"sample ({batch},). Index inputs as inputs[..., i]"
                )
            col = len(columns)
            columns.append(angle.expand(batch))
            if columns_out is not None:
                per_sample = angle.ndim == 1 and angle.shape[0] > 1
                columns_out.append((angle if per_sample else angle.reshape(()), per_sample))
        gates.append(Gate(op.name, wires_of, bool(how), col))

    measurements = tape.measurements
    if not measurements:
        raise ValueError("QuantumLayer: the circuit measures nothing; return qml.expval(...)")
    single = not isinstance(result, (list, tuple))
    returned = [result] if single else list(result)
    if len(returned) != len(measurements) or any(
        not any(r is m for m in measurements) for r in returned
    ):
        raise ValueError(
            "QuantumLayer: the circuit must return every measurement it makes "
            f"(queued {len(measurements)}, returned {len(returned)} of them)"
        )
    raw: dict = {}
    readout = []
    for mp in returned:  # the order the circuit returns them
        check_wires(mp, f"measurement {mp}")
        readout.append(_readout(mp, wire_index, raw))
    ordered = sorted(raw.values(), key=lambda v: v[0])
    angles = (
        torch.stack(columns, dim=1)
        if columns
        else torch.zeros(batch, 0, dtype=torch.float64)
    )
    program = Program(
        n_wires=len(wires),
        gates=tuple(gates),
        terms=tuple(t for _, t, _ in ordered),
        matrices=tuple(m for _, _, m in ordered),
        single_output=single and readout[0].kind != "probs",
        readout=tuple(readout),
        labels=tuple(wires),
    )
    return program, angles


_CNOT = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=np.complex128)


def _is_cnot(matrix: np.ndarray) -> bool:
    return matrix.shape == (4, 4) and bool(np.array_equal(matrix, _CNOT))


def apply_matrix(states: np.ndarray, matrix: np.ndarray, wires: tuple, n: int) -> np.ndarray:
    """Apply a ``(d, d)`` / ``(B, d, d)`` matrix on ``wires`` to states ``(B, K, 2**n)``."""
    batch, count = states.shape[:2]
    k = len(wires)
    if k == 1:  # two amplitudes per pair of basis states: no axis moves, no einsum
        w = wires[0]
        t = states.reshape(batch, count, 2**w, 2, 2 ** (n - 1 - w))
        a0, a1 = t[:, :, :, 0], t[:, :, :, 1]
        if matrix.ndim == 2:
            m = [[matrix[i, j] for j in range(2)] for i in range(2)]
            zero = [[matrix[i, j] == 0 for j in range(2)] for i in range(2)]
        else:
            m = [[matrix[:, i, j][:, None, None, None] for j in range(2)] for i in range(2)]
            zero = [[not matrix[:, i, j].any() for j in range(2)] for i in range(2)]
        out = np.empty_like(t)
        tmp = None
        for i in range(2):  # out_i = m_i0 a0 + m_i1 a1, skipping zero entries
            o = out[:, :, :, i]
            terms = [(m[i][j], a) for j, a in enumerate((a0, a1)) if not zero[i][j]]
            if not terms:
                o[...] = 0
                continue
            np.multiply(terms[0][1], terms[0][0], out=o)
            if len(terms) == 2:
                tmp = np.multiply(terms[1][1], terms[1][0], out=tmp)
                o += tmp
        return out.reshape(batch, count, 2**n)
    if k == 2 and matrix.ndim == 2 and _is_cnot(matrix):
        t = states.reshape((batch, count) + (2,) * n)
        out = t.copy()
        c, x = 2 + wires[0], 2 + wires[1]
        on = [slice(None)] * (2 + n)
        on[c] = 1
        flip, keep = list(on), list(on)
        flip[x], keep[x] = 1, 0
        out[tuple(keep)] = t[tuple(flip)]
        out[tuple(flip)] = t[tuple(keep)]
        return out.reshape(batch, count, 2**n)
    t = states.reshape((batch, count) + (2,) * n)
    src = [2 + w for w in wires]
    dst = list(range(2 + n - k, 2 + n))
    t = np.moveaxis(t, src, dst)
    shape = t.shape
    t = t.reshape(batch, count, -1, 2**k)
    if matrix.ndim == 2:
        t = t @ matrix.T
    else:
        t = np.einsum("bkrj,bij->bkri", t, matrix)
    t = np.moveaxis(t.reshape(shape), dst, src)
    return np.ascontiguousarray(t).reshape(batch, count, 2**n)


def shift_rows(angles: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Rows ``A ± (π/2) e_j`` for ``j`` in ``cols``: ``(2·C·B, G)``, all ``+`` shifts first."""
    batch, n_angles = angles.shape
    steps = torch.zeros(cols.numel(), n_angles, dtype=angles.dtype)
    steps[torch.arange(cols.numel()), cols] = SHIFT
    shifted = torch.cat([angles[None] + steps[:, None], angles[None] - steps[:, None]])
    return shifted.reshape(2 * cols.numel() * batch, n_angles)


# --------------------------------------------------------------------------- engines


class LightningEngine:
    """Executes a program sample by sample on lightning.qubit's C++ state vector.

    Forward: ``B`` runs of the gate list on one ``StateVectorC128``; the final
    states are kept for the backward pass. Backward (``diff_method="adjoint"``):
    one adjoint sweep per sample with the cotangent-weighted observable
    ``Σ_m g_bm O_m`` (lightning's ``AdjointJacobianC128``), i.e. the
    vector–Jacobian product, not the Jacobian.
    """

    def __init__(self, program: Program) -> None:
        from pennylane_lightning.lightning_qubit_ops import StateVectorC128
        from pennylane_lightning.lightning_qubit_ops.algorithms import (
            AdjointJacobianC128,
            create_ops_listC128,
        )
        from pennylane_lightning.lightning_qubit_ops.observables import (
            HamiltonianC128,
            HermitianObsC128,
            NamedObsC128,
            TensorProdObsC128,
        )

        self.program = program
        n = program.n_wires
        self._sv = StateVectorC128(n)
        self._adjoint = AdjointJacobianC128()
        self._ops_list = create_ops_listC128
        self._hamiltonian = HamiltonianC128
        def method(g: Gate):
            if g.name != MATRIX:
                return getattr(self._sv, g.name)
            flat = np.ascontiguousarray(g.matrix.ravel())
            return lambda wires, inverse, _params: self._sv.applyMatrix(flat, wires, inverse)

        self._calls = [(method(g), list(g.wires), g.inverse, g.column) for g in program.gates]
        self._names = [g.name for g in program.gates]
        self._wires = [list(g.wires) for g in program.gates]
        self._inverses = [g.inverse for g in program.gates]
        self._no_matrix = [
            np.ascontiguousarray(g.matrix.ravel()) if g.name == MATRIX else np.zeros(0, dtype=np.complex128)
            for g in program.gates
        ]
        self._no_controls = [[] for _ in program.gates]
        self._no_values = [[] for _ in program.gates]
        self._trainable = list(range(program.n_angles))

        def word(paulis):
            named = [NamedObsC128("Pauli" + p, [w]) for w, p in paulis]
            return named[0] if len(named) == 1 else TensorProdObsC128(named)

        # adjoint observables (terms of every measurement, weighted by the cotangent in
        # the VJP); identity words are constants: no state dependence, no gradient
        self._obs, coeffs, owner = [], [], []
        self._const = np.zeros(program.n_outputs)
        for m, (terms, matrix) in enumerate(zip(program.terms, program.matrices)):
            if matrix is not None:
                self._obs.append(HermitianObsC128(matrix[0].ravel(), list(matrix[1])))
                coeffs.append(1.0)
                owner.append(m)
            for c, paulis in terms:
                if not paulis:
                    self._const[m] += c
                    continue
                self._obs.append(word(paulis))
                coeffs.append(c)
                owner.append(m)
        self._hermitian = [(m, mat) for m, mat in enumerate(program.matrices) if mat is not None]
        self._lock = threading.Lock()  # one state vector per engine: serialise runs
        self._coeffs_np = np.asarray(coeffs, dtype=np.float64)
        self._owner_np = np.asarray(owner, dtype=np.int64)
        self.dim = 2**n
        # expectations straight from the final states (B, 2**n), vectorised over the
        # batch: P|j⟩ = i^{n_Y} (−1)^{popcount(j & z)} |j ⊕ x⟩, wire w ↔ bit n−1−w
        index = np.arange(self.dim)
        self._words = []
        diagonal = []
        for m, terms in enumerate(program.terms):
            for c, paulis in terms:
                if not paulis:
                    continue
                x = z = n_y = 0
                for w, p in paulis:
                    bit = 1 << (n - 1 - w)
                    x |= bit if p in "XY" else 0
                    z |= bit if p in "YZ" else 0
                    n_y += p == "Y"
                parity = np.array([bin(j & z).count("1") & 1 for j in range(self.dim)])
                phase = (1j**n_y) * (1 - 2 * parity)
                if x == 0:  # diagonal word (Z's only): ⟨P⟩ = Σ_j |ψ_j|² (−1)^{popcount(j & z)}
                    diagonal.append((m, c, phase.real))
                else:
                    self._words.append((m, c, index ^ x, phase.astype(np.complex128)))
        # all diagonal words at once: probabilities (B, 2**n) @ signs (2**n, W) → (B, W)
        self._diag_owner = np.array([m for m, _, _ in diagonal], dtype=np.int64)
        self._diag_signs = (
            np.stack([c * sign for _, c, sign in diagonal], axis=1) if diagonal else np.zeros((self.dim, 0))
        )

    def _prepare(self, row: np.ndarray) -> None:
        self._sv.resetStateVector()
        for method, wires, inverse, col in self._calls:
            method(wires, inverse, [row[col]] if col >= 0 else [])

    def run(self, angles: np.ndarray, keep_states: bool = True):
        """Values ``(B, M)`` and, if asked, final states ``(B, 2**n)``."""
        with self._lock:
            return self._run(angles, keep_states)

    def _run(self, angles: np.ndarray, keep_states: bool):
        batch = angles.shape[0]
        states = np.empty((batch, self.dim), dtype=np.complex128)
        for b in range(batch):
            self._prepare(angles[b])
            self._sv.getState(states[b])
        values = np.tile(self._const, (batch, 1))
        if self._diag_signs.shape[1]:
            probs = states.real**2 + states.imag**2
            np.add.at(values, (slice(None), self._diag_owner), probs @ self._diag_signs)
        for m, c, perm, phase in self._words:
            values[:, m] += c * np.einsum("bj,bj->b", states[:, perm].conj(), states * phase).real
        for m, (matrix, wires) in self._hermitian:
            applied = apply_matrix(states[:, None], matrix, wires, self.program.n_wires)[:, 0]
            values[:, m] += np.einsum("bj,bj->b", states.conj(), applied).real
        return values, (states if keep_states else None)

    def vjp(self, angles: np.ndarray, cotangent: np.ndarray, states=None) -> np.ndarray:
        """``Σ_m g_bm ∂f_bm/∂A_bj`` of shape ``(B, G)`` by one adjoint sweep per sample."""
        with self._lock:
            return self._vjp(angles, cotangent, states)

    def _vjp(self, angles: np.ndarray, cotangent: np.ndarray, states) -> np.ndarray:
        batch, n_angles = angles.shape
        out = np.zeros((batch, n_angles))
        if n_angles == 0 or not self._obs:
            return out
        weights = cotangent[:, self._owner_np] * self._coeffs_np  # (B, terms)
        for b in range(batch):
            if not weights[b].any():
                continue
            if states is None:
                self._prepare(angles[b])
            else:
                self._sv.updateData(states[b])
            row = angles[b]
            params = [[row[c]] if c >= 0 else [] for _, _, _, c in self._calls]
            ops = self._ops_list(
                self._names, params, self._wires, self._inverses,
                self._no_matrix, self._no_controls, self._no_values,
            )
            obs = self._hamiltonian(weights[b], self._obs)
            out[b] = np.asarray(self._adjoint(self._sv, [obs], ops, self._trainable)).reshape(-1)
        return out


    # ------------------------------------------------------------ second order, one sweep

    def _apply_observable(self, states: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``H_b = Σ_m g_bm O_m`` (identity terms left out: they carry no gradient) applied
        to states ``(B, K, 2**n)``."""
        out = np.zeros_like(states)
        if self._diag_signs.shape[1]:
            diag = weights[:, self._diag_owner] @ self._diag_signs.T  # (B, 2**n)
            out += diag[:, None, :] * states
        for m, c, perm, phase in self._words:  # (P ψ)[k] = phase[k ⊕ x] ψ[k ⊕ x]
            out += (c * weights[:, m])[:, None, None] * (states * phase)[..., perm]
        for m, (matrix, wires) in self._hermitian:
            out += weights[:, m, None, None] * apply_matrix(states, matrix, wires, self.program.n_wires)
        return out

    def _cross_expectations(self, psi: np.ndarray, dpsi: np.ndarray) -> np.ndarray:
        """``2 Re⟨ψ|O_m|ψ̇⟩`` for every raw output ``m``: ``(B, M)``."""
        out = np.zeros((psi.shape[0], self.program.n_outputs))
        if self._diag_signs.shape[1]:
            cross = (psi.conj() * dpsi).real
            np.add.at(out, (slice(None), self._diag_owner), 2 * cross @ self._diag_signs)
        for m, c, perm, phase in self._words:
            out[:, m] += 2 * c * np.einsum("bj,bj->b", psi.conj(), (dpsi * phase)[:, perm]).real
        for m, (matrix, wires) in self._hermitian:
            applied = apply_matrix(dpsi[:, None], matrix, wires, self.program.n_wires)[:, 0]
            out[:, m] += 2 * np.einsum("bj,bj->b", psi.conj(), applied).real
        return out

    def directional(self, angles: np.ndarray, cotangent: np.ndarray, direction: np.ndarray,
                    need_a: bool = True, need_g: bool = True):
        """Derivatives of ``f`` and of the VJP ``V = gᵀ ∂f/∂A`` along ``d = direction``:
        ``(Σ_j d_j ∂V_i/∂A_j  (B, G),  Σ_j d_j ∂f_m/∂A_j  (B, M))``, exactly, in one sweep.

        Forward mode over the adjoint method, vectorised over the batch (numpy): the
        forward pass carries ``ψ`` and its tangent ``ψ̇ ← U ψ̇ + d_k (−i G_k) U ψ``; with
        ``λ = H ψ``, ``λ̇ = H ψ̇`` (``H = Σ_m g_m O_m``) the reverse pass k = K … 1 reads
        ``V̇_k = 2 Im(⟨λ̇|G_k|φ⟩ + ⟨λ|G_k|φ̇⟩)`` (``φ`` the state after gate k) and steps
        back with ``φ ← U†φ``, ``φ̇ ← U†φ̇ + d_k (iG_k) U†φ`` (and the same for ``λ``).
        Memory: four states per sample, whatever the number of directions' columns.
        """
        # samples in chunks of ~CHUNK_BYTES of states, so that each gate's sweep stays in cache
        chunk = max(1, int(os.environ.get("QUFLOW_CHUNK_BYTES", 1 << 20)) // (64 * self.dim))
        if angles.shape[0] > chunk:
            parts = [
                self.directional(angles[i : i + chunk], cotangent[i : i + chunk], direction[i : i + chunk], need_a, need_g)
                for i in range(0, angles.shape[0], chunk)
            ]
            return tuple(None if p[0] is None else np.concatenate(p) for p in zip(*parts))
        return self._directional(angles, cotangent, direction, need_a, need_g)

    def _blocks(self) -> list[list[int]]:
        """Runs of consecutive one-qubit gates on the same wire (``Rot`` = RZ·RY·RZ), each
        fused into one 2×2 matrix by :meth:`_directional`; any other gate is its own run."""
        blocks: list[list[int]] = []
        for k, gate in enumerate(self.program.gates):
            prev = self.program.gates[blocks[-1][-1]] if blocks else None
            if prev is not None and len(gate.wires) == 1 and prev.wires == gate.wires:
                blocks[-1].append(k)
            else:
                blocks.append([k])
        return blocks

    def _directional(self, angles, cotangent, direction, need_a, need_g):
        """:meth:`directional` on one chunk. Gates are taken in fused runs ``U = U_e ⋯ U_s``:
        with ``G'_k = U_{>k} G_k U_{>k}†`` (``U_{>k}`` the run's gates after k), the forward
        tangent is ``ψ̇ ← Uψ̇ + Σ_k d_k (−iG'_k) Uψ``, and at the run's end
        ``V̇_k = 2 Im(⟨λ̇|G'_k|φ⟩ + ⟨λ|G'_k|φ̇⟩) + 2 Re⟨λ|Σ_{j>k} d_j [G'_k, G'_j]|φ⟩``;
        stepping back, ``[φ̇, λ̇] ← U†([φ̇, λ̇] + Σ_k i d_k G'_k [φ, λ])``."""
        from .metric import _gate_matrix, _generator

        n, batch, dim = self.program.n_wires, angles.shape[0], self.dim
        gates = self.program.gates
        runs = []  # (wires, U, [(column, G'_k, d_k)])
        for block in self._blocks():
            wires = gates[block[0]].wires
            u = None
            parts = []
            for k in reversed(block):  # u = U_{>k} while k is visited
                gate = gates[k]
                if gate.column >= 0:
                    gen = _generator(gate.name, len(wires))
                    g_prime = gen if u is None else u @ gen @ np.conj(np.swapaxes(u, -1, -2))
                    parts.append((gate.column, g_prime, direction[:, gate.column]))
                m = _gate_matrix(gate, angles)
                u = m if u is None else u @ m
            parts.reverse()
            runs.append((wires, u, parts))

        def combine(terms):  # Σ c_b M  with c (B,), M (d, d) or (B, d, d) -> (B, d, d) or None
            out = None
            for c, m in terms:
                if not c.any():
                    continue
                t = c[:, None, None] * m
                out = t if out is None else out + t
            return out

        pair = np.zeros((batch, 2, dim), dtype=np.complex128)  # [ψ, ψ̇]
        pair[:, 0, 0] = 1.0
        for wires, u, parts in runs:
            pair = apply_matrix(pair, u, wires, n)
            m = combine([(-1j * d, g) for _, g, d in parts])
            if m is not None:
                pair[:, 1] += apply_matrix(pair[:, :1], m, wires, n)[:, 0]
        grad_g = self._cross_expectations(pair[:, 0], pair[:, 1]) if need_g else None
        if not need_a:
            return None, grad_g
        grad_a = np.zeros(angles.shape)
        # [φ, φ̇, λ̇, λ]: per sample, ⟨[λ̇, λ]|[G'φ, G'φ̇]⟩ is one contiguous dot product
        state = np.concatenate([pair, self._apply_observable(pair, cotangent)[:, ::-1]], axis=1)
        for wires, u, parts in reversed(runs):
            for i, (col, g, _) in enumerate(parts):
                g_phi = apply_matrix(state[:, :2], g, wires, n)
                v = np.array([np.vdot(state[b, 2:], g_phi[b]) for b in range(batch)]).imag
                comm = combine([(d, g @ h - h @ g) for _, h, d in parts[i + 1 :]])
                if comm is not None:
                    c_phi = apply_matrix(state[:, :1], comm, wires, n)[:, 0]
                    v = v + np.einsum("bj,bj->b", state[:, 3].conj(), c_phi).real
                grad_a[:, col] = 2 * v
            m = combine([(1j * d, g) for _, g, d in parts])
            if m is not None:
                corr = apply_matrix(state[:, [0, 3]], m, wires, n)
                state[:, 1] += corr[:, 0]
                state[:, 2] += corr[:, 1]
            state = apply_matrix(state, np.conj(np.swapaxes(u, -1, -2)), wires, n)
        return grad_a, grad_g


class DeviceEngine:
    """Executes a program through any PennyLane device (``qml.execute``); with ``shots``
    the values are sampled estimates.

    It has no VJP of its own: it always runs behind :class:`ShiftEngine` (the two-term
    shift rule (1) is unbiased for sampled estimates too)."""

    def __init__(self, program: Program, device: Any, wires: Sequence, shots: Any = None) -> None:
        self.program = program
        self.device = device
        self.shots = shots
        label = list(wires)
        ops_by_name = {}
        for g in program.gates:
            ops_by_name[g.name] = getattr(qml, g.name)
        self._ops = ops_by_name
        observables = []
        for terms, matrix in zip(program.terms, program.matrices):
            if matrix is not None:
                observables.append(qml.Hermitian(matrix[0], wires=[label[w] for w in matrix[1]]))
                continue
            parts = []
            for c, paulis in terms:
                word = (
                    qml.prod(*[getattr(qml, "Pauli" + p)(label[w]) for w, p in paulis])
                    if paulis
                    else qml.Identity(label[0])
                )
                parts.append(c * word)
            observables.append(qml.sum(*parts) if len(parts) > 1 else parts[0])
        self._observables = observables
        self._labels = label

    def _tape(self, row: np.ndarray):
        ops = []
        for g in self.program.gates:
            cls = self._ops[g.name]
            wires = [self._labels[w] for w in g.wires]
            if g.name == MATRIX:
                ops.append(qml.QubitUnitary(g.matrix, wires=wires))
                continue
            op = cls(float(row[g.column]), wires=wires) if g.column >= 0 else cls(wires=wires)
            ops.append(qml.adjoint(op) if g.inverse else op)
        return qml.tape.QuantumScript(ops, [qml.expval(o) for o in self._observables], shots=self.shots)

    def run(self, angles: np.ndarray, keep_states: bool = True):
        tapes = [self._tape(row) for row in angles]
        results = qml.execute(tapes, self.device, diff_method=None)
        values = np.asarray([np.atleast_1d(np.asarray(r, dtype=np.float64)) for r in results])
        return values.reshape(angles.shape[0], self.program.n_outputs), None


def shift_vjp(engine: Any, angles: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
    """Parameter-shift VJP (1): ``2G`` shifted runs per sample, batched in one call."""
    batch, n_angles = angles.shape
    if n_angles == 0:
        return np.zeros((batch, 0))
    shifted = shift_rows(torch.from_numpy(angles), torch.arange(n_angles)).numpy()
    values, _ = engine.run(shifted, keep_states=False)
    values = values.reshape(2, n_angles, batch, -1)
    d = 0.5 * (values[0] - values[1])  # (G, B, M) = ∂f/∂a_j
    return np.einsum("jbm,bm->bj", d, cotangent)


class ShiftEngine:
    """Wraps an engine so that its VJP uses the parameter-shift rule (1)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.program = engine.program

    def run(self, angles: np.ndarray, keep_states: bool = True):
        return self.engine.run(angles, keep_states=False)

    def vjp(self, angles: np.ndarray, cotangent: np.ndarray, states=None) -> np.ndarray:
        return shift_vjp(self.engine, angles, cotangent)
