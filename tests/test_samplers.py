"""Samplers on real MovieLens data: counts, labels, masks and item-side consistency."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from mtlframe.errors import DataError
from mtlframe.features import label_key, mask_key
from mtlframe.samplers.uniform_negatives import UniformNegatives
from mtlframe.recipe import load_recipe
from mtlframe.run import build_system, train


def _recipe(ml100k, *extra):
    return load_recipe("recipes/movielens_mmoe.yaml", [
        f"data.dataset.path={ml100k}",
        "data.sampler={name: uniform-negatives, task: like, item_features: [item_id, genres, release_year], user_feature: user_id, ratio: 2}",
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


# -- uniform-negatives on a tiny dense interaction matrix -----------------------------------------


def _dense(tmp_path, *, full_user=False, exclude_eval=False, epochs=1, name="uniform-negatives"):
    """30 users x 20 items, each pair present with probability 0.6 (user 0: every item if
    ``full_user``); ``like`` is 1 on about half the rows."""
    rng = np.random.default_rng(0)
    pairs = [(u, i) for u in range(30) for i in range(20) if rng.random() < 0.6]
    if full_user:                                # user 0 with every item, 6 rows each (survives the split)
        pairs += [(0, i) for i in range(20)] * 6
    frame = pd.DataFrame(pairs, columns=["user", "item"])
    frame["like"] = (rng.random(len(frame)) < 0.5).astype(int)
    frame.to_csv(tmp_path / "d.csv", index=False)
    text = f"""
data:
  dataset: {{name: csv, path: {tmp_path / 'd.csv'}, features: {{user: categorical, item: categorical}}, labels: [like]}}
  batch_size: 64
  sampler: {{name: {name}, task: like, item_features: [item], user_feature: user, ratio: 3,
            exclude_eval_positives: {str(exclude_eval).lower()}}}
tasks:
  like: {{type: binary, label: like}}
model:
  encoders: [{{name: embedding, features: [user, item], dim: 4}}]
  backbone: {{name: shared-bottom, hidden: [8]}}
trainer: {{max_epochs: {epochs}}}
logger: {{name: none}}
"""
    (tmp_path / "r.yaml").write_text(text)
    return load_recipe(tmp_path / "r.yaml")


def _pairs(cols, rows=None, positives_of=None):
    u, i = torch.as_tensor(np.asarray(cols["user"])), torch.as_tensor(np.asarray(cols["item"]))
    keep = torch.ones(len(u), dtype=torch.bool)
    if positives_of is not None:
        keep = cols[mask_key(positives_of)] & (cols[label_key(positives_of)] == 1)
    if rows is not None:
        keep = keep[rows]
        u, i = u[rows], i[rows]
    return set(zip(u[keep].tolist(), i[keep].tolist()))


@pytest.mark.parametrize("name", ["uniform-negatives", "popularity-negatives"])
def test_negatives_never_sample_a_training_interaction(tmp_path, name):
    dm, _, _ = build_system(_dense(tmp_path, name=name))
    sampler, train_cols = dm.sampler, dm.splits["train"]
    seen = _pairs(train_cols)
    n_items = len(set(np.asarray(train_cols["item"]).tolist()))
    drawn = set()
    for epoch in range(40):
        sample = sampler.sample(train_cols, torch.Generator().manual_seed(epoch))
        neg = _pairs(sample.extra)
        assert not neg & seen, f"epoch {epoch}: negatives that are training interactions: {sorted(neg & seen)[:5]}"
        drawn |= neg
    # every allowed pair of a user with positives is reachable (the draw is uniform over them)
    users_with_pos = {u for u, _ in _pairs(train_cols, positives_of="like")}
    allowed = {(u, i) for u in users_with_pos for i in set(np.asarray(train_cols["item"]).tolist())} - seen
    assert drawn == allowed and n_items == 20
    # the data module featurizes the sampled rows and appends them: label 0, present, for `like`
    n, positives = len(train_cols["user"]), int((train_cols[label_key("like")] == 1).sum())
    epoch0 = dm._train_columns(0)
    assert epoch0[label_key("like")].shape[0] == n + 3 * positives
    assert torch.all(epoch0[label_key("like")][n:] == 0) and torch.all(epoch0[mask_key("like")][n:])


def test_uniform_negatives_can_exclude_evaluation_positives(tmp_path):
    dm, _, _ = build_system(_dense(tmp_path, exclude_eval=True))
    eval_pos = _pairs(dm.splits["val"], positives_of="like") | _pairs(dm.splits["test"], positives_of="like")
    train_cols = dm.splits["train"]
    assert eval_pos - _pairs(train_cols)                    # there is something to exclude
    for epoch in range(20):
        neg = _pairs(dm.sampler.sample(train_cols, torch.Generator().manual_seed(epoch)).extra)
        assert not neg & eval_pos
        assert not neg & _pairs(train_cols)
    # without the option, evaluation positives are drawn (they are not training interactions)
    dm2, _, _ = build_system(_dense(tmp_path / ".." / tmp_path.name, exclude_eval=False))
    drawn = set()
    for epoch in range(20):
        drawn |= _pairs(dm2.sampler.sample(dm2.splits["train"], torch.Generator().manual_seed(epoch)).extra)
    assert drawn & eval_pos


def test_uniform_negatives_user_with_every_item_is_an_error(tmp_path):
    dm, _, _ = build_system(_dense(tmp_path, full_user=True))
    cols = dm.splits["train"]
    users = np.asarray(cols["user"])
    interacted = {int(u): len(set(np.asarray(cols["item"])[users == u].tolist())) for u in set(users.tolist())}
    full = [u for u, n in interacted.items() if n == 20]
    has_pos = {u for u, _ in _pairs(cols, positives_of="like")}
    assert full and set(full) <= has_pos
    with pytest.raises(DataError, match=rf"user\(s\) of 'user' \(encoded ids {full[0]}.*all 20 training items"):
        dm.sampler.sample(cols, torch.Generator().manual_seed(0))


def test_uniform_negatives_are_built_once_per_epoch_and_not_after_the_last(tmp_path, monkeypatch):
    calls = []
    original = UniformNegatives.sample

    def counting(self, columns, generator):
        calls.append(generator.initial_seed())
        return original(self, columns, generator)

    monkeypatch.setattr(UniformNegatives, "sample", counting)
    train(_dense(tmp_path, epochs=3), tmp_path / "run", progress=False)
    assert len(calls) == 3 and len(set(calls)) == 3         # epochs 0, 1, 2; no epoch 3
