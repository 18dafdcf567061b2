"""crank_nicolson at the edges of the machine: threads that cannot start, Ctrl-C during a
long call, the memory of adjoint="store", and the valid range of dt, dx and V (issue 12).

The process-level cases run in a fresh interpreter so that an abort or a lowered
resource limit cannot take the test session down with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import quflow
from conftest import REAL, dense_crank_nicolson

HERE = os.path.dirname(__file__)
SANITIZED = bool(os.environ.get("QUFLOW_SANITIZE"))


def _python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=HERE,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(SANITIZED, reason="ASan's shadow memory does not run under RLIMIT_AS")
def test_worker_threads_that_cannot_start_raise_runtime_error():
    done = _python("""
        import resource, numpy as np
        from quflow import _core
        psi = np.ones((4096, 8), np.complex128)
        V = np.zeros((1, 8))
        # room for a few thread stacks (8 MB each) beyond what is mapped now, not for 512
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, ((vm << 10) + (64 << 20),) * 2)
        # 164M point-steps: enough work for 600 threads (the core gives each >= 2^18)
        for fn in (lambda: _core.forward_c128(psi, V, dt=0.1, dx=0.1, steps=5000, threads=1000),
                   lambda: _core.backward_c128(psi, psi, V, dt=0.1, dx=0.1, steps=5000,
                                               threads=1000)):
            try:
                fn()
                print("no error")
            except RuntimeError as exc:
                print("RuntimeError:", exc)
        out = _core.forward_c128(psi[:8], V, dt=0.1, dx=0.1, steps=50, threads=1)
        print("after:", bool(np.isfinite(out).all()))
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and lines[2] == "after: True", done.stdout
    for line in lines[:2]:
        assert line.startswith("RuntimeError: quflow: could not start worker thread"), line


