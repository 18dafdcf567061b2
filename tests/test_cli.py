"""The ``quflow`` command as a command (issue 25, part 7): ``--help`` and ``--version``
without torch, a subcommand's own usage on its bad options, Ctrl-C at any moment ending
in one line; and the lazy ``import quflow`` that makes the first possible.

Processes that could hang run in their own session with a generous timeout (a guard,
not a timed assertion): past it, the session is killed and the test fails."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

import quflow
from quflow import cli

ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 300


def _python(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=HANG_GUARD_S, env=env)


# ---------------------------------------------------------------- import quflow is lazy

def test_import_quflow_imports_neither_torch_nor_pennylane():
    r = _python("-c", "import sys, quflow, quflow.cli; print(sorted(m for m in "
                      "('torch', 'numpy', 'pennylane', 'quflow._core') if m in sys.modules))")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "[]\n"


def test_public_names_load_on_first_use_as_before():
    """``from quflow import x``, ``quflow.x`` and the private modules that tests and
    benchmarks reach as attributes work as when ``import quflow`` imported them: the first
    simulator name imports the whole simulator, which registers ``torch.ops.quflow``;
    ``quflow._core`` loads after torch (it binds to the libgomp.so.1 torch loaded)."""
    r = _python("-c", textwrap.dedent("""
        import sys
        import quflow
        from quflow import Grid
        import torch
        assert hasattr(torch.ops.quflow, "cn_forward"), "operators not registered"
        grid = Grid(8, 1.0)
        psi = quflow.random_states(grid, 2, seed=0)
        print(quflow.crank_nicolson(psi, dt=0.1, dx=grid.dx, steps=3).shape)
        print(quflow.schrodinger.crank_nicolson is quflow.crank_nicolson,
              "pennylane" in sys.modules)
    """))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "torch.Size([2, 8])\nTrue False\n"
    r = _python("-c", "import sys; from quflow import _core; print('torch' in sys.modules)")
    assert r.returncode == 0 and r.stdout == "True\n", r.stderr


def test_every_name_in_all_resolves_and_is_listed():
    for name in quflow.__all__:
        assert getattr(quflow, name) is not None, name
    assert set(quflow.__all__) <= set(dir(quflow))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        quflow.no_such_name  # noqa: B018


def test_type_checkers_see_what_run_time_loads():
    """The names imported under ``if TYPE_CHECKING:`` in ``quflow/__init__.py`` (what
    type checkers, IDEs and the API docs see) are ``__all__``, and each is loaded at run
    time from the module that the import names."""
    tree = ast.parse((ROOT / "python" / "quflow" / "__init__.py").read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and ast.unparse(node.test) == "TYPE_CHECKING")
    seen = {}
    for node in block.body:
        for alias in node.names:
            seen[alias.asname or alias.name] = node.module or alias.name
    assert sorted(seen) == sorted(quflow.__all__)
    for name, module in seen.items():
        value = getattr(quflow, name)
        where = value.__name__ if isinstance(value, types.ModuleType) else value.__module__
        assert where == f"quflow.{module}", name


# ---------------------------------------------------------------- --help, --version

def _imported(stderr: str) -> set[str]:
    """The modules ``-X importtime`` lists."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


@pytest.mark.parametrize("args", [["--help"], ["reproduce", "--help"], ["verdict", "--help"],
                                  ["--version"]])
def test_help_and_version_do_not_import_torch(args):
    r = _python("-X", "importtime", "-m", "quflow", *args)
    assert r.returncode == 0, r.stderr
    imported = _imported(r.stderr)
    assert "quflow.cli" in imported
    assert not {m for m in imported if m.split(".")[0] in ("torch", "numpy", "pennylane")}
    if args == ["--version"]:
        assert r.stdout == f"quflow {quflow.__version__}\n"
    else:
        assert r.stdout.startswith("usage: quflow")


