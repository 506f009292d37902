"""``mtlframe train --resume``: a run stopped and continued trains the same weights as one run
straight through (CPU, bit for bit), whether it stopped at an epoch's end or in the middle of an
epoch (Ctrl-C), for a loss-level and a gradient-level combiner."""
from __future__ import annotations

import json
import os
import signal

import pytest
import pytorch_lightning as pl
import torch

from mtlframe import cli
from mtlframe import run as run_mod
from mtlframe.errors import CheckpointError, MTLFrameError, RecipeError
from mtlframe.recipe import recipe_from_dict
from mtlframe.testing import tiny_recipe


def _recipe(epochs: int, **overrides):
    # 480 training rows in batches of 64: 8 steps per epoch; dropout draws from torch's generator
    base = {"data.dataset.num_rows": 600, "data.batch_size": 64, "trainer.max_epochs": epochs,
            "model.tower": {"name": "mlp", "hidden": [8], "dropout": 0.2}}
    return recipe_from_dict(tiny_recipe(**{**base, **overrides}), "<tiny>")


def _weights(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["state_dict"], ckpt["optimizer_states"][0]["state"], ckpt["global_step"]


def _same(a, b):
    (wa, oa, sa), (wb, ob, sb) = a, b
    assert sa == sb
    assert wa.keys() == wb.keys() and oa.keys() == ob.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    for i in oa:
        for k, v in oa[i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob[i][k])), (i, k)


#: the loss-level case also trains sparse tables (row-wise Adagrad state), a step-decay schedule stepped
#: per step (its state; a schedule of the run's length, such as cosine, follows the extended length),
#: and data-side negatives drawn afresh each epoch (the sampler's epoch)
SPARSE_SCHEDULED_NEGATIVES = {
    "combiner": {"name": "static"}, "data.dataset.num_categorical": 2,
    "model.encoders[1]": {"name": "embedding", "features": ["cat_0", "cat_1"], "dim": 4, "sparse": True},
    "optimizer": {"name": "adam", "lr": 0.01, "sparse_optimizer": "rowwise_adagrad", "sparse_lr": 0.05,
                  "scheduler": {"name": "step", "interval": "step", "step_size": 5, "gamma": 0.8}},
    "data.sampler": {"name": "uniform-negatives", "task": "task_1_bin", "item_features": ["cat_1"],
                     "user_feature": "cat_0", "ratio": 1}}


@pytest.mark.parametrize("case", [SPARSE_SCHEDULED_NEGATIVES, {"combiner": {"name": "pcgrad"}}],
                         ids=["static-sparse-schedule-negatives", "pcgrad"])
