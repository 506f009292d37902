"""The run lifecycle: NaN metrics never win, top-k checkpoints, early-stopping policies, Ctrl-C,
evaluate/predict devices and moved data, epoch counting. Tiny synthetic recipes, a few seconds each."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from mtlframe import cli
from mtlframe import module as module_mod
from mtlframe import run as run_mod
from mtlframe.errors import DataError, MTLFrameError, RecipeError
from mtlframe.features import label_key, mask_key
from mtlframe.recipe import recipe_from_dict
from mtlframe.testing import tiny_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(run_dir, progress=False, **overrides):
    return run_mod.train(recipe_from_dict(tiny_recipe(**overrides), "<tiny>"), run_dir, progress=progress)


def _nan_task_0(monkeypatch, epochs: set[int] | None):
    """Make task_0's validation predictions NaN (at these 0-based epochs of training; ``None``:
    at every validation) while training stays finite: the metric side of a diverged model,
    without a NaN loss."""
    real = module_mod.to_prediction
    current = {}

    def fake(task_type, out):
        pred = real(task_type, out)
        m = current.get("module")
        if task_type == "regression" and m is not None and m.trainer.validating and (
                epochs is None or (m.trainer.state.fn.value == "fit" and m.current_epoch in epochs)):
            return torch.full_like(pred, float("nan"))
        return pred

    real_step = module_mod.MultiTaskModule._eval_step

    def eval_step(self, stage, batch):
        current["module"] = self
        return real_step(self, stage, batch)

    monkeypatch.setattr(module_mod, "to_prediction", fake)
    monkeypatch.setattr(module_mod.MultiTaskModule, "_eval_step", eval_step)


# ------------------------------------------------------------------------------------------------
# 1. A NaN metric never makes a checkpoint better
# ------------------------------------------------------------------------------------------------


def test_an_epoch_with_a_nan_primary_metric_never_becomes_the_best_checkpoint(tmp_path, monkeypatch):
    """Epoch 2's task_0 predictions are NaN. Its val/score used to be task_1_bin's AUC alone (~0.7),
    far above the healthy epochs' (AUC - RMSE) / 2 (~ -0.7), so it won; now it is NaN, and the best
    checkpoint is a healthy epoch with finite metrics for every task."""
    _nan_task_0(monkeypatch, {1})
    with pytest.warns(UserWarning, match=r"task 'task_0': 200 of its 200 predictions on the val split are NaN"):
        result = _train(tmp_path / "run", **{"trainer.max_epochs": 3, "logger": {"name": "csv"}})
    logged = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    per_epoch = logged.dropna(subset=["val/task_1_bin/auc"])["val/score"].tolist()[:3]
    assert math.isnan(per_epoch[1]) and all(math.isfinite(v) for v in (per_epoch[0], per_epoch[2]))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["monitor"]["best"] == pytest.approx(max(per_epoch[0], per_epoch[2]), abs=1e-6)
    assert math.isfinite(result.metrics["val"]["task_0"]["rmse"])
    expected = (result.metrics["val"]["task_1_bin"]["auc"] - result.metrics["val"]["task_0"]["rmse"]) / 2
    assert saved["monitor"]["best"] == pytest.approx(expected, abs=1e-6)


def test_a_run_whose_best_score_is_nan_says_so_and_exits_non_zero(tmp_path, monkeypatch, capsys):
    _nan_task_0(monkeypatch, None)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(**{"trainer.max_epochs": 2})))
    rc = cli.main(["train", str(recipe), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "no validation of this run gave a finite val/score" in err and "val/task_0/rmse" in err
    assert not (tmp_path / "run" / "metrics.json").exists()
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and status["val"]["task_0"]["rmse"] is None
    assert status["val"]["task_1_bin"]["auc"] > 0.5
    # the failed run is not silently replaced by a rerun
    rc = cli.main(["train", str(recipe), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert rc == 2 and "holds a failed run" in capsys.readouterr().err


def _module_and_val_batch():
    rec = recipe_from_dict(tiny_recipe(), "<tiny>")
    dm, module, _ = run_mod.build_system(rec)
    batch = next(iter(dm.val_dataloader()))
    logged = {}
    module.log = lambda key, value, **kw: logged.__setitem__(key, float(value))
    return module, batch, logged


def test_score_terms_nan_one_class_and_no_labelled_rows():
    """val/score = mean of the primary terms; NaN if one is NaN; a task without any labelled row
    in the split is left out (worked values)."""
    module, batch, logged = _module_and_val_batch()
    n = batch[label_key("task_1_bin")].numel()
    # healthy: (auc - rmse) / 2
    module._eval_step("val", batch)
    module._epoch_end("val")
    s = module.last_scores["val"]
    assert logged["val/score"] == pytest.approx((s["task_1_bin"]["auc"] - s["task_0"]["rmse"]) / 2, abs=1e-6)
    # task_1_bin has no labelled row in the split: the score is task_0's term alone
    b = dict(batch)
    b[mask_key("task_1_bin")] = torch.zeros(n, dtype=torch.bool)
    with pytest.warns(UserWarning, match="task 'task_1_bin' has no labelled row in the val split"):
        module._eval_step("val", b)
        module._epoch_end("val")
    assert logged["val/score"] == pytest.approx(-module.last_scores["val"]["task_0"]["rmse"], abs=1e-6)
    assert math.isnan(module.last_scores["val"]["task_1_bin"]["auc"])
    # a single class: AUC NaN, the score NaN, a warning naming the task and the split
    b = dict(batch)
    b[label_key("task_1_bin")] = torch.zeros_like(batch[label_key("task_1_bin")])
    b.pop(mask_key("task_1_bin"), None)
    with pytest.warns(UserWarning, match=rf"task 'task_1_bin': every labelled row of the val split \({n}\) has "
                                         r"label 0, so auc is undefined \(NaN\) on a single class and val/score "
                                         r"is NaN"):
        module._eval_step("val", b)
        module._epoch_end("val")
    assert math.isnan(module.last_scores["val"]["task_1_bin"]["auc"]) and math.isnan(logged["val/score"])
    assert math.isfinite(module.last_scores["val"]["task_1_bin"]["logloss"])
    # the same split again: no second warning
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module._eval_step("val", b)
        module._epoch_end("val")
    assert not [w for w in caught if "single class" in str(w.message)]


def test_auc_is_nan_on_non_finite_scores():
    from mtlframe.metrics.auc import AUC

    m = AUC()
    m.update(torch.tensor([0.2, float("nan"), 0.9, 0.4]), torch.tensor([0, 1, 1, 0]))
    assert math.isnan(float(m.compute()))
    m.reset()
    m.update(torch.tensor([0.2, 0.8, 0.9, 0.4]), torch.tensor([0, 1, 1, 0]))
    assert float(m.compute()) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------
# 2. save_top_k keeps k files; best.ckpt and the reported metrics are the best's
# ------------------------------------------------------------------------------------------------


def test_save_top_k_keeps_k_files_and_best_is_the_best_not_the_last(tmp_path, capsys):
    """Validation logloss falls every epoch on the tiny recipe; monitored with mode max, epoch 1 is
    the best of 3 and epochs 1-2 are the top 2. best.ckpt holds epoch 1, the metrics reported are
    epoch 1's as logged during training, and the printed best value is that epoch's logloss."""
    result = _train(tmp_path / "run", progress=None, **{
        "trainer.max_epochs": 3, "logger": {"name": "csv"},
        "checkpoint": {"monitor": "val/task_1_bin/logloss", "mode": "max", "save_top_k": 2}})
    ckdir = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckdir.glob("*.ckpt")) == ["best.ckpt", "epoch=1-step=7.ckpt",
                                                            "epoch=2-step=14.ckpt", "last.ckpt"]
    assert torch.load(ckdir / "best.ckpt", map_location="cpu", weights_only=True)["epoch"] == 0
    logged = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv").dropna(subset=["val/task_1_bin/logloss"])
    per_epoch = logged["val/task_1_bin/logloss"].tolist()[:3]
    assert per_epoch[0] > per_epoch[1] > per_epoch[2]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["val"]["task_1_bin"]["logloss"] == pytest.approx(per_epoch[0], abs=1e-5)
    assert result.metrics["val"]["task_1_bin"]["logloss"] == pytest.approx(per_epoch[0], abs=1e-5)
    assert saved["best_checkpoint"] == str(ckdir / "best.ckpt") and saved["monitor"]["best"] == pytest.approx(
        per_epoch[0], abs=1e-5)
    assert [Path(p).name for p in saved["top_k_checkpoints"]] == ["epoch=1-step=7.ckpt", "epoch=2-step=14.ckpt"]
    out = capsys.readouterr().out
    printed = float(re.search(r"^best checkpoint: val/task_1_bin/logloss ([\d.]+) ", out, re.M).group(1))
    assert printed == pytest.approx(per_epoch[0], abs=1e-4)
    again = run_mod.evaluate(ckdir / "best.ckpt", split="val", accelerator="cpu")
    assert again["task_1_bin"]["logloss"] == pytest.approx(per_epoch[0], abs=1e-5)


# ------------------------------------------------------------------------------------------------
# 3. Early-stopping policies
# ------------------------------------------------------------------------------------------------


def _drive(policy, patience, sequences):
    """Feed ``{key: [values per epoch]}`` to the policy callback; return (stopped epoch, callback)."""
    from pytorch_lightning.trainer.states import TrainerFn

    watched = [run_mod._Watched(k, "max", task=k.split("/")[1], metric=k.split("/")[2]) for k in sequences]
    cb = run_mod._early_stopping_callback(watched, policy, patience, 0.0)
    n = len(next(iter(sequences.values())))
    for epoch in range(n):
        trainer = types.SimpleNamespace(
            sanity_checking=False, state=types.SimpleNamespace(fn=TrainerFn.FITTING), current_epoch=epoch,
            callback_metrics={k: torch.tensor(v[epoch]) for k, v in sequences.items()}, should_stop=False,
            strategy=types.SimpleNamespace(reduce_boolean_decision=lambda d, all=True: d))
        cb.on_validation_end(trainer, types.SimpleNamespace(last_rows={"val": {"a": 10, "b": 10}}))
        if trainer.should_stop:
            return epoch + 1, cb
    return None, cb


A = [0.50, 0.60, 0.60, 0.60, 0.60, 0.60]
B = [0.50, 0.50, 0.50, 0.70, 0.70, 0.70]


def test_early_stopping_any_stops_when_one_task_stops_improving():
    epoch, cb = _drive("any", 2, {"val/a/auc": A, "val/b/auc": B})
    assert epoch == 3
    assert cb.message() == ("early stopping after epoch 3: a monitored task stopped improving: val/b/auc did not "
                            "improve for 2 validation(s) (best 0.5000 at epoch 1) (patience 2, min_delta 0)")
    assert cb.stopped["monitors"] == [{"monitor": "val/b/auc", "task": "b", "metric": "auc", "best": 0.5,
                                       "best_epoch": 1, "cause": "patience",
                                       "reason": "val/b/auc did not improve for 2 validation(s) "
                                                 "(best 0.5000 at epoch 1)"}]


def test_early_stopping_all_stops_when_every_task_has_stopped_improving_at_once():
    # b is exhausted at epoch 3 but improves at 4; a is exhausted from 4; both at 6
    epoch, cb = _drive("all", 2, {"val/a/auc": A, "val/b/auc": B})
    assert epoch == 6
    assert [(d["task"], d["best"], d["best_epoch"]) for d in cb.stopped["monitors"]] == [
        ("a", pytest.approx(0.6), 2), ("b", pytest.approx(0.7), 4)]
    assert cb.message().startswith("early stopping after epoch 6: every monitored task stopped improving: ")


def test_early_stopping_on_a_nan_monitor_says_why():
    epoch, cb = _drive("one", 3, {"val/a/auc": [0.5, 0.6, float("nan"), 0.7]})
    assert epoch == 3
    assert cb.message() == ("early stopping after epoch 3: val/a/auc is NaN (best 0.6000 at epoch 2) "
                            "(patience 3, min_delta 0)")
    # under `all`, a NaN task counts as stopped, and the run goes on while another task improves
    epoch, _ = _drive("all", 2, {"val/a/auc": [0.5, float("nan"), float("nan"), float("nan")],
                                 "val/b/auc": [0.5, 0.6, 0.7, 0.8]})
    assert epoch is None


def test_early_stopping_reason_is_printed_and_saved_and_per_task_checkpoints_kept(tmp_path, capsys):
    _train(tmp_path / "run", progress=None, **{
        "trainer.max_epochs": 5,
        "early_stopping": {"monitor": "val/task_1_bin/logloss", "mode": "max", "patience": 1},
        "checkpoint": {"per_task": True}})
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    es = saved["early_stopping"]
    assert es["epoch"] == 2 and es["patience"] == 1 and es["policy"] == "one"
    assert [(m["task"], m["metric"], m["best_epoch"], m["cause"]) for m in es["monitors"]] == [
        ("task_1_bin", "logloss", 1, "patience")]
    assert re.search(r"^early stopping after epoch 2: val/task_1_bin/logloss did not improve for 1 validation\(s\) "
                     r"\(best [\d.]+ at epoch 1\) \(patience 1, min_delta 0\)$", out, re.M)
    ckdir = tmp_path / "run" / "checkpoints"
    assert {p.name for p in ckdir.glob("*.ckpt")} == {"best.ckpt", "best-task_0.ckpt", "best-task_1_bin.ckpt", "last.ckpt"}
    per = saved["per_task_checkpoints"]
    assert per["task_0"]["monitor"] == "val/task_0/rmse" and per["task_1_bin"]["monitor"] == "val/task_1_bin/auc"
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "finished" and status["epochs"] == 2


@pytest.mark.parametrize("policy", ["any", "all"])
def test_all_and_any_watch_every_tasks_primary_metric_in_a_run(tmp_path, policy):
    """With a learning rate of 1e-12 nothing improves by min_delta 0.01 after epoch 1: both tasks
    are exhausted at epoch 2 (patience 1), so `any` and `all` both stop there, naming each task's
    primary metric (task_0's rmse, lower is better; task_1_bin's auc) and its best at epoch 1."""
    _train(tmp_path / "run", **{"trainer.max_epochs": 4, "optimizer.lr": 1e-12,
                                "early_stopping": {"monitor": policy, "patience": 1, "min_delta": 0.01}})
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    es = saved["early_stopping"]
    assert es["epoch"] == 2 and es["policy"] == policy
    assert [(m["monitor"], m["best_epoch"], m["cause"]) for m in es["monitors"]] == [
        ("val/task_0/rmse", 1, "patience"), ("val/task_1_bin/auc", 1, "patience")]


def test_early_stopping_recipe_keys_are_validated():
    ok = recipe_from_dict(tiny_recipe(early_stopping={"monitor": "any"}), "<tiny>")
    assert ok.config.early_stopping.monitor == "any"
    recipe_from_dict(tiny_recipe(early_stopping={"monitor": "task_0"}, checkpoint={"monitor": "task_1_bin"}), "<t>")
    with pytest.raises(RecipeError) as exc:
        recipe_from_dict(tiny_recipe(early_stopping={"monitor": "alll"}), "<tiny>")
    assert "did you mean 'all'" in str(exc.value) and exc.value.problems[0][0] == "early_stopping.monitor"
    with pytest.raises(RecipeError) as exc:
        recipe_from_dict(tiny_recipe(early_stopping={"monitor": "all", "mode": "max"}), "<tiny>")
    assert exc.value.problems[0][0] == "early_stopping.mode"
    with pytest.raises(RecipeError) as exc:
        recipe_from_dict(tiny_recipe(checkpoint={"monitor": "any"}), "<tiny>")
    assert exc.value.problems[0][0] == "checkpoint.monitor"
    with pytest.raises(RecipeError, match="save_top_k 0 would keep no checkpoint") as exc:
        recipe_from_dict(tiny_recipe(checkpoint={"save_top_k": 0}), "<tiny>")
    assert exc.value.problems[0][0] == "checkpoint.save_top_k"
    # early stopping decides after validation, before the epoch's train/ values are logged
    with pytest.raises(RecipeError, match="would always see the previous epoch's value") as exc:
        recipe_from_dict(tiny_recipe(early_stopping={"monitor": "train/loss_epoch"}), "<tiny>")
    assert exc.value.problems[0][0] == "early_stopping.monitor"
    recipe_from_dict(tiny_recipe(checkpoint={"monitor": "train/loss_epoch"}), "<tiny>")   # checkpoints may


# ------------------------------------------------------------------------------------------------
# 5. Ctrl-C during train
# ------------------------------------------------------------------------------------------------


def test_keyboard_interrupt_in_training_marks_the_run_and_cli_exits_130(tmp_path, monkeypatch, capsys):
    """In-process and fast: a KeyboardInterrupt at the third step of epoch 2 goes through Lightning's
    own handling (which would exit with status 1 and ignore Ctrl-C from then on)."""
    real = module_mod.MultiTaskModule.training_step

    def step(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 2:
            raise KeyboardInterrupt
        return real(self, batch, batch_idx)

    monkeypatch.setattr(module_mod.MultiTaskModule, "training_step", step)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(**{"trainer.max_epochs": 5})))
    run_dir = tmp_path / "run"
    rc = cli.main(["train", str(recipe), "--run-dir", str(run_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 130
    last, best = run_dir / "checkpoints" / "interrupted.ckpt", run_dir / "checkpoints" / "best.ckpt"
    assert err.strip() == (f"interrupted (Ctrl-C) during training at epoch 2/5, step 9. {run_dir} is marked "
                           f"interrupted (status.json); last checkpoint: {last}; best checkpoint: {best}. Continue it "
                           f"with: mtlframe train --resume {run_dir}.")
    status = json.loads((run_dir / "status.json").read_text())
    assert (status["status"], status["epoch"], status["step"]) == ("interrupted", 2, 9)
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 9
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(module_mod.MultiTaskModule, "training_step", real)
    assert cli.main(["train", str(recipe), "--run-dir", str(run_dir), "--no-progress"]) == 2
    assert "holds a run interrupted during training at epoch 2/5, step 9" in capsys.readouterr().err
    # --overwrite with a recipe that fails to build leaves the earlier run as it was
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(tiny_recipe(**{"trainer.max_epochs": 5, "tasks.task_0.label": "no_such_column"})))
    assert cli.main(["train", str(broken), "--run-dir", str(run_dir), "--no-progress", "--overwrite"]) == 2
    assert "no_such_column" in capsys.readouterr().err                  # a data-time error, after the check
    assert last.exists() and json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert cli.main(["train", str(recipe), "--run-dir", str(run_dir), "--no-progress", "--overwrite"]) == 0
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "finished" and status["epochs"] == 5     # the epochs run, counted from 1
    assert not last.exists()


@pytest.mark.slow
def test_ctrl_c_marks_the_run_interrupted_exits_130_and_a_rerun_says_so(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(**{"trainer.max_epochs": 200, "trainer.enable_progress_bar": True})))
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mtlframe.cli", "train", str(recipe), "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    for line in proc.stdout:
        # epoch 1's checkpoint is written just after its line is printed: interrupt in epoch 2 or later
        if line.startswith("epoch 2/200") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert re.search(r"interrupted \(Ctrl-C\) during training at epoch \d+/200, step \d+\. .* is marked interrupted",
                     err)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted" and status["during"] == "training" and status["epoch"] >= 2
    assert Path(status["last_checkpoint"]).is_file() and Path(status["best_checkpoint"]).is_file()
    rc = cli.main(cmd[3:])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"holds a run interrupted during training at epoch {status['epoch']}/200" in err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------
# 6. evaluate / predict on the accelerator asked for; evaluate on moved data
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A tiny run on a CSV file (the synthetic rows written out)."""
    from mtlframe.registry import get_registry

    root = tmp_path_factory.mktemp("csvrun")
    args = {k: v for k, v in tiny_recipe()["data"]["dataset"].items() if k != "name"}
    frame = get_registry().get("dataset", "synthetic").load()(**args).load().frame
    cols = [f"x_{i:03d}" for i in range(8)] + ["cat_0", "task_0", "task_1_bin"]
    frame[cols].to_csv(root / "data.csv", index=False)
    features = {**{f"x_{i:03d}": "numeric" for i in range(8)}, "cat_0": "categorical"}
    rec = tiny_recipe(**{"data.dataset": {"name": "csv", "path": str(root / "data.csv"), "features": features,
                                          "labels": ["task_0", "task_1_bin"]}})
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    result = run_mod.train(recipe_from_dict(rec, "<tiny csv>"), root / "run", progress=False)
    torch.set_num_threads(before)
    return root, result