@pytest.mark.skipif(SANITIZED, reason="ASan's shadow memory does not run under RLIMIT_AS")
def test_a_one_thread_call_needs_no_thread_it_cannot_start():
    """A long one-thread call is watched from a worker; if none can start, the calling
    thread does the work itself, as it always could (found in review)."""
    done = _python("""
        import resource, numpy as np
        from quflow import _core
        psi = np.ones((4096, 8), np.complex128) * 0.1
        V = np.zeros((1, 8))
        short = _core.forward_c128(psi[:8], V, dt=0.1, dx=0.1, steps=100, threads=1)
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize"))
        # room for the output arrays, not for an 8 MB thread stack
        resource.setrlimit(resource.RLIMIT_AS, ((vm << 10) + (4 << 20),) * 2)
        out = _core.forward_c128(psi, V, dt=0.1, dx=0.1, steps=100, threads=1)  # 3.3M point-steps
        print(np.array_equal(out[:8], short))
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True"]


def test_a_daemon_thread_in_a_long_call_does_not_abort_the_exit():
    """The interpreter exits while a daemon thread is inside a long call: no abort (the
    poll leaves the GIL alone while Python finalizes; found in review)."""
    done = _python("""
        import threading, time, torch, quflow
        torch.set_num_threads(1)
        grid = quflow.Grid(16, 2.0)
        psi = quflow.random_states(grid, 12, seed=0)
        threading.Thread(target=lambda: quflow.crank_nicolson(psi, dt=0.1, dx=grid.dx,
                                                              steps=10**9), daemon=True).start()
        time.sleep(0.5)
        print("exiting", flush=True)
    """)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["exiting"]


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_a_long_call_stops_on_ctrl_c_and_leaves_nothing_behind(direction):
    done = _python(f"""
        import os, signal, threading, torch, quflow
        torch.set_num_threads(2)
        grid = quflow.Grid(16, 2.0)
        psi = quflow.random_states(grid, 12, seed=0).requires_grad_()
        V = torch.zeros(16, dtype=torch.float64, requires_grad=True)
        before = psi.detach().clone()
        ref = quflow.crank_nicolson(psi, V, dt=0.1, dx=grid.dx, steps=20)
        (g_ref,) = torch.autograd.grad(ref.abs().pow(2).mul(grid.x).sum(), V)
        states = psi.detach().numpy()  # the adjoint sweep on its own, through the binding
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:  # without the interrupt neither call would end before the subprocess timeout
            if "{direction}" == "forward":
                quflow.crank_nicolson(psi, V, dt=0.1, dx=grid.dx, steps=10**12)
            else:
                quflow._core.backward_c128(states, states, V.detach().numpy()[None], dt=0.1,
                                           dx=grid.dx, steps=10**12, need_potential=True,
                                           threads=2)
            print("finished")
        except KeyboardInterrupt:
            print("interrupted")
        assert torch.equal(psi.detach(), before)
        again = quflow.crank_nicolson(psi, V, dt=0.1, dx=grid.dx, steps=20)
        (g,) = torch.autograd.grad(again.abs().pow(2).mul(grid.x).sum(), V)
        print("same", torch.equal(again, ref) and torch.equal(g, g_ref))
    """, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["interrupted", "same", "True"], done.stdout


def test_store_mode_keeps_one_copy_of_the_states():
    """adjoint="store" keeps (B, T+1, n) states; backward must not materialise a second,
    zero, cotangent of that size for the non-differentiable stored output."""
    done = _python("""
        import resource, torch, quflow
        torch.set_num_threads(1)
        B, n, T = 64, 20, 4000
        grid = quflow.Grid(n, 2.0)
        psi = quflow.random_states(grid, B, seed=0)
        u = torch.randn(B, T, dtype=torch.float64, requires_grad=True)
        for _ in range(2):  # warm up allocator and code paths at a small size
            out = quflow.crank_nicolson(psi, dt=0.2, dx=grid.dx, control=u[:, :50],
                                        control_shape=grid.x, adjoint="store")
            out.abs().pow(2).mul(grid.x).sum().backward()
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out = quflow.crank_nicolson(psi, dt=0.2, dx=grid.dx, control=u, control_shape=grid.x,
                                    adjoint="store")
        out.abs().pow(2).mul(grid.x).sum().backward()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print((peak - base) / (B * (T + 1) * n * 16))
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    ratio = float(done.stdout.split()[-1])
    assert ratio < 1.5, f"peak memory = {ratio:.2f} × the stored states"


# ---------------------------------------------------------------- the valid range of inputs

@pytest.mark.parametrize("cdtype,dx,vmax", [
    (torch.complex128, 1e-37, 1e150), (torch.complex64, 1e-4, 1e17),
    (torch.complex128, 1e-3, 1e100), (torch.complex64, 3e-5, 1e16),
    # pivots formed scaled (dt/(2dx²) up to 1e17 in float, 1e150 in double)
    (torch.complex64, 1e-8, 1e20), (torch.complex64, 6e-10, 0.0),
    (torch.complex128, 3e-77, 1e100), (torch.complex128, 1e-60, 1e160),
])
def test_inputs_inside_the_range_give_unitary_steps(cdtype, dx, vmax):
    """Near the documented limits the result is finite and the norm is kept."""
    n, dt = 12, 0.2
    psi = quflow.random_states(quflow.Grid(n), 5, seed=1, dtype=cdtype)
    V = (vmax * torch.linspace(-1, 1, n, dtype=torch.float64)).to(REAL[cdtype])
    out = quflow.crank_nicolson(psi, V, dt=dt, dx=dx, steps=20)
    norms = torch.linalg.vector_norm(out.to(torch.complex128), dim=-1)
    tol = 1e-10 if cdtype == torch.complex128 else 1e-3
    assert torch.isfinite(out).all() and (norms - 1).abs().max() < tol


def test_tiny_steps_and_wide_grids_are_fine():
    psi = quflow.random_states(quflow.Grid(6), 3, seed=2)
    for dt, dx in ((1e-300, 0.1), (0.1, 1e200), (1e-250, 1e-60)):
        out = quflow.crank_nicolson(psi, dt=dt, dx=dx, steps=5)
        ref = dense_crank_nicolson(psi, torch.zeros(6, dtype=torch.float64), dt, dx, 5) \
            if dx < 1e100 else psi
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cdtype,tol", [(torch.complex128, 1e-13), (torch.complex64, 1e-5)])
def test_states_near_the_overflow_limit_keep_a_small_steps_result(cdtype, tol):
    """The constant-H forward's β form scales ψ by up to 1/he before the multiplier brings
    it back; a state the range check accepts but within 1/he of the type's overflow takes
    the α form instead: the result is the unit state's, scaled (the propagation is linear).
    Tolerance per dtype, absolute, on the unit-norm scale."""
    grid = quflow.Grid(12, 2.0)
    psi = quflow.random_states(grid, 9, seed=3, dtype=cdtype)
    V = (4 * torch.cos(grid.x)).to(REAL[cdtype])
    dt = 1e-3 * 2 * grid.dx ** 2  # he = dt/2dx² = 1e-3
    big = torch.finfo(REAL[cdtype]).max / 100  # accepted: the limit is ~max / 79 here
    ref = quflow.crank_nicolson(psi, V, dt=dt, dx=grid.dx, steps=6)
    out = quflow.crank_nicolson(psi * big, V, dt=dt, dx=grid.dx, steps=6)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out / big, ref, atol=tol, rtol=0)


