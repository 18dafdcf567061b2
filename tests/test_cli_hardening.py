"""quflow reproduce under hostile conditions (issue 23): worker processes after a threaded
parent, two runs on one folder, resuming across versions, data or seeds, absurd option
values, tuned studies without a learning-rate search, a diverging learning rate, a full
disk, and OpenMP's wait policy.

Runs that could hang are subprocesses with a generous timeout (a guard, not a timed
assertion): past it, the whole process group is killed and the test fails."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import quflow
from quflow import cli
from quflow.experiments import _io, _training, control, prediction

HANG_GUARD_S = 300  # far beyond the seconds these runs take, even on a busy 2-core host


def _reproduce(*args):
    return cli.main(["reproduce", *args, "--no-progress"])


def _small(out, *extra):
    """One tiny control run in this process: 1 seed, 1 epoch, plain SGD."""
    return _reproduce("control", "--optimizer", "sgd", "--seeds", "1", "--epochs", "1",
                      "--jobs", "1", "--study", "paper", "--out", str(out), *extra)


def _control_sgd(*options):
    """The control-sgd setup of the paper study (what :func:`_small` runs)."""
    parser = cli._parser()
    return cli.plan(parser.parse_args(["reproduce", "control", "--optimizer", "sgd", "--study",
                                       "paper", *options]), parser)[0]


def _files(folder: Path) -> dict:
    """Every file's bytes, the lock file aside (it holds the last holder's pid)."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != cli.LOCK_NAME}


def _run(args, *, env=None, guard=HANG_GUARD_S, **kwargs) -> subprocess.CompletedProcess:
    """Runs ``args`` in a new session; kills the whole session (workers included) and
    fails if it outlives ``guard`` seconds."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=guard)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{' '.join(map(str, args))} hung (killed after {guard} s)")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_DISPLAY_ENV")}
    env.update(extra)
    return env


# ---------------------------------------------------------------- workers after threads

def test_workers_are_never_forked():
    """A forked worker of a parent that ran a parallel op waits forever on the parent's
    OpenMP team; the workers come from a forkserver (or are spawned) instead."""
    assert _training.worker_context().get_start_method() in ("forkserver", "spawn")


def test_threads_2_jobs_2_finishes_with_the_data_of_one_thread(tmp_path):
    """Issue 23, 1a: the parent makes the data on 2 threads (opening torch's OpenMP team),
    then trains in 2 worker processes. With forked workers this never finished (their
    first parallel op waited in libgomp's barrier for threads that did not survive the
    fork). The data, and so their fingerprint, are those of one thread."""
    out = tmp_path / "out"
    r = _run([sys.executable, "-m", "quflow", "reproduce", "prediction", "--threads", "2",
              "--jobs", "2", "--optimizer", "adam", "--seeds", "1", "--epochs", "1",
              "--study", "paper", "--no-progress", "--out", str(out)],
             env=_env(OMP_WAIT_POLICY="PASSIVE"))
    assert r.returncode == 0, r.stderr
    entry = json.loads((out / "results.json").read_text())["prediction"]
    assert set(entry) == {"standard", "modified", "l2"}
    assert torch.get_num_threads() == 1  # conftest: this process makes the data on 1 thread
    parser = cli._parser()
    setup = cli.plan(parser.parse_args(["reproduce", "prediction", "--optimizer", "adam",
                                        "--study", "paper"]), parser)[0]
    assert entry["l2"]["data_fingerprint"] == _training.data_fingerprint(*setup.data())


# ---------------------------------------------------------------- one run per --out

_HOLD = textwrap.dedent("""
    import sys
    from quflow import cli
    real = cli.reproduce
    def held(*args, **kwargs):  # holds the --out lock until told to go on
        print("holding", flush=True)
        sys.stdin.readline()
        return real(*args, **kwargs)
    cli.reproduce = held
    sys.exit(cli.main(sys.argv[1:]))
""")


def _holder(out: Path) -> subprocess.Popen:
    """A ``quflow reproduce control`` process that has taken the lock on ``out`` and waits
    for a line on its stdin before it runs."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, "reproduce", "control", "--optimizer", "sgd", "--seeds",
         "1", "--epochs", "1", "--jobs", "1", "--study", "paper", "--no-progress", "--out",
         str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(OMP_WAIT_POLICY="PASSIVE"))
    assert proc.stdout.readline() == "holding\n", proc.stderr.read()
    return proc