def test_verdict_does_not_import_torch(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    r = _python("-X", "importtime", "-m", "quflow", "verdict", str(tmp_path / "results.json"))
    assert r.returncode == 0, r.stderr
    assert not {m for m in _imported(r.stderr) if m.split(".")[0] == "torch"}


# ---------------------------------------------------------------- usage errors

@pytest.mark.parametrize("args,usage,message", [
    (["reproduce", "--bogus"], "usage: quflow reproduce ",
     "quflow reproduce: error: unrecognized arguments: --bogus"),
    (["reproduce", "toy", "extra"], "usage: quflow reproduce ",
     "quflow reproduce: error: unrecognized arguments: extra"),
    (["reproduce", "toy", "--target", "2"], "usage: quflow reproduce ",
     "quflow reproduce: error: --target: not used by the toy experiment"),
    (["verdict", "--bogus"], "usage: quflow verdict ",
     "quflow verdict: error: unrecognized arguments: --bogus"),
    (["verdict", "no/such/results.json"], "usage: quflow verdict ",
     "quflow verdict: error: results: cannot read no/such/results.json"),
    (["--bogus"], "usage: quflow [-h] [--version]", "quflow: error:"),
    (["bogus"], "usage: quflow [-h] [--version]", "quflow: error: argument command: invalid "
                                                  "choice: 'bogus'"),
])
def test_a_bad_option_shows_the_usage_of_its_command(args, usage, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main([*args, "--out", str(tmp_path)] if args[:2] == ["reproduce", "toy"] else args)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith(usage) and message in err, err
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- Ctrl-C

# the console script's code, with a line on stdout once Python has started and imported
# the command: Ctrl-C before that is Python's own start
_READY = "import sys; from quflow.cli import main; print('ready', flush=True); sys.exit(main())"


def _processes() -> dict[int, tuple[int, int, bytes]]:
    """pid -> (parent pid, session id, command line) of every process (Linux /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            found[int(stat.parent.name)] = (int(fields[1]), int(fields[3]),
                                            (stat.parent / "cmdline").read_bytes())
        except (OSError, ValueError, IndexError):  # it ended meanwhile
            continue
    return found


def _forkserver_of(pid: int) -> bool:
    """Whether ``pid`` has started a multiprocessing forkserver."""
    return any(ppid == pid and b"forkserver" in cmd for ppid, _, cmd in _processes().values())


def _interrupt(out: Path, when) -> subprocess.CompletedProcess:
    """Starts ``quflow reproduce`` (two workers, 12 runs of 50 epochs: longer than the
    test waits) in its own session, waits until ``when(proc)`` is true, and sends SIGINT to
    the whole session, as Ctrl-C in a terminal does to its foreground process group."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _READY, "reproduce", "control", "--optimizer", "sgd", "--seeds",
         "4", "--epochs", "50", "--jobs", "2", "--study", "paper", "--no-progress", "--out",
         str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        deadline = time.monotonic() + HANG_GUARD_S
        while not when(proc) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)
        out_text, err = proc.communicate(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"quflow reproduce did not end within {HANG_GUARD_S} s of SIGINT")
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out_text, err)
    done.pid = proc.pid  # its session's id
    return done


def _after(seconds: float, *, forkserver: bool = False):
    """``when`` for :func:`_interrupt`: ``seconds`` after now, or after the command has
    started its forkserver (which then imports torch for seconds)."""
    start = None if forkserver else time.monotonic()

    def when(proc) -> bool:
        nonlocal start
        if start is None and _forkserver_of(proc.pid):
            start = time.monotonic()
        return start is not None and time.monotonic() - start >= seconds
    return when


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["0.3 s", "1 s", "3 s", "0.5 s after the forkserver started"])
def test_ctrl_c_at_any_moment_ends_in_one_line(tmp_path, moment):
    """SIGINT soon after the start (in torch's import), later (making the data, starting the
    workers), and while the forkserver imports torch: one non-empty line on stderr, exit
    130, whatever the moment; no process of it left behind."""
    forkserver = "forkserver" in moment
    if forkserver and not Path("/proc/self/stat").exists():
        pytest.skip("finds the forkserver through /proc")
    when = _after(float(moment.split()[0]), forkserver=forkserver)
    r = _interrupt(tmp_path, when)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    # 130, or ended by SIGINT, which a shell also reports as 130: CPython ends the process
    # so after exit when a KeyboardInterrupt, even a caught one, left code run by exec()
    # of a string (dataclasses do that, in torch's import)
    assert r.returncode in (130, -signal.SIGINT), r.stderr
    assert len(lines) == 1 and lines[0].startswith("quflow: interrupted"), r.stderr
    if Path("/proc/self/stat").exists():  # the forkserver and the workers end too
        deadline = time.monotonic() + HANG_GUARD_S
        while any(sid == r.pid for _, sid, _ in _processes().values()):
            assert time.monotonic() < deadline, "processes of the interrupted run live on"
            time.sleep(0.1)