@pytest.mark.parametrize("threads", [1, 2])
def test_long_calls_run_on_watched_workers_with_the_same_results(threads):
    """Calls above ~2M point-steps run on worker threads while the caller polls for
    signals; they agree with short (unwatched) calls on the same states."""
    grid = quflow.Grid(64, 2.0)
    psi = quflow.random_states(grid, 40, seed=3)
    u = torch.randn(40, 1000, dtype=torch.float64, requires_grad=True)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = quflow.crank_nicolson(psi, dt=0.2, dx=grid.dx, control=u, control_shape=grid.x)
        (g,) = torch.autograd.grad(out.abs().pow(2).mul(grid.x).sum(), u)
    finally:
        torch.set_num_threads(before)
    for b in (0, 17, 39):  # one state each: 64k point-steps, run inline
        one = quflow.crank_nicolson(psi[b:b + 1], dt=0.2, dx=grid.dx, control=u[b:b + 1],
                                    control_shape=grid.x)
        (g1,) = torch.autograd.grad(one.abs().pow(2).mul(grid.x).sum(), u)
        torch.testing.assert_close(one[0], out[b], atol=1e-12, rtol=0)
        torch.testing.assert_close(g1[b], g[b], atol=1e-10, rtol=0)


@pytest.mark.parametrize("adjoint", ["reverse", "store"])
@pytest.mark.parametrize("cdtype,dx", [(torch.complex64, 1e-6), (torch.complex128, 1e-40)])
def test_scaled_pivots_match_the_dense_reference(cdtype, dx, adjoint):
    """dt/(2·dx²) beyond the unscaled range (1e11 in float, 1e78 in double): the pivots are
    formed scaled; values and the gradients of ψ0, u and W, from either adjoint, still
    equal the dense float64 reference (tolerance 1e-4 in float, 1e-12 in double, of the
    largest component)."""
    n, dt, steps = 6, 0.2, 4
    gen = torch.Generator().manual_seed(5)
    real = REAL[cdtype]
    psi = quflow.random_states(quflow.Grid(n), 3, generator=gen, dtype=cdtype).requires_grad_()
    u = torch.randn(3, steps, dtype=torch.float64, generator=gen).to(real).requires_grad_()
    W = torch.linspace(0, 1, n, dtype=torch.float64).to(real).requires_grad_()
    weight = torch.linspace(1, 2, n, dtype=torch.float64)
    out = quflow.crank_nicolson(psi, dt=dt, dx=dx, control=u, control_shape=W, adjoint=adjoint)
    refs = [x.detach().to(torch.complex128 if x.is_complex() else torch.float64).requires_grad_()
            for x in (psi, u, W)]
    ref = dense_crank_nicolson(refs[0], torch.zeros(n, dtype=torch.float64), dt, dx, steps,
                               refs[1], refs[2])
    tol = 1e-4 if cdtype == torch.complex64 else 1e-12
    torch.testing.assert_close(out.to(torch.complex128), ref, atol=tol, rtol=0)
    grads = torch.autograd.grad(out.abs().pow(2).mul(weight.to(real)).sum(), (psi, u, W))
    grads_ref = torch.autograd.grad(ref.abs().pow(2).mul(weight).sum(), refs)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g.to(g_ref.dtype), g_ref,
                                   atol=tol * max(1.0, g_ref.abs().max().item()), rtol=0)


# ------------------------------------------------- threads: torch's OpenMP team (issue 14)

