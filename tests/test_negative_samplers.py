"""Data-side negative samplers (``uniform-negatives``, ``popularity-negatives``) on tiny
hand-made preprocessed columns: exclusion, frequencies, labels/masks, re-preparation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlframe.errors import ArgumentError, DataError
from mtlframe.features import FeatureInfo, TaskSpec, label_key, mask_key
from mtlframe.samplers.exclusion import integer_weights
from mtlframe.samplers.popularity_negatives import PopularityNegatives
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


def _popularity(**kw):
    return PopularityNegatives(task="like", item_features=["item", "genre"], user_feature="user",
                               feature_info=INFO, tasks=TASKS, **kw)


SAMPLERS = {"uniform": _uniform, "popularity": _popularity}


def _tight_columns(seed):
    """Items 1..20 with very unequal counts; user 1 has every item but 20, user 2 every item but
    19 and 20, user 3 a single item (all liked); user 9 item 20; users 10.. random rows (about
    half liked)."""
    g = np.random.default_rng(seed)
    users = [1] * 19 + [2] * 18 + [3]
    items = list(range(1, 20)) + list(range(1, 19)) + [7]
    for u in range(10, 40):
        k = int(g.integers(1, 15))
        users += [u] * k
        items += list(g.choice(np.arange(1, 21), size=k, replace=False, p=np.arange(20, 0, -1) / 210))
    like = [1.0] * 38 + (g.random(len(users) - 38) < 0.5).astype(float).tolist()
    return _columns(users + [9], items + [20], like + [0.0])


@pytest.mark.parametrize("kind", SAMPLERS)
@pytest.mark.parametrize("exclude_eval", [False, True])
def test_negatives_are_never_a_training_interaction(kind, exclude_eval):
    for seed in range(3):
        train = _tight_columns(seed)
        seen = set(zip(train["user"].tolist(), train["item"].tolist()))
        val = _columns([2, 3, 10], [19, 12, 20])                     # leaves user 2 only item 20
        sampler = SAMPLERS[kind](ratio=5, exclude_eval_positives=exclude_eval)
        sampler.prepare({"train": train, "val": val})
        drawn = _drawn(sampler, train, seeds=range(seed * 10, seed * 10 + 10))
        assert not drawn & seen
        assert {i for u, i in drawn if u == 1} == {20}                # the one item left to user 1
        assert {i for u, i in drawn if u == 2} == ({20} if exclude_eval else {19, 20})
        if exclude_eval:
            assert not drawn & {(2, 19), (3, 12), (10, 20)}
        user3 = {i for u, i in drawn if u == 3}                     # 50 draws from 18 or 19 items
        assert user3 <= set(range(1, 21)) - {7} - ({12} if exclude_eval else set()) and len(user3) > 10


@pytest.mark.parametrize("kind", SAMPLERS)
def test_sampled_rows_are_labelled_for_the_task_only_and_keep_item_and_user_sides(kind):
    train = _tight_columns(0)
    sampler = SAMPLERS[kind](ratio=2)
    sampler.prepare({"train": train})
    extra = sampler.sample(train, torch.Generator().manual_seed(0)).extra
    positives = int((train[label_key("like")] == 1).sum())
    assert len(extra["item"]) == 2 * positives
    assert torch.equal(extra[label_key("like")], torch.zeros(2 * positives))          # implicit: negative
    assert extra[mask_key("like")].all()
    assert torch.isnan(extra[label_key("rating")]).all() and not extra[mask_key("rating")].any()
    assert torch.equal(extra[label_key("kind")], torch.full((2 * positives,), -1)) and not extra[mask_key("kind")].any()
    assert torch.equal(extra["genre"], extra["item"] % 5)             # item side travels with the item
    assert torch.equal(extra["age"], extra["user"].float() / 10)       # user side copied from the positive


def test_popularity_frequencies_follow_count_power_alpha_over_the_allowed_items():
    # user 1 excludes items 1..5 (its training rows); items 6..15 have counts 1..10 from users 50..
    users, items = [1] * 5, [1, 2, 3, 4, 5]
    for item, count in zip(range(6, 16), range(1, 11)):
        users += list(range(50, 50 + count))
        items += [item] * count
    like = [1.0] * 5 + [0.0] * (len(users) - 5)                       # only user 1 gets negatives
    train = _columns(users, items, like)
    sampler = _popularity(ratio=4000, alpha=0.75)                     # 5 positives x 4000 = 20000 draws
    sampler.prepare({"train": train})
    extra = sampler.sample(train, torch.Generator().manual_seed(3)).extra
    assert set(extra["user"].tolist()) == {1}
    observed = torch.bincount(extra["item"], minlength=16)[6:].double()
    assert observed.sum() == 20000 and int(torch.bincount(extra["item"], minlength=16)[:6].sum()) == 0
    counts = torch.arange(1, 11, dtype=torch.float64)

    def chi2(p):
        expected = 20000 * p / p.sum()
        return float(((observed - expected) ** 2 / expected).sum())

    # chi-square, 9 degrees of freedom: P(X > 27.88) = 0.001 (scipy.stats.chi2.ppf(0.999, 9))
    assert chi2(counts ** 0.75) < 27.88
    assert chi2(counts ** 1.0) > 100 and chi2(torch.ones(10)) > 1000   # the test tells the exponents apart


def test_popularity_with_alpha_zero_draws_exactly_the_uniform_negatives():
    train = _tight_columns(1)
    a, b = _uniform(ratio=3), _popularity(ratio=3, alpha=0.0)
    for s in (a, b):
        s.prepare({"train": train})
    for seed in range(3):
        ea = a.sample(train, torch.Generator().manual_seed(seed)).extra
        eb = b.sample(train, torch.Generator().manual_seed(seed)).extra
        assert torch.equal(ea["item"], eb["item"]) and torch.equal(ea["user"], eb["user"])


def test_popularity_refuses_a_non_finite_alpha_and_names_itself_in_data_errors():
    with pytest.raises(ArgumentError, match=r"alpha must be a finite number .*got nan"):
        _popularity(alpha=float("nan"))
    with pytest.raises(ArgumentError, match=r"task 'rating' must be a binary or retrieval task .*: \['like'\]"):
        PopularityNegatives(task="rating", item_features=["item"], user_feature="user", feature_info=INFO, tasks=TASKS)
    train = _columns([1, 1, 2], [1, 2, 1])                            # user 1 has every item
    sampler = _popularity()
    sampler.prepare({"train": train})
    with pytest.raises(DataError, match=r"^popularity-negatives: 1 user\(s\) of 'user' \(encoded ids 1\).*all 2 training items"):
        sampler.sample(train, torch.Generator().manual_seed(0))


def test_integer_weights_fit_int64_and_keep_ratios():
    w = torch.tensor([1.0, 1e-5, 3.0, 2.5])
    q = integer_weights(w)
    assert q.dtype == torch.long and int(q.min()) >= 1 and int(q.sum()) < 2 ** 62
    assert torch.allclose(q.double() / q.double().sum(), w.double() / w.double().sum(), rtol=1e-7, atol=0)
