"""quflow reproduce: the prediction and control experiments, resume, DDP, and bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from quflow import cli
from quflow.experiments import _training, control, prediction


def _reproduce(*args):
    return cli.main(["reproduce", *args, "--no-progress"])


def test_prediction_and_control_write_results(tmp_path):
    _reproduce("prediction", "--seeds", "2", "--epochs", "1", "--out", str(tmp_path))
    _reproduce("control", "--seeds", "1", "--epochs", "1", "--out", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"prediction", "control"}
    for exp, seeds in (("prediction", [0, 1]), ("control", [0])):
        assert set(results[exp]) == {"standard", "l2", "modified"}
        for r in results[exp].values():
            assert r["seeds"] == seeds and 0 <= r["final_loss"] <= 1 and r["final_loss_std"] >= 0
        for suffix in (".csv", ".png"):
            assert (tmp_path / f"{exp}{suffix}").stat().st_size > 0
    rows = (tmp_path / "prediction.csv").read_text().splitlines()
    assert rows[0] == "method,seed,epoch,train_loss,val_loss" and len(rows) == 1 + 3 * 2 * 2


def test_data_sets_are_documented_sizes():
    (x, y), (xv, yv) = prediction.make_data()
    assert x.shape == (10_000, 40) and y.shape == (10_000, 40) and xv.shape == (2_500, 40)
    (x, y), (xv, yv) = control.make_data()
    assert x.shape == (100, 40) and xv.shape == (25, 40)
    assert sum(p.numel() for p in _training.mlp(40, 40, 64).parameters()) == 9_384


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    cfg = _training.RunConfig("prediction", "modified", 0, 3, 0.005, 200)
    (x, y), (xv, yv) = prediction.make_data()
    data = dict(train_set=(x[:1000], y[:1000]), val_set=(xv[:200], yv[:200]))
    make = lambda: _training.mlp(40, 40, 16)  # noqa: E731
    full = _training.train(cfg, make, prediction.batch_loss, ckpt=tmp_path / "a.pt",
                           resume=False, progress=False, **data)
    calls = {"n": 0}

    def flaky(model, xb, yb, gradient):
        calls["n"] += 1
        if calls["n"] == 18:  # in epoch 3 (2 initial evaluations, then 5 batches + 2 per epoch)
            raise KeyboardInterrupt
        return prediction.batch_loss(model, xb, yb, gradient)

    with pytest.raises(KeyboardInterrupt):
        _training.train(cfg, make, flaky, ckpt=tmp_path / "b.pt", resume=False, progress=False,
                        **data)
    assert torch.load(tmp_path / "b.pt", weights_only=False)["epoch"] == 2
    resumed = _training.train(cfg, make, prediction.batch_loss, ckpt=tmp_path / "b.pt",
                              resume=True, progress=False, **data)
    assert resumed == full


def test_optimizer_and_lr_are_part_of_the_configuration(tmp_path):
    _reproduce("control", "--seeds", "1", "--epochs", "1", "--optimizer", "sgd", "--lr", "0.1",
               "--out", str(tmp_path))
    saved = torch.load(tmp_path / "checkpoints" / "control-l2-seed0.pt", weights_only=False)
    assert saved["config"]["optimizer"] == "sgd" and saved["config"]["lr"] == 0.1
    with pytest.raises(SystemExit, match="different configuration"):
        _reproduce("control", "--seeds", "1", "--epochs", "1", "--out", str(tmp_path), "--resume")


def test_resume_refuses_a_directory_of_another_configuration(tmp_path, capsys):
    _reproduce("control", "--seeds", "1", "--epochs", "1", "--out", str(tmp_path))
    before = (tmp_path / "results.json").read_bytes()
    with pytest.raises(SystemExit, match="different configuration"):
        _reproduce("control", "--seeds", "1", "--epochs", "2", "--out", str(tmp_path), "--resume")
    assert (tmp_path / "results.json").read_bytes() == before


@pytest.mark.parametrize("args,msg", [
    (["bogus"], "invalid choice"),
    (["toy", "--seeds", "0"], "--seeds must be >= 1"),
    (["toy", "--epochs", "-3"], "--epochs must be >= 1"),
    (["toy", "--epochs", "x"], "--epochs must be an integer"),
    (["toy", "--lr", "0"], "--lr must be a finite number > 0"),
    (["toy", "--lr", "nan"], "--lr must be a finite number > 0"),
    (["toy", "--optimizer", "lbfgs"], "invalid choice"),
    (["toy", "--modes", "0"], "--modes must be >= 1"),
])
def test_bad_command_lines_exit_non_zero(args, msg, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["reproduce", *args])
    assert exc.value.code == 2 and msg in capsys.readouterr().err


def test_modes_beyond_the_grid_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="the grid has 20 eigenstates"):
        _reproduce("prediction", "--modes", "21", "--out", str(tmp_path))
    (x, _), _ = prediction.make_data(modes=20)
    assert x.shape == (10_000, 40)


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit, match="cannot write there"):
        _reproduce("toy", "--out", str(blocker / "sub"))


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    """torchrun with 2 gloo processes on localhost == 1 process, same data and seed."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = ["reproduce", "prediction", "--seeds", "1", "--epochs", "2", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    with socket.socket() as sock:  # a free port on the loopback interface
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    subprocess.run([sys.executable, "-m", "quflow", *common, "--out", str(one)], check=True,
                   env=env, capture_output=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_addr", "127.0.0.1", "--master_port", port, "-m", "quflow",
                    *common, "--out", str(two)], check=True, env=env, capture_output=True)
    a = json.loads((one / "results.json").read_text())["prediction"]
    b = json.loads((two / "results.json").read_text())["prediction"]
    for m in a:
        assert b[m]["final_loss"] == pytest.approx(a[m]["final_loss"], rel=1e-10)