def test_a_second_run_on_the_same_out_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    first = _holder(out)
    try:
        assert _reproduce("toy", "--out", str(out)) == cli.EXIT_BUSY == 5
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert f"--out {out} is in use by another quflow reproduce (process {first.pid})" in err
        assert not (out / "toy.csv").exists() and not (out / "results.json").exists()
        first.stdin.write("go\n")
        first.stdin.close()
        assert first.wait(timeout=HANG_GUARD_S) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    assert set(json.loads((out / "results.json").read_text())) == {"control-sgd"}
    assert _reproduce("toy", "--out", str(out)) == 0  # the lock went with its process


def test_the_lock_dies_with_a_killed_process(tmp_path):
    out = tmp_path / "out"
    first = _holder(out)
    first.kill()  # SIGKILL: no handler runs
    first.wait()
    assert _small(out) == 0


@pytest.mark.slow
def test_every_rank_is_refused_under_torchrun(tmp_path):
    """Rank 0 takes the lock and tells the other ranks: a locked --out ends all of them
    (no rank waits in a collective for one that left)."""
    out = tmp_path / "out"
    out.mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    with cli.out_lock(out) as holder:
        assert holder is None
        r = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                  "--master_addr", "127.0.0.1", "--master_port", port, "-m", "quflow",
                  "reproduce", "prediction", "--optimizer", "adam", "--seeds", "1", "--epochs",
                  "1", "--study", "paper", "--no-progress", "--out", str(out)],
                 env=_env(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE"))
    assert r.returncode != 0
    assert r.stderr.count("is in use by another quflow reproduce") == 1
    assert not (out / "results.json").exists()


# ---------------------------------------------------------------- version and data stamps

def _stamp_of(out: Path) -> list[dict]:
    """The stamps of the control-sgd manifest, checkpoints and results.json entries."""
    ck = out / "checkpoints"
    found = [json.loads((ck / "control-sgd.json").read_text())]
    found += [_io.load_checkpoint(p) for p in sorted(ck.glob("control-sgd-*.pt"))]
    found += list(json.loads((out / "results.json").read_text())["control-sgd"].values())
    return [{k: d.get(k) for k in ("quflow_version", "data_fingerprint")} for d in found]


def test_checkpoints_and_results_record_version_and_data_fingerprint(tmp_path):
    assert _small(tmp_path) == 0
    setup = _control_sgd()
    want = {"quflow_version": quflow.__version__,
            "data_fingerprint": _training.data_fingerprint(*setup.data())}
    stamps = _stamp_of(tmp_path)
    assert len(stamps) == 1 + 3 + 3 and all(s == want for s in stamps)
    results = json.loads((tmp_path / "results.json").read_text())["control-sgd"]
    assert not any("allow_version_change" in entry for entry in results.values())
    other = dataclasses.replace(setup, states=(2, 4))
    assert _training.data_fingerprint(*other.data()) != want["data_fingerprint"]


def _shifted_data(**kwargs):
    (x, y), (xv, yv) = control.make_data(**kwargs)
    return (x, y), (xv * (1 + 2 ** -52), yv)  # the data of another simulator, at round-off


@pytest.mark.parametrize("change,named", [
    ("version", "quflow_version: '{v}' in the folder, '99.0' now"),
    ("data", "data_fingerprint: '"),
])
def test_resume_across_versions_or_data_is_refused_unless_allowed(tmp_path, capsys, monkeypatch,
                                                                  change, named):
    assert _small(tmp_path) == 0
    before = _files(tmp_path)
    old = _training.stamp(*_control_sgd().data())
    if change == "version":
        monkeypatch.setattr(quflow, "__version__", "99.0")
    else:
        monkeypatch.setattr(control, "EXPERIMENT",
                            dataclasses.replace(control.EXPERIMENT, make_data=_shifted_data))
    now = _training.stamp(*_control_sgd().data())
    assert now != old
    capsys.readouterr()
    assert _small(tmp_path, "--resume") == cli.EXIT_MISMATCH == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume refused" in err and "Traceback" not in err
    assert "control-sgd.json was written by another quflow version or on other data" in err
    assert named.format(v=old["quflow_version"]) in err and "--allow-version-change" in err
    assert _files(tmp_path) == before
    # the override continues; the results say so, each checkpoint keeps its writer's stamp
    assert _small(tmp_path, "--resume", "--allow-version-change") == 0
    for entry in json.loads((tmp_path / "results.json").read_text())["control-sgd"].values():
        assert {k: entry[k] for k in now} == now and entry["allow_version_change"] is True
    assert all(s == old for s in _stamp_of(tmp_path)[1:4])
    assert _small(tmp_path, "--resume") == 3
    assert "control-sgd-standard-seed3.pt was written by another quflow version" in \
        capsys.readouterr().err


def test_resume_with_other_seeds_is_refused_naming_them(tmp_path, capsys):
    """The manifest records the held-out seeds run (3, 4, ...: 0-2 select the learning
    rates), so --resume with another --seeds names both lists."""
    assert _small(tmp_path) == 0
    manifest = json.loads((tmp_path / "checkpoints" / "control-sgd.json").read_text())
    assert manifest["seeds"] == [3] and manifest["methods"] == ["standard", "modified", "l2"]
    assert manifest["lr"] == {m: control.EXPERIMENT.lr["sgd"] for m in manifest["methods"]}
    before = _files(tmp_path)
    capsys.readouterr()
    assert _reproduce("control", "--optimizer", "sgd", "--seeds", "2", "--epochs", "1",
                      "--jobs", "1", "--study", "paper", "--out", str(tmp_path),
                      "--resume") == cli.EXIT_MISMATCH
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume refused" in err, err
    assert "seeds: [3] in the folder, [3, 4] now" in err, err
    assert _files(tmp_path) == before


def test_a_folder_of_an_older_quflow_is_refused_unless_allowed(tmp_path, capsys):
    """Checkpoints and manifests without a version or data fingerprint (written before
    issue 23)."""
    assert _small(tmp_path) == 0
    for path in (tmp_path / "checkpoints").glob("control-sgd*"):
        if path.suffix == ".json":
            manifest = json.loads(path.read_text())
            del manifest["quflow_version"], manifest["data_fingerprint"]
            path.write_text(json.dumps(manifest))
        else:
            state = _io.load_checkpoint(path)
            del state["quflow_version"], state["data_fingerprint"]
            _io.save_checkpoint(path, state)
    before = _files(tmp_path)
    capsys.readouterr()
    assert _small(tmp_path, "--resume") == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert ("control-sgd.json was written by an older quflow, which recorded no version or "
            f"data fingerprint (this is quflow {quflow.__version__})") in err
    assert _files(tmp_path) == before
    # a manifest of this version does not vouch for older checkpoints
    setup = _control_sgd("--seeds", "1", "--epochs", "1")
    stamp = _training.stamp(*setup.data())
    _io.write_json(tmp_path / "checkpoints" / "control-sgd.json", {**setup.manifest(), **stamp})
    assert _small(tmp_path, "--resume") == 3
    assert "control-sgd-standard-seed3.pt was written by an older quflow" in capsys.readouterr().err
    assert _small(tmp_path, "--resume", "--allow-version-change") == 0


# ---------------------------------------------------------------- ranges, before any work

def _no_data(monkeypatch):
    """Makes building either trained experiment's data an error."""
    def build(*a, **k):
        raise AssertionError("data were made")
    for experiment in (prediction, control):
        monkeypatch.setattr(experiment, "EXPERIMENT",
                            dataclasses.replace(experiment.EXPERIMENT, make_data=build))


@pytest.mark.parametrize("args,msg", [
    (["prediction", "--modes", "10000000000"],
     "--modes must be an integer from 1 to 20 (the grid's eigenstates), got '10000000000'"),
    (["prediction", "--epochs", "1e23"],
     "--epochs must be an integer from 1 to 100000, got '1e23'"),
    (["prediction", "--epochs", "1" + "0" * 30], "--epochs must be an integer from 1 to 100000"),
    (["prediction", "--epochs", "9" * 5000],
     "--epochs must be an integer from 1 to 100000, got '99999999999999999999...(5000 "
     "characters)'"),
    (["prediction", "--seeds", "1001"], "--seeds must be an integer from 1 to 1000, got '1001'"),
    (["control", "--target", "10000000000"], "--target must be an integer from 1 to 20"),
    (["control", "--states", "2,100000000000"], "--states: the grid has eigenstates 1..20, got "
                                                "100000000000"),
    (["prediction", "--jobs", "257"], "--jobs must be an integer from 1 to 256, got '257'"),
    (["prediction", "--threads", "1000000"], "--threads must be an integer from 1 to 256"),
    (["control", "--allow-version-change"], "--allow-version-change: only with --resume"),
    (["toy", "--resume", "--allow-version-change"], "not used by the toy experiment"),
])
def test_out_of_range_options_exit_2_before_anything_is_built(args, msg, capsys, tmp_path,
                                                              monkeypatch):
    _no_data(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        cli.main(["reproduce", *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and msg in err, err
    assert not (tmp_path / "out").exists()


def test_a_threads_default_out_of_range_is_refused(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("QUFLOW_THREADS", "100000")
    with pytest.raises(SystemExit) as exc:
        cli.main(["reproduce", "control", "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and "--threads must be an integer from 1 to 256" in \
        capsys.readouterr().err


@pytest.mark.parametrize("experiment,study", [("control", "tuned"), ("prediction", "tuned"),
                                              ("control", "variants"), ("all", "paper,tuned")])
def test_a_tuned_study_without_a_search_exits_2_before_anything_is_written(
        experiment, study, monkeypatch, capsys, tmp_path):
    """No search committed with quflow, none in --out, none run by the command: the tuned
    rates have no source, which is a bad command line, not a failure after the paper study
    ran."""
    from quflow.experiments import _search

    monkeypatch.setattr(_search, "COMMITTED", tmp_path / "no" / "lr_search.json")
    assert _search.committed() == {}
    _no_data(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        cli.main(["reproduce", experiment, "--study", study, "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == cli.EXIT_USAGE == 2, err
    assert "error: --study" in err and "search" in err and "Traceback" not in err, err
    assert not out.exists()


def test_a_search_in_the_same_command_or_in_out_is_a_source_for_tuned(monkeypatch, tmp_path):
    """``--study search,tuned`` needs no committed search: the tuned rates come from the
    search the command runs first (plan only: nothing is trained)."""
    from quflow.experiments import _search

    monkeypatch.setattr(_search, "COMMITTED", tmp_path / "no" / "lr_search.json")
    parser = cli._parser()
    args = parser.parse_args(["reproduce", "control", "--study", "tuned,search", "--out",
                              str(tmp_path / "out")])
    setups = cli.plan(args, parser)
    assert [(s.study, s.optimizer) for s in setups] == [
        ("search", "adam"), ("search", "sgd"), ("tuned", "adam"), ("tuned", "sgd")]
    assert [s.seeds for s in setups] == [(0, 1, 2)] * 2 + [(3, 4, 5)] * 2  # quick: 3 seeds
    assert not (tmp_path / "out").exists()
    # a search in --out at this run's epochs is one too; at other epochs it is not
    out = tmp_path / "found"
    out.mkdir()
    (out / "lr_search.json").write_text(json.dumps({"control-sgd-search": {
        "epochs": 40, "methods": {m: {"chosen": 0.3} for m in _training.PAPER_METHODS}}}))
    plan = ["reproduce", "control", "--optimizer", "sgd", "--study", "tuned", "--out", str(out)]
    assert [s.key for s in cli.plan(parser.parse_args(plan), parser)] == ["control-sgd-tuned"]
    with pytest.raises(SystemExit) as exc:
        cli.plan(parser.parse_args([*plan, "--epochs", "39"]), parser)
    assert exc.value.code == 2


@pytest.mark.parametrize("study", ["bogus", "paper,paper", "paper,bogus", "", "paper,"])
def test_an_unknown_or_repeated_study_exits_2(study, monkeypatch, capsys, tmp_path):
    _no_data(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        cli.main(["reproduce", "control", "--study", study, "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert ("--study must be a comma-separated list of search, paper, tuned, probes, "
            f"variants without repeats, got {study!r}") in err, err
    assert not out.exists()


def test_help_states_every_maximum():
    reproduce = cli._parsers()[1]["reproduce"]
    helps = {a.option_strings[0]: a.help for a in reproduce._actions if a.option_strings}
    for option, maximum in (("--seeds", "at most 1000"), ("--epochs", "at most 100000"),
                            ("--modes", "N at most 20"), ("--states", "(1 to 20)"),
                            ("--target", "1 to 20"), ("--threads", "at most 256"),
                            ("--jobs", "at most 256")):
        assert maximum in helps[option], option
    assert cli.GRID_POINTS == prediction.N == control.N  # the bound is the grids' size


# ---------------------------------------------------------------- divergence, full disk

@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_diverging_run_ends_in_one_line_and_keeps_the_files(tmp_path, capsys, jobs):
    """SGD at learning rate 1e6: the prediction network's output becomes NaN within the
    first epoch. With --jobs 2 the run diverges in a worker process."""
    assert _small(tmp_path) == 0
    before = _files(tmp_path)
    capsys.readouterr()
    code = _reproduce("prediction", "--optimizer", "sgd", "--lr", "1e6", "--seeds", "1",
                      "--epochs", "2", "--jobs", jobs, "--study", "paper", "--out", str(tmp_path))
    assert code == cli.EXIT_DIVERGED == 6
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "the prediction run (sgd lr 1e+06, " in err and "gradient, seed 3) diverged in " \
        "epoch 1: its loss or network parameters are no longer finite; try a smaller --lr" in err
    after = _files(tmp_path)
    assert {p: after[p] for p in before} == before
    assert set(json.loads((tmp_path / "results.json").read_text())) == {"control-sgd"}
    assert not list(tmp_path.rglob(f"*{_io.TMP_SUFFIX}"))


def test_divergence_is_caught_without_an_error_from_the_loss(tmp_path):
    """A loss that turns NaN without raising: the run stops at the end of that epoch, named,
    and its checkpoint keeps the last finite epoch."""
    cfg = _training.RunConfig("prediction", "standard", 3, 4, 0.005, 200)
    (x, y), (xv, yv) = prediction.make_data()
    calls = {"n": 0}

    def poisoned(model, xb, yb, gradient, **kwargs):
        calls["n"] += 1  # 3 calls at epoch 0, then 2 batches + 3 per epoch
        loss = prediction.batch_loss(model, xb, yb, gradient, **kwargs)
        return loss * float("nan") if calls["n"] == 3 + 2 * 5 + 1 else loss  # in epoch 3

    with pytest.raises(_training.Diverged, match=r"the prediction run \(adam lr 0.005, standard "
                       r"gradient, seed 3\) diverged in epoch 3"):
        _training.train(cfg, lambda: _training.mlp(40, 40, 8), poisoned, (x[:400], y[:400]),
                        (xv[:100], yv[:100]), ckpt=tmp_path / "c.pt", resume=False,
                        checkpoint_seconds=0.0)
    state = _io.load_checkpoint(tmp_path / "c.pt")
    assert state["epoch"] == 2 and _training._finite(_load_model(state))


def _load_model(state):
    model = _training.mlp(40, 40, 8)
    model.load_state_dict(state["model"])
    return model


@pytest.mark.parametrize("folder,failing", [("", "results.json"), ("", "control.csv"),
                                            ("checkpoints", "control-l2-seed3.pt"),
                                            ("checkpoints", "control.json")])
def test_a_full_disk_ends_in_one_line_naming_the_file(tmp_path, capsys, monkeypatch, folder,
                                                      failing):
    """The writer of ``failing`` gets ENOSPC after writing part of it; the files of the
    run before stay whole and no temporary file is left."""
    assert _small(tmp_path) == 0
    before = _files(tmp_path)
    real = _io.write_atomic

    def full_disk(path, write):
        if Path(path).name != failing:
            return real(path, write)

        def part(tmp):
            Path(tmp).write_text('{"half')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, part)

    monkeypatch.setattr(_io, "write_atomic", full_disk)
    capsys.readouterr()
    code = _reproduce("control", "--optimizer", "adam", "--seeds", "1", "--epochs", "1",
                      "--jobs", "1", "--study", "paper", "--out", str(tmp_path))
    assert code == cli.EXIT_WRITE == 7
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"cannot write {tmp_path / folder / failing}: No space left on device" in err
    after = _files(tmp_path)
    assert {p: after[p] for p in before} == before
    assert not list(tmp_path.rglob(f"*{_io.TMP_SUFFIX}"))


# ---------------------------------------------------------------- OpenMP wait policy

def test_passive_wait_policy_is_set_unless_the_user_chose_one(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cli._passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    cli._passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


# the command as the console script runs it, with the reproduction replaced by a report
# of what its own threads got (torch, loaded by the command after parsing, loads libgomp)
_PRINT_POLICY = textwrap.dedent("""
    import os, sys
    from quflow import cli
    before = "torch" in sys.modules
    def report(args, parser):
        import torch
        torch.set_num_threads(args.threads)
        torch.ones(1000, 1000).sum()  # a parallel op: the team exists
        print("policy", os.environ.get("OMP_WAIT_POLICY"), "torch before main:", before,
              flush=True)
        return 0
    cli._reproduce_main = report
    sys.exit(cli.main())
""")


@pytest.mark.parametrize("user,spins", [(None, "'0'"), ("ACTIVE", "'30000000000'")])
def test_the_commands_own_openmp_threads_sleep(tmp_path, user, spins):
    """libgomp reads the policy once, when torch loads it. ``import quflow`` does not
    import torch, and the command sets the variable before it does, so the command's own
    threads sleep (libgomp's spin count 0) rather than spin (300 000), without a restart:
    libgomp loads once. A policy the user set stands. OMP_DISPLAY_ENV makes libgomp
    print its settings when it loads."""
    env = _env(OMP_DISPLAY_ENV="VERBOSE", **({"OMP_WAIT_POLICY": user} if user else {}))
    r = _run([sys.executable, "-c", _PRINT_POLICY, "reproduce", "control", "--threads", "2",
              "--out", str(tmp_path)], env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"policy {user or 'PASSIVE'} torch before main: False\n"
    assert [line.split("=")[1].strip() for line in r.stderr.splitlines()
            if "GOMP_SPINCOUNT" in line] == [spins]
