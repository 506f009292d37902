"""Label leakage: a feature that is a label column, or an exact copy of one, is refused before
training; a perfect held-out AUC is warned about."""
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from mtlframe.errors import RecipeError
from mtlframe.recipe import recipe_from_dict

N = 60


def _csv(tmp_path, **extra):
    rng = np.random.default_rng(0)
    click = (rng.random(N) < 0.4).astype(float)
    click[3] = np.nan                                      # a missing label: its copy is missing there too
    frame = pd.DataFrame({"f": rng.normal(size=N), "city": rng.choice(["a", "b", "c"], N), "click": click,
                          "clicked_again": click.copy(), "rating": rng.integers(1, 6, N).astype(float)})
    for k, v in extra.items():
        frame[k] = v(frame)
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return path, frame


def _recipe(path, features, numeric=(), categorical=()):
    cols = {c: "numeric" for c in numeric} | {c: "categorical" for c in categorical}
    return {
        "data": {"dataset": {"name": "csv", "path": str(path), "features": cols, "labels": ["click", "rating"]},
                 "split": {"name": "random", "val": 0.2, "test": 0.0}, "batch_size": 32},
        "tasks": {"ctr": {"type": "binary", "label": "click"}, "rating": {"type": "regression", "label": "rating"}},
        "model": {"encoders": [{"name": "numeric", "features": list(features)}],
                  "backbone": {"name": "shared-bottom", "hidden": [4]}},
        "trainer": {"max_epochs": 1, "accelerator": "cpu"}, "logger": {"name": "none"},
    }


def _setup(recipe):
    from mtlframe.build import Builder
    from mtlframe.datamodule import RecDataModule

    rec = recipe_from_dict(recipe, "r.yaml")
    dm = RecDataModule(rec, Builder(rec).dataset())
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_a_label_column_as_feature_is_refused(tmp_path):
    path, _ = _csv(tmp_path)
    with pytest.raises(RecipeError) as exc:
        _setup(_recipe(path, ["f", "rating"], numeric=["f", "rating"]))
    problems = dict(exc.value.problems)
    assert list(problems) == ["model.encoders[0].features[1]"]
    assert problems["model.encoders[0].features[1]"].startswith(
        "feature 'rating' is the label column of task 'rating' (label leakage")
    assert "Remove 'rating' from the encoder's features" in problems["model.encoders[0].features[1]"]


def test_an_exact_copy_of_a_label_under_another_name_is_refused(tmp_path):
    path, _ = _csv(tmp_path, rating_x10=lambda fr: fr["rating"] * 10)  # not a copy: a scaled column
    with pytest.raises(RecipeError) as exc:
        _setup(_recipe(path, ["f", "clicked_again", "rating_x10"], numeric=["f", "clicked_again", "rating_x10"]))
    problems = dict(exc.value.problems)
    assert list(problems) == ["model.encoders[0].features[1]"]
    assert "feature 'clicked_again' holds exactly the values of the label column 'click' of task 'ctr'" in \
        problems["model.encoders[0].features[1]"]


def test_near_copies_and_other_types_are_not_leaks():
    from mtlframe.datamodule import _same_values

    click = pd.Series([1.0, 0.0, np.nan, 1.0, 0.0])
    assert _same_values(pd.Series([1, 0, None, 1, 0], dtype="Int64"), click)     # 1 == 1.0, missing == NaN
    assert not _same_values(pd.Series([1.0, 0.0, 0.0, 1.0, 0.0]), click)         # a filled missing value
    assert not _same_values(pd.Series([1.0, 0.0, np.nan, 1.0, 1.0]), click)      # one row differs
    assert not _same_values(pd.Series(["1", "0", None, "1", "0"]), click)        # strings are not numbers
    assert _same_values(pd.Series(["a", "b", None]), pd.Series(["a", "b", None], dtype="category"))
    assert not _same_values(pd.Series([0.0, 0.0, 0.0]), pd.Series([0.0, 0.0, 0.0]))  # a constant label
    long = pd.Series(np.arange(10_000) % 2, dtype=float)
    other = long.copy()
    other.iloc[-1] = 5.0
    assert not _same_values(other, long) and _same_values(long.copy(), long)


def test_perfect_validation_auc_warns_of_leakage(tmp_path):
    from mtlframe.run import build_system

    path, _ = _csv(tmp_path)
    _, module, _ = build_system(recipe_from_dict(_recipe(path, ["f"], numeric=["f"]), "r.yaml"))
    auc = module.metrics["val__ctr"]["auc"]
    auc.update(torch.tensor([0.9, 0.8, 0.2, 0.1]), torch.tensor([1, 1, 0, 0]))
    # the labelled-row counts the evaluation steps keep (rows, positives, non-finite predictions)
    module._eval_stats["val"] = torch.tensor([[4, 2, 0] if t.name == "ctr" else [0, 0, 0] for t in module.tasks])
    with pytest.warns(UserWarning, match=r"task 'ctr' has a validation auc of exactly 1\.0 \(val/ctr/auc\).*label "
                                         r"leakage"):
        module._epoch_end("val")
    assert module.last_scores["val"]["ctr"]["auc"] == 1.0
    auc.update(torch.tensor([0.9, 0.2, 0.8, 0.1]), torch.tensor([1, 1, 0, 0]))  # 0.75: no warning
    module._eval_stats["val"] = torch.tensor([[4, 2, 0] if t.name == "ctr" else [0, 0, 0] for t in module.tasks])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        module._epoch_end("val")
    assert module.last_scores["val"]["ctr"]["auc"] == 0.75
    assert not [w for w in record if "exactly 1.0" in str(w.message)]
