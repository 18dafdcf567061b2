"""The package as a dependency: the core needs only torch and numpy, and a part whose
optional extra is missing says which extra to install."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

HERE = os.path.dirname(__file__)


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=HERE,
                          capture_output=True, text=True, timeout=120)


def test_the_core_imports_and_runs_without_the_extras():
    """``None`` in sys.modules makes an import fail as if the package were not installed."""
    done = _python("""
        import sys
        for name in ("pennylane", "pennylane_lightning", "matplotlib", "tqdm"):
            sys.modules[name] = None
        import torch, quflow
        grid = quflow.Grid(8, 2.0)
        psi = quflow.crank_nicolson(quflow.random_states(grid, 2, seed=0), dt=0.1, dx=grid.dx,
                                    steps=5)
        loss = quflow.fidelity_loss(psi, psi)
        print(tuple(psi.shape), abs(round(loss.item(), 12)))
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["(2,", "8)", "0.0"], done.stdout


def test_importing_the_core_loads_no_optional_package():
    """(torch itself imports tqdm where it is installed, so tqdm is not checked.)"""
    done = _python("""
        import sys, quflow
        print(sorted(m for m in ("pennylane", "matplotlib") if m in sys.modules))
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_a_missing_extra_names_what_to_install():
    done = _python("""
        import importlib, sys
        sys.modules["pennylane"] = None
        sys.modules["matplotlib"] = None
        import quflow
        for what in ("quflow.QuantumLayer", "quflow.metric_tensor", "quflow.templates",
                     "import quflow.quantum"):
            try:
                if what.startswith("import "):
                    importlib.import_module(what.split()[1])
                else:
                    getattr(quflow, what.split(".")[1])
                print(what, "imported")
            except ImportError as exc:
                print(what, "quflow[quantum]" in str(exc) and "pennylane" in str(exc))
        from quflow.experiments import _plots
        try:
            _plots.pyplot()
        except ImportError as exc:
            print("pyplot", "quflow[experiments]" in str(exc))
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 5 and all(line.endswith(" True") for line in lines), done.stdout
