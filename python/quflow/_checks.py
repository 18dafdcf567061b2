"""Private input validation shared by quflow's public functions.

Every helper raises ``TypeError`` for a wrong kind of object or dtype and ``ValueError``
for a wrong value, shape or device, and names the argument it checked.
"""

from __future__ import annotations

import math
import numbers

import torch

_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}
_REAL_OF = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def tensor(name: str, x: object) -> torch.Tensor:
    """``x`` must be a CPU ``torch.Tensor`` with finite values."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.is_nested:
        raise TypeError(f"{name}: expected a dense (strided) tensor, got a nested tensor")
    if x.device.type != "cpu":
        raise ValueError(f"{name}: quflow's simulator runs on the CPU, got a tensor on "
                         f"{x.device}; move it with .cpu()")
    if x.is_sparse or x.layout != torch.strided:
        raise TypeError(f"{name}: expected a dense (strided) tensor, got layout {x.layout}")
    return x


def finite(name: str, x: torch.Tensor) -> None:
    if x.numel() and not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(f"{name}: contains NaN or Inf")


def real_dtype_of(name: str, x: torch.Tensor) -> torch.dtype:
    """Real precision (float32/float64) of a floating or complex tensor."""
    if x.dtype in _COMPLEX_OF:
        return x.dtype
    if x.dtype in _REAL_OF:
        return _REAL_OF[x.dtype]
    raise TypeError(f"{name}: expected a float32, float64, complex64 or complex128 tensor, "
                    f"got {x.dtype}")


def real_tensor(name: str, x: object, dtype: torch.dtype, ndims: tuple[int, ...]) -> torch.Tensor:
    """A real tensor of exactly ``dtype`` with ``x.ndim in ndims`` (values not checked)."""
    x = tensor(name, x)
    if x.dtype != dtype:
        hint = f"; convert it with .to({dtype})" if x.dtype.is_floating_point else ""
        raise TypeError(f"{name}: expected a real {dtype} tensor (the precision of psi0), "
                        f"got {x.dtype}{hint}")
    if x.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name}: expected a {want} tensor, got shape {tuple(x.shape)}")
    return x


def positive_float(name: str, x: object) -> float:
    """A finite number > 0 (Python number or 0-d tensor that does not require grad)."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise TypeError(f"{name}: expected a number, got a tensor of shape {tuple(x.shape)}")
        if x.requires_grad:
            raise TypeError(f"{name}: gradients with respect to {name} are not supported; "
                            f"pass a plain number")
        x = x.item()
    if torch.compiler.is_compiling() and not isinstance(x, (torch.Tensor, bool, int, str)):
        # torch.compile traces a Python float as a symbol (dynamic=True, or once a second
        # value has been seen), which math.isfinite would turn into a graph break: the
        # kernels check it at run time instead and raise the same ValueError
        return x
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(x).__name__}")
    value = float(x)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a finite number > 0, got {value}")
    return value


def count(name: str, x: object, minimum: int = 0) -> int:
    """An integer >= ``minimum`` (bools are refused)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(x).__name__}")
    if int(x) < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {int(x)}")
    return int(x)


def complex_of(dtype: torch.dtype) -> torch.dtype:
    return _COMPLEX_OF[dtype]


def as_core_array(x: torch.Tensor | None):
    """C-contiguous, aligned numpy view of a resolved tensor (no conj/neg bits), or None.

    A tensor over a misaligned buffer (``torch.frombuffer`` at an odd offset) is copied:
    the C++ binding refuses misaligned arrays.
    """
    if x is None:
        return None
    try:
        array = x.detach().resolve_conj().resolve_neg().contiguous().numpy()
        return array if array.flags.aligned else array.copy()
    except RuntimeError as exc:  # e.g. a functorch wrapper, which has no storage to hand over
        raise RuntimeError("quflow: a tensor without storage reached the C++ kernels; call "
                           "them through quflow's public functions (they support torch.func "
                           "transforms)") from exc
