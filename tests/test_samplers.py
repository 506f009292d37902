"""Samplers on real MovieLens data: counts, labels, masks and item-side consistency."""
from __future__ import annotations

import math

import torch

from mtlframe.features import label_key, mask_key
from mtlframe.recipe import load_recipe
from mtlframe.run import build_system, train


def _recipe(ml100k, *extra):
    return load_recipe("recipes/movielens_mmoe.yaml", [
        f"data.dataset.path={ml100k}",
        "data.sampler={name: uniform-negatives, task: like, item_features: [item_id, genres, release_year], ratio: 2}",
        *extra])


def test_uniform_negatives(ml100k, repo, monkeypatch):
    monkeypatch.chdir(repo)
    dm, module, _ = build_system(_recipe(ml100k))
    base = dm.columns["train"]
    n = base[label_key("like")].shape[0]
    positives = int((base[label_key("like")] == 1).sum())
    epoch0 = dm._train_columns(0)
    assert epoch0[label_key("like")].shape[0] == n + 2 * positives
    new = slice(n, None)
    assert torch.all(epoch0[label_key("like")][new] == 0)
    assert torch.all(epoch0[mask_key("like")][new])
    assert not torch.any(epoch0[mask_key("rating")][new])          # rating unknown for negatives
    assert torch.all(torch.isnan(epoch0[label_key("rating")][new]))
    # item-side features travel together: every negative's genres are its item's genres
    key = next(k for k in epoch0 if k.startswith("cat:"))
    item_pos = dm.encoders[0].single.index("item_id")
    genres_of = {}
    for item, g in zip(base[key][:, item_pos].tolist(), base["genres"].tolist()):
        genres_of.setdefault(item, g)
    sample = zip(epoch0[key][new][:500, item_pos].tolist(), epoch0["genres"][new][:500].tolist())
    assert all(genres_of[item] == g for item, g in sample)
    # user side copied from the positive row; a new draw every epoch
    user_pos = dm.encoders[0].single.index("user_id")
    assert not torch.equal(epoch0[key][new][:, item_pos], dm._train_columns(1)[key][new][:, item_pos])
    assert epoch0[key][new][:, user_pos].unique().numel() > 100


def test_negatives_train(ml100k, repo, monkeypatch, tmp_path):
    monkeypatch.chdir(repo)
    result = train(_recipe(ml100k, "trainer.max_epochs=1", "logger.name=none"),
                   tmp_path, progress=False)
    assert math.isfinite(result.metrics["test"]["like"]["auc"])
    assert result.metrics["test"]["like"]["auc"] > 0.65
