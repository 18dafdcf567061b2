# Type stubs for quflow._core (private). Arrays: numpy, exact dtype, C-contiguous.
from typing import Optional

import numpy as np
import numpy.typing as npt

def forward_c64(psi0: npt.NDArray[np.complex64], potential: npt.NDArray[np.float32],
                control: Optional[npt.NDArray[np.float32]] = None,
                control_shape: Optional[npt.NDArray[np.float32]] = None, *, dt: float,
                dx: float, steps: int, trajectory: bool = False,
                threads: int = 1) -> npt.NDArray[np.complex64]: ...
def forward_c128(psi0: npt.NDArray[np.complex128], potential: npt.NDArray[np.float64],
                 control: Optional[npt.NDArray[np.float64]] = None,
                 control_shape: Optional[npt.NDArray[np.float64]] = None, *, dt: float,
                 dx: float, steps: int, trajectory: bool = False,
                 threads: int = 1) -> npt.NDArray[np.complex128]: ...
def backward_c64(states: npt.NDArray[np.complex64], grad_out: npt.NDArray[np.complex64],
                 potential: npt.NDArray[np.float32],
                 control: Optional[npt.NDArray[np.float32]] = None,
                 control_shape: Optional[npt.NDArray[np.float32]] = None, *, dt: float,
                 dx: float, steps: int, need_psi0: bool = True, need_potential: bool = False,
                 need_control: bool = False, need_control_shape: bool = False,
                 threads: int = 1) -> tuple: ...
def backward_c128(states: npt.NDArray[np.complex128], grad_out: npt.NDArray[np.complex128],
                  potential: npt.NDArray[np.float64],
                  control: Optional[npt.NDArray[np.float64]] = None,
                  control_shape: Optional[npt.NDArray[np.float64]] = None, *, dt: float,
                  dx: float, steps: int, need_psi0: bool = True, need_potential: bool = False,
                  need_control: bool = False, need_control_shape: bool = False,
                  threads: int = 1) -> tuple: ...
# forward mode: (psi, tangent psi), each (batch, n) or (batch, steps+1, n)
def jvp_c64(psi0, potential, control=None, control_shape=None, tpsi0=None, tpotential=None,
            tcontrol=None, tcontrol_shape=None, *, dt: float, dx: float, steps: int,
            trajectory: bool = False, threads: int = 1) -> tuple: ...
def jvp_c128(psi0, potential, control=None, control_shape=None, tpsi0=None, tpotential=None,
             tcontrol=None, tcontrol_shape=None, *, dt: float, dx: float, steps: int,
             trajectory: bool = False, threads: int = 1) -> tuple: ...
# second order: 8 gradients (psi0, potential, control, control_shape, then of the tangents)
def adjoint2_c64(states, tstates, grad_out, tgrad_out, potential, control=None,
                 control_shape=None, tpotential=None, tcontrol=None, tcontrol_shape=None, *,
                 dt: float, dx: float, steps: int, need: list[bool],
                 threads: int = 1) -> tuple: ...
def adjoint2_c128(states, tstates, grad_out, tgrad_out, potential, control=None,
                  control_shape=None, tpotential=None, tcontrol=None, tcontrol_shape=None, *,
                  dt: float, dx: float, steps: int, need: list[bool],
                  threads: int = 1) -> tuple: ...
def kernel_isa() -> str: ...
def thread_runtime() -> str: ...
def team_allowed() -> bool: ...