def test_evaluate_runs_on_the_accelerator_asked_for(csv_run, monkeypatch):
    root, result = csv_run
    devices = []
    real = run_mod._make_eval_trainer
    monkeypatch.setattr(run_mod, "_make_eval_trainer", lambda d: (devices.append(d), real(d))[1])
    scores = run_mod.evaluate(result.best_checkpoint, accelerator="cpu")
    assert devices == [torch.device("cpu")]
    assert scores["task_1_bin"]["auc"] == pytest.approx(result.metrics["test"]["task_1_bin"]["auc"], abs=1e-6)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert run_mod.resolve_device("auto") == torch.device("cuda")
    assert run_mod.resolve_device("gpu") == torch.device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_gpu_asked_for_on_a_cpu_machine_is_a_one_line_error(csv_run, command, capsys):
    root, result = csv_run
    extra = ["--input", str(root / "data.csv"), "--output", str(root / "p.csv")] if command == "predict" else []
    rc = cli.main([command, "--checkpoint", result.best_checkpoint, "--accelerator", "gpu", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines() == [
        "error: --accelerator gpu: torch sees no CUDA GPU on this machine (torch.cuda.is_available() is False); "
        "use --accelerator cpu, or auto."]


def test_predict_on_the_cpu_accelerator(csv_run, monkeypatch):
    root, result = csv_run
    moved = []
    real = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: (moved.append(a), real(self, *a, **k))[1])
    rc = cli.main(["predict", "--checkpoint", result.best_checkpoint, "--input", str(root / "data.csv"),
                   "--output", str(root / "pred.csv"), "--accelerator", "cpu"])
    assert rc == 0 and moved == [(torch.device("cpu"),)]
    assert len(pd.read_csv(root / "pred.csv")) == 2000


def test_evaluate_on_moved_data(csv_run, tmp_path, capsys):
    root, result = csv_run
    moved = tmp_path / "elsewhere" / "data.csv"
    moved.parent.mkdir()
    os.replace(root / "data.csv", moved)
    try:
        with pytest.raises(MTLFrameError, match=r"trained on data at .*data\.csv, which does not exist .* "
                                                r"--data-path NEW_PATH"):
            run_mod.evaluate(result.best_checkpoint, accelerator="cpu")
        # a wrong new path is named as the path given, beside the path of training
        with pytest.raises(MTLFrameError, match=r"the data path given to evaluate, .*nowhere\.csv, does not exist; "
                                                r".* trained on data at .*data\.csv"):
            run_mod.evaluate(result.best_checkpoint, accelerator="cpu", data_path=tmp_path / "nowhere.csv")
        scores = run_mod.evaluate(result.best_checkpoint, accelerator="cpu", data_path=moved)
        assert scores["task_0"]["rmse"] == pytest.approx(result.metrics["test"]["task_0"]["rmse"], abs=1e-6)
        out_json = tmp_path / "m.json"
        rc = cli.main(["evaluate", "--checkpoint", result.best_checkpoint, "--accelerator", "cpu",
                       f"data.dataset.path={moved}", "--output", str(out_json)])
        assert rc == 0
        assert json.loads(out_json.read_text())["test"]["task_0"]["rmse"] == pytest.approx(scores["task_0"]["rmse"])
        with pytest.raises(MTLFrameError, match="evaluate takes overrides of data.* only"):
            run_mod.evaluate(result.best_checkpoint, accelerator="cpu", overrides=["optimizer.lr=1"])
    finally:
        os.replace(moved, root / "data.csv")


def test_evaluate_refuses_data_that_changed_since_training(csv_run, tmp_path):
    """evaluate re-creates the run's split from the data: edited data would silently shift ids and
    statistics under the trained weights (or crash in load_state_dict); it is an error naming the column."""
    import pandas as pd

    root, result = csv_run
    frame = pd.read_csv(root / "data.csv")
    edited = frame.copy()
    edited.loc[edited.index[:40], "cat_0"] = 987654                      # a new value in the vocabulary
    path = tmp_path / "edited.csv"
    edited.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"edited\.csv is not the data .*best\.ckpt was trained on: the vocabulary "
                                        r"of column 'cat_0' changed .*mtlframe predict"):
        run_mod.evaluate(result.best_checkpoint, accelerator="cpu", data_path=path)
    scaled = frame.copy()
    scaled["x_003"] = scaled["x_003"] * 10.0                              # same ids, other statistics
    scaled.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"the training mean / std of column 'x_003' changed"):
        run_mod.evaluate(result.best_checkpoint, accelerator="cpu", data_path=path)


