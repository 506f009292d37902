"""Data-side negative samplers (``uniform-negatives``, ``popularity-negatives``) on tiny
hand-made preprocessed columns: exclusion, frequencies, labels/masks, re-preparation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlframe.features import FeatureInfo, TaskSpec, label_key, mask_key
from mtlframe.samplers.uniform_negatives import UniformNegatives

INFO = {"user": FeatureInfo("user", "categorical", 50), "item": FeatureInfo("item", "categorical", 30),
        "genre": FeatureInfo("genre", "categorical", 5), "age": FeatureInfo("age", "numeric")}
TASKS = [TaskSpec("like", "binary", "like", metrics=("auc",)),
         TaskSpec("rating", "regression", "rating", metrics=("rmse",)),
         TaskSpec("kind", "multiclass", "kind", metrics=("accuracy",), num_classes=3, classes=("a", "b", "c"))]


def _columns(users, items, like=None):
    """Preprocessed columns of rows ``(users[k], items[k])``: every task labelled on every row
    (``like`` = 1 unless given), ``genre`` = item % 5 (an item-side feature), ``age`` = user / 10."""
    u, i = torch.tensor(users, dtype=torch.long), torch.tensor(items, dtype=torch.long)
    n = len(u)
    y = torch.ones(n) if like is None else torch.tensor(like, dtype=torch.float32)
    return {"user": u, "item": i, "genre": i % 5, "age": u.float() / 10,
            label_key("like"): y, mask_key("like"): torch.ones(n, dtype=torch.bool),
            label_key("rating"): torch.full((n,), 4.0), mask_key("rating"): torch.ones(n, dtype=torch.bool),
            label_key("kind"): torch.zeros(n, dtype=torch.long), mask_key("kind"): torch.ones(n, dtype=torch.bool)}


def _uniform(**kw):
    return UniformNegatives(task="like", item_features=["item", "genre"], user_feature="user",
                            feature_info=INFO, tasks=TASKS, **kw)


def _drawn(sampler, cols, seeds=range(5)):
    """``{(user, item)}`` of the negatives over several epochs."""
    out = set()
    for s in seeds:
        extra = sampler.sample(cols, torch.Generator().manual_seed(s)).extra
        out |= set(zip(extra["user"].tolist(), extra["item"].tolist()))
    return out


def test_a_second_prepare_forgets_the_evaluation_positives_of_the_first():
    # training items 1, 2, 3; user 7 has item 1, so its negatives are items 2 and 3
    train = _columns([5, 5, 6, 7], [1, 2, 3, 1])
    sampler = _uniform(exclude_eval_positives=True, ratio=4)
    sampler.prepare({"train": train, "val": _columns([7], [2])})      # item 2: user 7's val positive
    assert {i for u, i in _drawn(sampler, train) if u == 7} == {3}
    sampler.prepare({"train": train})                                   # a new run: no evaluation split
    assert {i for u, i in _drawn(sampler, train) if u == 7} == {2, 3}