def test_two_epochs_then_resume_two_more_equals_four_straight(tmp_path, case):
    straight = run_mod.train(_recipe(4, **case), tmp_path / "straight", progress=False)
    first = run_mod.train(_recipe(2, **case), tmp_path / "split", progress=False)
    assert json.loads((first.run_dir / "status.json").read_text())["status"] == "finished"
    with pytest.raises(MTLFrameError, match=f"--resume {first.run_dir} trainer.max_epochs=N trains it longer"):
        run_mod.train(_recipe(4, **case), first.run_dir)    # a new run into it says how to extend it instead
    # a finished run is extended by raising trainer.max_epochs; nothing else may change
    with pytest.raises(RecipeError) as exc:
        run_mod.train(None, resume=first.run_dir, overrides=["trainer.max_epochs=4", "optimizer.lr=0.1"])
    assert exc.value.problems[0][0] == "optimizer.lr"
    with pytest.raises(MTLFrameError, match="already trained 2 epoch.*trainer.max_epochs=7"):
        run_mod.train(None, resume=first.run_dir)
    resumed = run_mod.train(None, resume=first.run_dir, overrides=["trainer.max_epochs=4"], progress=False)
    assert resumed.run_dir == first.run_dir
    _same(_weights(straight.run_dir / "checkpoints" / "last.ckpt"), _weights(first.run_dir / "checkpoints" / "last.ckpt"))
    status = json.loads((first.run_dir / "status.json").read_text())
    # 8 steps per epoch; 12 with a negative per positive task_1_bin row (about half of the 480)
    steps = json.loads((straight.run_dir / "status.json").read_text())["step"]
    assert steps == (48 if "data.sampler" in case else 32)
    assert status["status"] == "finished" and status["epochs"] == 4 and status["step"] == steps
    assert status["resumed"] == {"from": str(first.run_dir / "checkpoints" / "last.ckpt"), "epoch": 3, "batch": 0,
                                 "step": steps // 2, "previous": "finished"}
    metrics = json.loads((first.run_dir / "metrics.json").read_text())
    assert metrics["test"] == json.loads((straight.run_dir / "metrics.json").read_text())["test"]


class _CtrlC(pl.Callback):
    """Sends this process a SIGINT at the start of training batch ``batch`` of epoch ``epoch`` (0-based)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.at = (epoch, batch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_mid_epoch_then_resume_finishes_with_the_straight_weights(tmp_path, capsys):
    """A gradient-level combiner (manual optimization) with a cosine schedule over the 3 epochs."""
    case = {"combiner": {"name": "pcgrad"}, "optimizer.scheduler": {"name": "cosine", "warmup": 3}}
    straight = run_mod.train(_recipe(3, **case), tmp_path / "straight", progress=False)
    run_dir = tmp_path / "split"
    with pytest.raises(run_mod.RunInterrupted, match=f"Continue it with: mtlframe train --resume {run_dir}"):
        run_mod.train(_recipe(3, **case), run_dir, progress=False, callbacks=[_CtrlC(1, 3)])
    assert "stopping after this training batch" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    status = json.loads((run_dir / "status.json").read_text())
    # the batch being trained when Ctrl-C came (the 4th of epoch 2) was finished: 8 + 4 steps
    assert (status["status"], status["epoch"], status["step"], status["batch"]) == ("interrupted", 2, 12, 4)
    assert status["resumable"] is True and status["resume"] == f"mtlframe train --resume {run_dir}"
    # a resume attempt that failed before its first validation (status.json now says failed) leaves
    # interrupted.ckpt the newest state: the next --resume still takes it, not the older last.ckpt
    status_text = (run_dir / "status.json").read_text()
    (run_dir / "status.json").write_text(json.dumps({"status": "failed", "reason": "an earlier resume failed"}))
    assert run_mod.resume_target(run_dir).checkpoint.name == "interrupted.ckpt"
    (run_dir / "status.json").write_text(status_text)
    # the run folder: resumed from interrupted.ckpt at the exact batch, not at the epoch's start
    capsys.readouterr()
    # with the progress display on, as a user has it: plain epoch lines, as output is not a terminal
    assert cli.main(["train", "--resume", str(run_dir), "trainer.enable_progress_bar=true"]) == 0
    out = capsys.readouterr().out
    # the resumed epoch's line counts the 4 steps trained since the resume; then a whole epoch
    assert "epoch 2/3  4 steps" in out and "epoch 3/3  8 steps" in out
    status = json.loads((run_dir / "status.json").read_text())
    assert status["resumed"]["from"].endswith("interrupted.ckpt")
    assert (status["resumed"]["epoch"], status["resumed"]["batch"], status["resumed"]["step"]) == (2, 4, 12)
    assert status["status"] == "finished" and status["step"] == 24
    _same(_weights(straight.run_dir / "checkpoints" / "last.ckpt"), _weights(run_dir / "checkpoints" / "last.ckpt"))


def test_resume_refuses_what_it_cannot_continue(tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoints/last.ckpt"):
        run_mod.train(None, resume=tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        run_mod.train(None, resume=tmp_path / "nope.ckpt")
    assert cli.main(["train", "--resume", str(tmp_path), "r.yaml"]) == 2


def test_db_mtl_gradient_ema_is_saved_with_the_weights():
    """Its EMA of per-task gradients is state a resume needs (it was a non-persistent buffer, so a
    resumed run restarted it from zeros while its step counts went on)."""
    from mtlframe.combiners.db_mtl import DBMTL

    trained, fresh = DBMTL(task_names=["a", "b"]), DBMTL(task_names=["a", "b"])
    trained.grad_ema = torch.arange(6.0).reshape(2, 3)
    trained.steps += 4
    fresh.load_state_dict(trained.state_dict())
    assert torch.equal(fresh.grad_ema, torch.arange(6.0).reshape(2, 3)) and fresh.steps.tolist() == [4.0, 4.0]
    untouched = DBMTL(task_names=["a", "b"])
    untouched.load_state_dict(DBMTL(task_names=["a", "b"]).state_dict())   # before the first step: still none
    assert untouched.grad_ema is None


def test_early_stopping_state_is_saved_and_restored():
    """A resumed run counts patience on from where it stopped: each watched value's best, its epoch
    and the validations without improvement go into the checkpoint (Lightning's callback state)."""
    def stopper():
        return run_mod._early_stopping_callback([run_mod._Watched("val/score", "max"),
                                                 run_mod._Watched("val/a/auc", "max", "a", "auc")], "any", 3, 0.0)

    trained = stopper()
    trained.watched[0].best, trained.watched[0].best_epoch, trained.watched[0].wait = 0.71, 4, 2
    trained.watched[1].best, trained.watched[1].best_epoch, trained.watched[1].wait = 0.8, 5, 1
    resumed = stopper()
    resumed.load_state_dict(trained.state_dict())
    assert [(w.key, w.best, w.best_epoch, w.wait) for w in resumed.watched] == [
        ("val/score", 0.71, 4, 2), ("val/a/auc", 0.8, 5, 1)]
    assert resumed.stopped is None   # a resumed run that had stopped may train on (raise patience)


def test_a_onecycle_run_is_not_extended_past_its_planned_length(tmp_path):
    """OneCycleLR's state fixes the run's length: a longer resumed run is refused up front, at the
    trainer key, instead of torch's error in the middle of training."""
    first = run_mod.train(_recipe(1, **{"optimizer.scheduler": {"name": "onecycle"}}), tmp_path / "run",
                          progress=False)
    with pytest.raises(RecipeError) as exc:
        run_mod.train(None, resume=first.run_dir, overrides=["trainer.max_epochs=2"])
    assert exc.value.problems[0][0] == "trainer.max_epochs" and "planned length" in exc.value.problems[0][1]


def test_a_moved_run_folder_resumes_with_its_best_score(tmp_path):
    """Lightning drops the best score when the checkpoint's folder differs (a run copied or moved):
    the first validation after the resume then replaced best.ckpt whatever its score."""
    old, new = tmp_path / "cluster" / "run" / "checkpoints", tmp_path / "here" / "run" / "checkpoints"
    cb = run_mod._checkpoint_callback(dirpath=str(new), filename="best", monitor="val/score", mode="max",
                                      save_last=True)
    cb.load_state_dict({"dirpath": str(old), "monitor": "val/score", "best_model_score": torch.tensor(0.75),
                        "best_model_path": str(old / "best.ckpt"), "kth_best_model_path": str(old / "best.ckpt"),
                        "kth_value": torch.tensor(0.75), "last_model_path": str(old / "last.ckpt"),
                        "best_k_models": {str(old / "best.ckpt"): torch.tensor(0.75)}})
    assert float(cb.best_model_score) == 0.75 and float(cb.kth_value) == 0.75
    assert cb.best_model_path == str(new / "best.ckpt") and cb.last_model_path == str(new / "last.ckpt")
    assert {k: float(v) for k, v in cb.best_k_models.items()} == {str(new / "best.ckpt"): 0.75}


def test_a_run_still_training_elsewhere_is_not_offered_a_resume(tmp_path):
    """The folder of a live run: wait for it or stop it; continuing it from here would fight it."""
    import subprocess
    import sys

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "status.json").write_text(json.dumps({"status": "running", "pid": other.pid, "started": "t"}))
        with pytest.raises(MTLFrameError) as err:
            run_mod._check_run_dir(tmp_path, overwrite=False)
        assert f"still training in process {other.pid}" in str(err.value) and "--resume" not in str(err.value)
    finally:
        other.kill()
        other.wait()
    # once that process is gone, the folder holds a killed run: continuing it is offered
    with pytest.raises(MTLFrameError, match=f"mtlframe train --resume {tmp_path}"):
        run_mod._check_run_dir(tmp_path, overwrite=False)


def test_a_failed_training_gives_ctrl_c_back(tmp_path):
    """A run that stops on an error (here a diverging loss) must not leave its batch-boundary Ctrl-C
    handler installed: the next Ctrl-C in that Python (a notebook, a grid) would otherwise be
    swallowed by a finished run."""
    from mtlframe.testing import train_tiny

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(MTLFrameError, match="not finite"):
        train_tiny(tmp_path, optimizer={"name": "sgd", "lr": 50.0}, **{"trainer.log_every_n_steps": 3})
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_train_batch_limit_below_the_resumed_position_is_refused(tmp_path):
    """A checkpoint written after batch 6 of an epoch cannot end that epoch at batch 3: Lightning
    would train past the limit (and miss the epoch's validation) instead of stopping."""
    def target(limit, epoch_done=False):
        return run_mod.ResumeTarget(tmp_path, tmp_path / "last.ckpt", _recipe(4, **{"trainer.limit_train_batches": limit}),
                                    {"epoch": 1, "batches": 6, "epoch_done": epoch_done, "step": 14}, {})

    with pytest.raises(RecipeError, match=r"stopped after batch 6 of epoch 2.*limit_train_batches >= 6") as err:
        run_mod._check_resume(target(3))
    assert err.value.problems[0][0] == "trainer.limit_train_batches"
    run_mod._check_resume(target(6))                     # the epoch ends where it stopped: fine
    run_mod._check_resume(target(3, epoch_done=True))    # a finished epoch: the next one starts at batch 0


def test_a_resume_from_a_checkpoint_whose_weights_do_not_fit_is_refused_naming_the_key(tmp_path):
    """``train --resume`` of a checkpoint that lacks a weight of the model (another plugin version,
    an edited file): a ``CheckpointError`` naming the checkpoint and the key before training, not
    Lightning's bare ``RuntimeError: Error(s) in loading state_dict`` from inside ``fit``."""
    from mtlframe.errors import CheckpointError
    from mtlframe.run import train
    from mtlframe.testing import train_tiny

    train_tiny(tmp_path, **{"trainer.limit_train_batches": 2})
    last = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    table = next(k for k in state["state_dict"] if k.startswith("model.encoders.1."))
    del state["state_dict"][table]
    last.unlink()
    torch.save(state, last)
    with pytest.raises(CheckpointError) as err:
        train(None, resume=tmp_path, overrides=["trainer.max_epochs=2"], progress=False)
    assert str(last) in str(err.value)
    assert f"weights the checkpoint lacks (they would keep random initial values): {table}" in str(err.value)