# ------------------------------------------------------------------------------------------------
# 7. Epochs count from 1 everywhere
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rich", [True, False], ids=["rich", "tqdm"])
def test_progress_bar_counts_epochs_like_the_epoch_lines(monkeypatch, rich):
    import pytorch_lightning.utilities.imports as imports

    monkeypatch.setattr(imports, "_RICH_AVAILABLE", rich)
    bar = run_mod._progress_bar()
    trainer = types.SimpleNamespace(current_epoch=2, max_epochs=15, num_training_batches=7)
    bar._trainer = trainer
    if rich:
        assert bar._get_train_description(2).strip() == "Epoch 3/15"
    else:
        bar._enabled = True
        bar.train_progress_bar = bar.init_train_tqdm()
        monkeypatch.setattr(type(bar), "total_train_batches", property(lambda self: 7))
        bar.on_train_epoch_start(trainer)
        assert bar.train_progress_bar.desc.rstrip(": ") == "Epoch 3/15"
        bar.train_progress_bar.close()


def test_ctrl_c_during_evaluate_exits_130_and_gives_ctrl_c_back(csv_run, monkeypatch, capsys):
    """Lightning turns a KeyboardInterrupt into exit status 1 and then ignores Ctrl-C; evaluate
    says what was interrupted, exits with 130, and Python's Ctrl-C handler is back."""
    root, result = csv_run

    def interrupted(self, batch, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr(module_mod.MultiTaskModule, "test_step", interrupted)
    rc = cli.main(["evaluate", "--checkpoint", result.best_checkpoint, "--accelerator", "cpu"])
    assert rc == 130
    assert capsys.readouterr().err.strip() == (f"interrupted (Ctrl-C) while evaluating {result.best_checkpoint} "
                                               "on the test split")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_evaluate_loads_its_data_says_what_was_interrupted(csv_run, monkeypatch, capsys):
    """Ctrl-C before Lightning's loop (while the data loads and is preprocessed) says the same."""
    root, result = csv_run

    def interrupted(recipe, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "build_system", interrupted)
    assert cli.main(["evaluate", "--checkpoint", result.best_checkpoint, "--accelerator", "cpu"]) == 130
    assert capsys.readouterr().err.strip() == (f"interrupted (Ctrl-C) while evaluating {result.best_checkpoint} "
                                               "on the test split")
