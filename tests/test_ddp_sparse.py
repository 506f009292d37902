"""Sparse task labels: two DDP processes (gloo, Lightning's Trainer) equal one process on the same
global batches; a non-finite training loss stops the run or skips the step; labelled-row counts and
uncertainty's log-variances are logged.

The batches (``tests/ddp_sparse_run.py``) put a task's labels on both processes with different
counts, on one process only, on neither, and a step with no label at all. Before the fix, two
processes hung in the first step where a task had labels on one process only (one process left the
tower out of its backward); the timeout turns that into a failure.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch

from mtlframe.errors import MTLFrameError
from mtlframe.testing import run_process_group

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ddp_sparse_run  # noqa: E402

#: labelled rows per task over the epoch, summed over both halves of every step of PLAN
LABELLED = {"task_0": 16 + 10 + 10 + 6 + 0 + 0, "task_1_bin": 10 + 5 + 0 + 2 + 0 + 9}


#: what one launch of two processes trains (``COMBINER[@SETUP]``; see ``ddp_sparse_run.py``)
RUNS = ["uncertainty", "pcgrad", "static@funnel"]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """One launch of two gloo processes training every entry of :data:`RUNS`: ``{entry: result}``."""
    if sys.platform != "linux":
        pytest.skip("DDP on CPU tested on Linux")
    out = tmp_path_factory.mktemp("ddp") / "two"
    run_process_group([sys.executable, str(HERE / "ddp_sparse_run.py"), str(out), ",".join(RUNS), "2"], timeout=240,
                      env={**os.environ, "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1"})
    return {entry: torch.load(f"{out}.{entry}.pt") for entry in RUNS}


def test_two_processes_with_sparse_labels_equal_one_process(tmp_path, two_processes):
    combiners = ["uncertainty", "pcgrad"]                          # loss-level, gradient-level
    for combiner in combiners:
        two = two_processes[combiner]
        one = ddp_sparse_run.main(str(tmp_path / f"one.{combiner}.pt"), combiner, 1)
        moved = max(float((one["weights"][k] - one["init"][k]).abs().max()) for k in one["init"])
        assert moved > 1e-2                                         # it trained
        for k, w in one["weights"].items():
            torch.testing.assert_close(two["weights"][k], w, rtol=0, atol=1e-5, msg=f"{combiner}: {k}")
        for r in (one, two):
            for task, n in LABELLED.items():
                assert r["logged"][f"train/labelled/{task}"] == n  # summed over processes
            assert math.isnan(r["val"]["task_0"]["rmse"])         # labelled on no process
        for key in ("train/loss/task_0", "train/loss/task_1_bin", "train/loss_epoch"):
            assert two["logged"][key] == pytest.approx(one["logged"][key], rel=1e-6), key
        assert two["val"]["task_1_bin"]["logloss"] == pytest.approx(one["val"]["task_1_bin"]["logloss"], rel=1e-6)


def test_two_processes_with_funnel_auxiliary_losses_equal_one_process(tmp_path, two_processes):
    """ESCM2's auxiliary losses (escm2/dr, escm2/imputation) are means over the rows with a known
    click of the *global* batch: two processes with uneven such rows (one with none in a step)
    train the weights of one process on the same global batches, and log the same epoch values.
    Before the fix each process divided by its own row count (a mean of the processes' means)."""
    two = two_processes["static@funnel"]
    one = ddp_sparse_run.main(str(tmp_path / "one.pt"), "static", 1, setup="funnel")
    aux = one["module"].model.backbone
    assert aux.counterfactual == "dr" and set(one["logged"]) >= {"train/aux/escm2/dr", "train/aux/escm2/imputation"}
    moved = max(float((one["weights"][k] - one["init"][k]).abs().max()) for k in one["init"])
    assert moved > 1e-2
    imputation = [k for k in one["weights"] if ".imputation." in k]
    assert imputation and max(float((one["weights"][k] - one["init"][k]).abs().max()) for k in imputation) > 1e-3
    for k, w in one["weights"].items():
        torch.testing.assert_close(two["weights"][k], w, rtol=0, atol=1e-5, msg=f"escm2: {k}")
    for key in ("train/aux/escm2/dr", "train/aux/escm2/imputation", "train/loss/buy", "train/loss_epoch"):
        assert two["logged"][key] == pytest.approx(one["logged"][key], rel=1e-6), key


# -- one process: fast checks of the same machinery ------------------------------------------------

def test_labelled_counts_and_uncertainty_log_variances_are_logged(tmp_path):
    with pytest.warns(UserWarning, match="task 'task_0' has no labelled row in the val split"):
        r = ddp_sparse_run.main(str(tmp_path / "o.pt"), "uncertainty", 1)
    logged = r["logged"]
    assert {k: logged[f"train/labelled/{k}"] for k in LABELLED} == LABELLED
    # the last step labels task_1_bin only: its weight is e^{-s} (binary), task_0's is 0
    assert logged["train/weight/task_1_bin"] == pytest.approx(math.exp(-logged["train/log_var/task_1_bin"]))
    assert logged["train/weight/task_0"] == 0.0
    assert math.isnan(r["val"]["task_0"]["rmse"]) and math.isnan(r["val"]["task_0"]["mae"])
    assert math.isfinite(r["val"]["task_1_bin"]["logloss"])


@pytest.mark.parametrize("combiner", ["static", "pcgrad"])
def test_a_task_unlabelled_for_a_whole_epoch_warns_and_training_goes_on(tmp_path, combiner):
    """task_0 has no labelled row in any step of the epoch: a warning names it and the epoch,
    train/loss/task_0 is not logged, its validation metrics are NaN, and task_1_bin trains."""
    plan = [{"task_0": (0, 0), "task_1_bin": step["task_1_bin"]} for step in ddp_sparse_run.PLAN]
    with pytest.warns(UserWarning, match=r"task 'task_0' has no labelled row in training epoch 1 \(on any process\): "
                                         r"it was not trained this epoch"):
        r = ddp_sparse_run.main(str(tmp_path / "o.pt"), combiner, 1, plan=plan)
    assert r["logged"]["train/labelled/task_0"] == 0 and "train/loss/task_0" not in r["logged"]
    assert math.isfinite(r["logged"]["train/loss/task_1_bin"]) and math.isnan(r["val"]["task_0"]["rmse"])
    moved = [k for k in r["init"] if float((r["weights"][k] - r["init"][k]).abs().max()) > 0]
    assert any("task_1_bin" in k for k in moved) and not any("task_0" in k for k in moved)


def test_epoch_loss_is_the_mean_over_labelled_rows(tmp_path):
    from mtlframe.features import label_key, mask_key
    from mtlframe.tasks import task_loss

    plan = [{"task_0": (8, 8), "task_1_bin": (1, 0)}, {"task_0": (8, 8), "task_1_bin": (8, 8)}]
    r = ddp_sparse_run.main(str(tmp_path / "o.pt"), "static", 1, plan=plan, lr=1e-12)  # weights ~fixed
    assert r["logged"]["train/labelled/task_1_bin"] == 17
    model = r["module"].model.eval()
    rows = []
    with torch.no_grad():
        for b in r["batches"]:
            m = b[mask_key("task_1_bin")]
            rows.append(task_loss("binary", model(b)["task_1_bin"][m], b[label_key("task_1_bin")][m]))
    per_row = float(torch.cat(rows).mean())                       # 17 rows, each counted once
    batch_means = (float(rows[0].mean()) + float(rows[1].mean())) / 2
    assert abs(per_row - batch_means) > 1e-3                       # the two definitions differ here
    assert r["logged"]["train/loss/task_1_bin"] == pytest.approx(per_row, rel=1e-5)


def test_non_finite_loss_stops_the_run_naming_task_and_step(tmp_path):
    with pytest.raises(MTLFrameError, match=r"not finite at global step 3 .*'task_0' \(inf\).*nan_loss: skip"):
        ddp_sparse_run.main(str(tmp_path / "o.pt"), "static", 1, inf_label=(3, "task_0"))


@pytest.mark.parametrize("combiner", ["static", "pcgrad"])
def test_non_finite_loss_skips_the_step_when_asked(tmp_path, combiner):
    with pytest.warns(UserWarning, match=r"1 training step\(s\) of epoch 1 were skipped .*3 \(task_0\)"):
        r = ddp_sparse_run.main(str(tmp_path / "o.pt"), combiner, 1, nan_loss="skip", inf_label=(3, "task_0"))
    assert r["skipped"] == 1
    assert r["logged"]["train/skipped_steps"] == 1
    assert all(bool(torch.isfinite(w).all()) for w in r["weights"].values() if w.is_floating_point())
    # the skipped step's rows are not counted: step 3 labels task_0 on 6 rows
    assert r["logged"]["train/labelled/task_0"] == LABELLED["task_0"] - 6


def test_an_epoch_whose_every_step_is_skipped_says_so_and_nothing_else(tmp_path, capsys):
    """Every step skipped (a model diverged at once, nan_loss: skip): the warning says nothing was
    trained; no false "no labelled row" warning; the epoch line prints no made-up train/loss 0.0000;
    the final error names the monitored value as it is (NaN or -inf), and epochs count from 1."""
    import warnings

    from mtlframe.recipe import recipe_from_dict
    from mtlframe.run import NoFiniteScoreError, train
    from mtlframe.testing import tiny_recipe

    rec = tiny_recipe(optimizer={"name": "sgd", "lr": 1e30}, **{"trainer.nan_loss": "skip", "trainer.max_epochs": 2})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(NoFiniteScoreError) as err:
            train(recipe_from_dict(rec, "<tiny>"), tmp_path / "run", progress=True)
    said = [str(w.message) for w in record]
    assert not [m for m in said if "has no labelled row in training epoch" in m], said
    assert [m for m in said if "of epoch 2 were skipped" in m and "every step of the epoch, so nothing was trained"
            in m], said
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert lines and lines[-1].startswith("epoch 2/2") and "train/loss" not in lines[-1], lines
    msg = str(err.value)
    assert "the one kept has val/score " in msg and "not finite: " in msg


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_skipped_step_changes_nothing(tmp_path, accumulate):
    """A skipped non-finite step changes nothing: without accumulation the run equals one without
    that batch (Adam's moments did not move); with accumulation, one where the batch has no label
    (the other micro-batch of the window still counts, the inf does not leak into it)."""
    adam = {"name": "adam", "lr": 0.01}
    with pytest.warns(UserWarning, match="skipped"):
        bad = ddp_sparse_run.main(str(tmp_path / "a.pt"), "static", 1, nan_loss="skip", inf_label=(1, "task_0"),
                                  accumulate=accumulate, optimizer=adam)
    if accumulate == 1:
        empty = ddp_sparse_run.main(str(tmp_path / "b.pt"), "static", 1, drop=1, optimizer=adam)
    else:
        plan = list(ddp_sparse_run.PLAN)
        plan[1] = {"task_0": (0, 0), "task_1_bin": (0, 0)}
        empty = ddp_sparse_run.main(str(tmp_path / "b.pt"), "static", 1, plan=plan, accumulate=2, optimizer=adam)
    for k, w in empty["weights"].items():
        torch.testing.assert_close(bad["weights"][k], w, rtol=0, atol=0, msg=k)
    assert max(float((w - empty["init"][k]).abs().max()) for k, w in empty["weights"].items()) > 1e-3


@pytest.mark.parametrize("deferred", [False, True])
def test_diverging_sgd_stops_with_the_task_named(tmp_path, monkeypatch, deferred):
    """``deferred``: the check made at logging steps (one GPU, no missing label), forced on CPU."""
    from mtlframe.module import MultiTaskModule
    from mtlframe.testing import train_tiny

    if deferred:
        monkeypatch.setattr(MultiTaskModule, "_sync_every_step", lambda self, batch, stats: False)
    with pytest.raises(MTLFrameError, match=r"not finite at global step \d+ .*'task_0'"):
        train_tiny(tmp_path, optimizer={"name": "sgd", "lr": 50.0}, **{"trainer.log_every_n_steps": 3})


def test_representation_gram_over_processes_is_the_global_batch_gram(monkeypatch):
    """MGDA-UB's Gram matrix of representation gradients: the process mean divided by the number
    of processes equals the global batch's (checked with two identical halves, so each process's
    Gram is the same and the collective is the identity)."""
    from mtlframe.combiners import _grad

    torch.manual_seed(0)
    w = torch.randn(3, 2)
    x = torch.randn(4, 3)

    def losses(z, world):                      # each process's share: sum over its rows * world / 8
        out = z @ w
        return {"a": out[:, 0].square().sum() * world / 8, "b": (out[:, 1] - 1).abs().sum() * world / 8}

    z_global = torch.cat([x, x]).requires_grad_(True)
    one = _grad.task_gradients(losses(z_global, 1), ["a", "b"], [z_global], gram_only=True)
    monkeypatch.setattr(_grad, "world_size", lambda: 2)
    monkeypatch.setattr(_grad, "all_reduce_mean", lambda t: t)
    z_half = x.clone().requires_grad_(True)
    two = _grad.task_gradients(losses(z_half, 2), ["a", "b"], [z_half], gram_only=True)
    torch.testing.assert_close(two.grads, one.grads)
    torch.testing.assert_close(two.losses, one.losses.to(two.losses.dtype))
