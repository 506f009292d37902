"""Splits, columnar batching (incl. DDP shards) and the user-file path, on real and tiny data."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtlframe.batching import ColumnBatches
from mtlframe.datamodule import split_indices
from mtlframe.datasets.base import Table
from mtlframe.errors import DataError
from mtlframe.recipe import load_recipe
from mtlframe.run import load_checkpoint, predict_frame, train

REPO = Path(__file__).resolve().parents[1]


def _table(n=1000, with_time=True):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"item": rng.integers(0, 50, n), "ts": rng.permutation(n), "y": rng.random(n)})
    return Table(frame, {"item": "categorical"}, ["y"], timestamp="ts" if with_time else None, item="item")


def test_random_split_is_seeded_partition():
    t = _table()
    a = split_indices(t, "random", 0.1, 0.2, seed=1)
    b = split_indices(t, "random", 0.1, 0.2, seed=1)
    c = split_indices(t, "random", 0.1, 0.2, seed=2)
    assert [len(a[k]) for k in ("train", "val", "test")] == [700, 100, 200]
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(1000))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])


def test_time_split_puts_latest_rows_in_test():
    t = _table()
    s = split_indices(t, "time", 0.1, 0.1, seed=0)
    ts = t.frame["ts"].to_numpy()
    assert ts[s["train"]].max() < ts[s["val"]].min() and ts[s["val"]].max() < ts[s["test"]].min()
    with pytest.raises(DataError, match="needs a timestamp"):
        split_indices(_table(with_time=False), "time", 0.1, 0.1, seed=0)


def test_cold_start_items_only_in_test():
    t = _table()
    s = split_indices(t, "cold-start", 0.1, 0.0, seed=0, cold_items=0.2)
    items = t.frame["item"].to_numpy()
    test_items, train_items = set(items[s["test"]]), set(items[s["train"]]) | set(items[s["val"]])
    assert len(test_items) == 10 and not test_items & train_items


def test_batches_are_slices_and_shards_cover_rows():
    cols = {"x": torch.arange(10), "y": torch.arange(10) * 2.0}
    batches = list(ColumnBatches(cols, 4))
    assert [b["x"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batches[0]["x"].data_ptr() == cols["x"].data_ptr()  # a view, not a copy
    shuffled = [b["x"] for b in ColumnBatches(cols, 4, shuffle=True, seed=3)]
    rows = torch.cat(shuffled)
    assert sorted(rows.tolist()) == list(range(10)) and rows.tolist() != list(range(10))
    assert torch.equal(torch.cat([b["y"] for b in ColumnBatches(cols, 4, shuffle=True, seed=3)]), rows * 2.0)
    # evaluation shards: no padding, every row exactly once
    shards = [torch.cat([b["x"] for b in ColumnBatches(cols, 3, rank=r, world_size=3)]) for r in range(3)]
    assert sorted(torch.cat(shards).tolist()) == list(range(10))
    # training shards: equal length, disjoint
    train = [torch.cat([b["x"] for b in ColumnBatches(cols, 2, shuffle=True, rank=r, world_size=3,
                                                        drop_uneven=True)]) for r in range(3)]
    assert {len(t) for t in train} == {3} and len(set(torch.cat(train).tolist())) == 9


def test_user_csv_trains_and_predicts(tmp_path):
    from mtlframe.datasets.adult import Adult

    frame = Adult().load().frame.sample(6000, random_state=0)
    frame.loc[frame.index[:300], "income"] = np.nan  # missing labels: masked for that task only
    path = tmp_path / "mine.csv"
    frame.to_csv(path, index=False)
    recipe_text = f"""
data:
  dataset:
    name: csv
    path: {path}
    features: {{age: numeric, hours_per_week: numeric, education: categorical, occupation: categorical}}
    labels: [income, never_married]
  batch_size: 256
tasks:
  income: {{type: binary, label: income}}
  never_married: {{type: binary, label: never_married}}
model:
  encoders:
    - {{name: embedding, features: [education, occupation], dim: 4}}
    - {{name: numeric, features: [age, hours_per_week]}}
  backbone: {{name: shared-bottom, hidden: [16]}}
trainer: {{max_epochs: 2}}
logger: {{name: none}}
"""
    rp = tmp_path / "mine.yaml"
    rp.write_text(recipe_text)
    result = train(load_recipe(rp), tmp_path / "run", progress=False)
    assert result.metrics["test"]["never_married"]["auc"] > 0.8
    assert math.isfinite(result.metrics["test"]["income"]["auc"])
    loaded = load_checkpoint(result.best_checkpoint)
    pred = predict_frame(loaded, frame.head(20).drop(columns=["income", "never_married"]))
    assert pred.shape == (20, 2) and pred.notna().all().all()