OPENMP = quflow._core.thread_runtime() == "openmp"
_TEAM_SETUP = """
    import os, numpy as np, torch, quflow
    from quflow import _core
    torch.set_num_threads(2)
    def threads():
        return len(os.listdir("/proc/self/task"))
    grid = quflow.Grid(64, 2.0)
    psi = quflow.random_states(grid, 2000, seed=0).numpy()
    V = np.zeros((1, 64))
    u = np.random.default_rng(1).standard_normal((2000, 20))
    x = grid.x.numpy()
    def step(threads=2):  # forward + backward at 2.6M point-steps each: watched calls
        kw = dict(dt=0.1, dx=grid.dx, steps=20, threads=threads)
        out = _core.forward_c128(psi, V, u, x, **kw)
        grads = _core.backward_c128(psi, out, V, u, x, need_control=True,
                                    need_control_shape=True, **kw)
        return [out] + [g for g in grads if g is not None]
    torch.ones(4000, 4000).add_(1)  # a parallel torch op: torch's team exists from here
"""


@pytest.mark.skipif(not OPENMP, reason="built without OpenMP")
def test_two_thread_calls_run_on_torchs_team_with_the_pools_results():
    """With torch at 2 threads a 2-thread call starts no thread of its own (it runs on
    torch's OpenMP workers) and gives bitwise the pool's results (same parts, same
    ordered reduction); an explicit count above torch's runs on the pool, which starts one."""
    done = _python(_TEAM_SETUP + """
    before = threads()
    team = step()
    after_team = threads()
    torch.set_num_threads(1)
    pool = step(threads=2)  # above omp_get_max_threads(): the core's own pool
    print(before, after_team, threads(), all(np.array_equal(a, b) for a, b in zip(team, pool)))
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after_team, after_pool, same = done.stdout.split()
    assert after_team == before, done.stdout
    assert int(after_pool) > int(before), done.stdout
    assert same == "True", done.stdout


@pytest.mark.skipif(not OPENMP, reason="built without OpenMP")
def test_a_forked_child_runs_two_thread_calls():
    """libgomp's team does not survive fork (torch's own parallel ops hang in such a child):
    quflow's calls there run on a new pool and give the parent's results."""
    done = _python(_TEAM_SETUP + """
    ref = step()
    pid = os.fork()
    if pid == 0:
        same = all(np.array_equal(a, b) for a, b in zip(step(), ref))
        os._exit(0 if same else 3)
    print(os.waitpid(pid, 0)[1])
    """, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0"], done.stdout


@pytest.mark.skipif(not OPENMP, reason="built without OpenMP")
def test_a_child_forked_before_quflow_was_loaded_runs_two_thread_calls():
    """The parent opened torch's team and never loaded quflow; its forked child imports
    quflow first. The child's core sees it is a fork of its parent (/proc/self/auxv, which
    exec writes, equals the parent's) and runs on its own pool: this call used to wait on
    the parent's dead team forever. Only tiny torch ops run in the child (torch's own
    parallel ops would hang there)."""
    done = _python("""
        import os, numpy as np, torch
        torch.set_num_threads(2)
        torch.ones(4000, 4000).add_(1)  # torch's team exists from here
        psi = torch.randn(2000, 64, dtype=torch.complex128)
        pid = os.fork()
        if pid == 0:
            import quflow
            grid = quflow.Grid(64, 2.0)
            two = quflow.crank_nicolson(psi, dt=0.1, dx=grid.dx, steps=20)  # 2.6M point-steps
            torch.set_num_threads(1)
            one = quflow.crank_nicolson(psi, dt=0.1, dx=grid.dx, steps=20)
            same = np.array_equal(one.numpy(), two.numpy())
            os._exit(0 if (not quflow._core.team_allowed() and same) else 3)
        print(os.waitpid(pid, 0)[1])
    """, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0"], done.stdout


def test_an_exec_started_process_may_use_the_team():
    """No false alarm: a process started by exec (this subprocess, its parent pytest) is
    not a fork of its parent, and keeps torch's team."""
    done = _python("import quflow; print(quflow._core.team_allowed())")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(OPENMP)]


