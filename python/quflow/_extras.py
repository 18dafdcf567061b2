"""Optional dependencies: a module that needs one imports it through :func:`require`, so
that a missing one names the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {
    "quantum": "PennyLane and pennylane-lightning (hybrid layers, templates, metric tensor, QNG)",
    "experiments": "matplotlib and tqdm (quflow reproduce: figures and progress)",
}


def require(module: str, extra: str) -> ModuleType:
    """``import module``, or an ``ImportError`` saying ``pip install 'quflow[extra]'``.

    Only the named module's own absence is translated; an error raised while importing an
    installed module propagates unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module.split(".")[0]:
            raise
        raise ImportError(
            f"quflow: this part needs {module}, which is not installed; install quflow's "
            f"'{extra}' extra: pip install 'quflow[{extra}]' ({EXTRAS[extra]})") from exc
