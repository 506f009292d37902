"""End to end (train, evaluate, predict) for a multiclass task and for bf16 mixed precision,
on small synthetic tables that train in seconds on a CPU."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtlframe import testing
from mtlframe.cli import main
from mtlframe.recipe import recipe_from_dict
from mtlframe.run import evaluate, load_checkpoint, predict_frame, train


def _three_class_table(path: Path, n: int = 1200) -> pd.DataFrame:
    """``kind`` in {0, 1, 2} decided by ``x1`` (thresholds -0.5 and 0.5), ``click`` by ``x2``."""
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    frame = pd.DataFrame({"x1": x1, "x2": x2, "c": rng.integers(0, 5, n).astype(str),
                          "kind": np.where(x1 > 0.5, 2, np.where(x1 < -0.5, 0, 1)),
                          "click": (x2 + 0.3 * rng.normal(size=n) > 0).astype(int)})
    frame.to_csv(path, index=False)
    return frame


def _recipe(csv: Path, precision: str = "32-true"):
    return recipe_from_dict({
        "seed": 7,
        "data": {"dataset": {"name": "csv", "path": str(csv), "labels": ["kind", "click"],
                             "features": {"x1": "numeric", "x2": "numeric", "c": "categorical"}},
                 "batch_size": 128},
        "tasks": {"kind": {"type": "multiclass", "label": "kind", "metrics": ["accuracy", "logloss"]},
                  "click": {"type": "binary", "label": "click", "metrics": ["auc", "accuracy"]}},
        "model": {"encoders": [{"name": "numeric", "features": ["x1", "x2"]},
                               {"name": "embedding", "features": ["c"], "dim": 4}],
                  "backbone": {"name": "mmoe", "num_experts": 2, "expert_hidden": [16]},
                  "tower": {"name": "mlp", "hidden": [8]}},
        "optimizer": {"name": "adam", "lr": 0.02},
        "trainer": {"max_epochs": 3, "accelerator": "cpu", "enable_progress_bar": False, "precision": precision},
        "logger": {"name": "none"}}, "<multiclass recipe>")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_multiclass_task_trains_evaluates_and_predicts(tmp_path, precision):
    torch.set_num_threads(1)
    frame = _three_class_table(tmp_path / "d.csv")
    result = train(_recipe(tmp_path / "d.csv", precision), tmp_path / "run", progress=False)
    test = result.metrics["test"]
    assert test["kind"]["accuracy"] > 0.85 and test["kind"]["logloss"] < 0.5 * math.log(3)  # learnt, not chance
    assert test["click"]["auc"] > 0.9
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert saved["kind"] == pytest.approx(test["kind"], abs=1e-6)
    # evaluate reads the checkpoint back and rebuilds the split: the same test metrics (bf16 in
    # training, float32 in evaluate: equal to bf16's rounding)
    again = evaluate(result.best_checkpoint)
    tol = 1e-6 if precision == "32-true" else 5e-3
    for task in ("kind", "click"):
        assert again[task] == pytest.approx(test[task], abs=tol), task
    # predict: the class and one probability per class (classes are kept as text: '0', '1', '2')
    loaded = load_checkpoint(result.best_checkpoint)
    assert [t.classes for t in loaded.tasks if t.name == "kind"] == [("0", "1", "2")]
    pred = predict_frame(loaded, frame)
    probs = pred[["kind_p_0", "kind_p_1", "kind_p_2"]].to_numpy()
    assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (pred["kind"].astype(int).to_numpy() == probs.argmax(1)).all()
    assert (pred["kind"].astype(int).to_numpy() == frame["kind"].to_numpy()).mean() > 0.85
    # and the command line writes the same columns
    out = tmp_path / "preds.csv"
    assert main(["predict", "--checkpoint", result.best_checkpoint, "--input", str(tmp_path / "d.csv"),
                 "--output", str(out)]) == 0
    written = pd.read_csv(out)
    assert list(written.columns) == ["kind", "kind_p_0", "kind_p_1", "kind_p_2", "click"]
    assert (written["kind"].to_numpy() == pred["kind"].astype(int).to_numpy()).all()


def test_bf16_mixed_precision_keeps_float32_weights_and_gradient_level_combiners_work(tmp_path):
    torch.set_num_threads(1)
    result = testing.train_tiny(tmp_path / "run", **{"trainer.precision": "bf16-mixed", "combiner": {"name": "pcgrad"},
                                                     "data.dataset.num_rows": 1000})
    loaded = load_checkpoint(result.best_checkpoint)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}   # mixed: float32 master weights
    test = result.metrics["test"]
    assert all(math.isfinite(v) for per in test.values() for v in per.values()), test
    again = evaluate(result.best_checkpoint)
    assert again["task_1_bin"]["auc"] == pytest.approx(test["task_1_bin"]["auc"], abs=5e-3)
    assert again["task_0"]["rmse"] == pytest.approx(test["task_0"]["rmse"], rel=5e-3)
