"""Per-user splits: ``user-random`` (RecBole's default 8:1:1 protocol) and ``leave-last-out``."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mtlframe.datamodule import split_indices, user_split_sizes
from mtlframe.datasets.base import Table
from mtlframe.errors import DataError, RecipeError
from mtlframe.recipe import load_recipe


def _recbole_sizes(tot: int, ratios: list[float]) -> list[int]:
    """RecBole's ``Dataset._calcu_split_ids`` rule, written out one user at a time (the reference)."""
    ratios = [r / sum(ratios) for r in ratios]
    cnt = [int(r * tot) for r in ratios]
    cnt[0] = tot - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * tot < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt


def _table(rows_per_user, with_time=True, seed=0):
    rng = np.random.default_rng(seed)
    user = np.repeat([f"u{i}" for i in range(len(rows_per_user))], rows_per_user)
    rng.shuffle(user)
    n = len(user)
    frame = pd.DataFrame({"user": user, "ts": rng.permutation(n), "item": rng.integers(0, 30, n)})
    return Table(frame, {"item": "categorical"}, [], timestamp="ts" if with_time else None, user="user", item="item")


def _sizes(t, s):
    users = t.frame["user"].to_numpy()
    out = {}
    for k in ("train", "val", "test"):
        u, c = np.unique(users[s[k]], return_counts=True)
        for a, b in zip(u, c):
            out.setdefault(a, [0, 0, 0])[("train", "val", "test").index(k)] = int(b)
    return out


def test_user_split_sizes_are_recboles_rounding():
    # 8:1:1 by hand: n=2: floor(.2)=0 each, train 2 > 1 and 0 < .2 < 1 -> test +1 -> (1, 0, 1); train is 1:
    # stop. n=9: floor(.9)=0 each -> test +1, val +1 -> (7, 1, 1). n=20: floor(2.0)=2 -> (16, 2, 2).
    rows = np.array([1, 2, 3, 5, 9, 10, 15, 20, 37])
    tr, va, te = user_split_sizes(rows, 0.1, 0.1)
    assert list(zip(tr.tolist(), va.tolist(), te.tolist())) == [
        (1, 0, 0), (1, 0, 1), (1, 1, 1), (3, 1, 1), (7, 1, 1), (8, 1, 1), (13, 1, 1), (16, 2, 2), (31, 3, 3)]
    for val, test in [(0.1, 0.1), (0.2, 0.1), (0.05, 0.15), (0.0, 0.2), (0.3, 0.3)]:
        rows = np.arange(1, 301)
        got = np.stack(user_split_sizes(rows, val, test), 1).tolist()
        assert got == [_recbole_sizes(int(n), [1 - val - test, val, test]) for n in rows], (val, test)


def test_user_random_split_per_user_is_seeded_partition():
    counts = [1, 2, 3, 9, 10, 20, 37, 50]
    t = _table(counts)
    a = split_indices(t, "user-random", 0.1, 0.1, seed=3)
    b = split_indices(t, "user-random", 0.1, 0.1, seed=3)
    c = split_indices(t, "user-random", 0.1, 0.1, seed=4)
    n = len(t.frame)
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(n))  # a partition
    assert all(np.array_equal(a[k], b[k]) for k in a)  # deterministic per seed
    assert not np.array_equal(a["test"], c["test"])  # and the seed matters
    sizes = _sizes(t, a)
    for i, cnt in enumerate(counts):
        assert sizes[f"u{i}"] == _recbole_sizes(cnt, [0.8, 0.1, 0.1])
    # the rows of one user that land in test are a shuffle, not the first or the last ones
    users = t.frame["user"].to_numpy()
    mine = np.flatnonzero(users == "u7")
    picked = {tuple(np.intersect1d(split_indices(t, "user-random", 0.1, 0.1, seed=s)["test"], mine)) for s in range(6)}
    assert len(picked) == 6


def test_leave_last_out_takes_each_users_latest_rows():
    frame = pd.DataFrame({
        "user": ["a", "a", "a", "a", "b", "b", "c", "d", "d", "d"],
        "ts":   [5,   1,   9,   3,   2,   7,   4,   6,   6,   1],
        "item": [0,   1,   2,   3,   4,   5,   6,   7,   8,   9],
    })
    t = Table(frame, {"item": "categorical"}, [], timestamp="ts", user="user", item="item")
    s = split_indices(t, "leave-last-out", 0.1, 0.1, seed=0)
    # a: times 1,3,5,9 -> test row 2 (t=9), val row 0 (t=5); b: 2 rows -> train + test (RecBole's rule);
    # c: 1 row -> train; d: rows 7 and 8 tie at t=6: the later file row (8) is the later event -> test.
    assert s["test"].tolist() == [2, 5, 8]
    assert s["val"].tolist() == [0, 7]
    assert s["train"].tolist() == [1, 3, 4, 6, 9]
    assert all(np.array_equal(s[k], split_indices(t, "leave-last-out", 0.1, 0.1, seed=9)[k]) for k in s)


def test_per_user_splits_name_missing_columns():
    with pytest.raises(DataError, match="'user-random' splits each user's rows and needs a user column"):
        split_indices(Table(pd.DataFrame({"x": [1, 2]}), {"x": "numeric"}, []), "user-random", 0.1, 0.1, 0)
    with pytest.raises(DataError, match="'leave-last-out' needs a timestamp column"):
        split_indices(_table([3, 4], with_time=False), "leave-last-out", 0.1, 0.1, 0)
    t = _table([3, 4])
    t.frame.loc[2, "user"] = None
    with pytest.raises(DataError, match=r"user column 'user' has 1 missing value\(s\) \(rows 3\)"):
        split_indices(t, "user-random", 0.1, 0.1, 0)


def test_leave_last_out_rejects_fractions(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("data:\n  dataset: {name: synthetic}\n  split: {name: leave-last-out, val: 0.2}\n"
                 "tasks: {y: {type: binary, label: y}}\nmodel:\n  encoders: []\n  backbone: {name: shared-bottom}\n")
    with pytest.raises(RecipeError, match="data.split.*val / test fractions do not apply"):
        load_recipe(p)