@pytest.mark.skipif(not OPENMP, reason="built without OpenMP")
@pytest.mark.parametrize("first_import", ["parent", "worker"])
def test_dataloader_fork_workers_with_two_threads_finish(first_import):
    """DataLoader workers forked after the parent used torch's team, each set back to two
    threads by its worker_init_fn, run two-thread quflow calls on a pool, whether the
    parent had loaded quflow or the dataset imports it only in the worker."""
    dataset = "w.Data()" if first_import == "parent" else "Lazy()"
    done = _python(f"""
        import numpy as np, torch
        if {first_import!r} == "parent":
            import _forked_workers as w
        torch.set_num_threads(2)
        torch.ones(4000, 4000).add_(1)  # torch's team exists from here
        psi = torch.randn(2000, 64, dtype=torch.complex128)

        class Lazy(torch.utils.data.Dataset):
            def __len__(self):
                return 2
            def __getitem__(self, i):
                import quflow
                dx = quflow.Grid(64, 2.0).dx
                two = quflow.crank_nicolson(psi, dt=0.1, dx=dx, steps=20)
                torch.set_num_threads(1)
                one = quflow.crank_nicolson(psi, dt=0.1, dx=dx, steps=20)
                torch.set_num_threads(2)
                return bool(np.array_equal(one.numpy(), two.numpy()))

        loader = torch.utils.data.DataLoader(
            {dataset}, batch_size=None, num_workers=2, multiprocessing_context="fork",
            worker_init_fn=lambda _: torch.set_num_threads(2))
        print(all(loader))
    """, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True"], done.stdout


@pytest.mark.skipif(not OPENMP, reason="built without OpenMP")
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_workers_with_two_threads_finish(method):
    """A multiprocessing pool, by each start method, after the parent used torch's team
    and quflow: fork children run two-thread calls on their own pool, spawn and forkserver
    children are fresh processes."""
    done = _python(f"""
        import multiprocessing, _forked_workers as w
        with multiprocessing.get_context({method!r}).Pool(2) as pool:
            print(all(pool.map(w.work, range(4))))
    """, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True"], done.stdout


@pytest.mark.skipif(SANITIZED, reason="ASan's shadow memory does not run under RLIMIT_AS")
@pytest.mark.skipif(not OPENMP, reason="built without OpenMP")
def test_a_team_that_cannot_start_does_not_end_the_process():
    """libgomp ends the process ("Thread creation failed", exit 1) when it cannot create a
    team thread. With torch at two threads but its team not yet started, and the address
    space too small for another thread stack, a two-thread call now gives the one-thread
    result (no worker could be started either, so the calling thread runs it alone)."""
    done = _python("""
        import resource, torch, quflow
        torch.set_num_threads(1)
        grid = quflow.Grid(64, 2.0)
        psi = quflow.random_states(grid, 400, seed=0)
        ref = quflow.crank_nicolson(psi, dt=0.01, dx=grid.dx, steps=200)
        torch.set_num_threads(2)
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, ((vm << 10) + (6 << 20),) * 2)  # < 8 MB stack
        try:
            out = quflow.crank_nicolson(psi, dt=0.01, dx=grid.dx, steps=200)
            print(torch.equal(out, ref))
        except RuntimeError as exc:
            print("RuntimeError", "could not start" in str(exc))
    """)
    assert done.returncode == 0, (done.stdout, done.stderr[-2000:])
    assert done.stdout.split() in (["True"], ["RuntimeError", "True"]), done.stdout


@pytest.mark.skipif(not OPENMP, reason="built without OpenMP")
def test_ctrl_c_stops_a_call_on_torchs_team():
    """On torch's team the calling thread works too and polls between its parts (each
    ≤ 2^23 point-steps); Ctrl-C still stops a long call within a few parts."""
    done = _python("""
        import os, signal, threading, time, torch, quflow
        torch.set_num_threads(2)
        torch.ones(4000, 4000).add_(1)
        tasks = len(os.listdir("/proc/self/task"))
        grid = quflow.Grid(16, 2.0)
        psi = quflow.random_states(grid, 16000, seed=0)  # 1000 parts of 16x16x32768
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        t0 = time.perf_counter()
        try:
            quflow.crank_nicolson(psi, dt=0.1, dx=grid.dx, steps=32768)
            print("finished")
        except KeyboardInterrupt:
            print("interrupted")
        timer.join()
        # no pool worker was started: the call ran on torch's team
        print(time.perf_counter() - t0 < 5, len(os.listdir("/proc/self/task")) == tasks)
    """, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["interrupted", "True", "True"], done.stdout
