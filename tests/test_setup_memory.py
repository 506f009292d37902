"""Setup memory: encoder inputs freed as they are featurized, feature-major stacked columns."""
from __future__ import annotations

import numpy as np
import torch

from mtlframe.batching import ColumnBatches, feature_major, take
from mtlframe.datamodule import materialize
from mtlframe.datasets.synthetic import Synthetic
from mtlframe.encoders.base import release_column
from mtlframe.testing import tiny_datamodule


def _encoders(dm):
    from mtlframe.build import Builder
    return Builder(dm.recipe).encoders(dm.feature_info())


def test_consuming_materialize_equals_the_copying_one_and_frees_the_inputs():
    dm = tiny_datamodule()
    encoders, tasks = _encoders(dm), dm.task_specs()
    cols = dict(dm.splits["train"])
    expected = materialize(encoders, tasks, dict(cols))                     # contiguous copies
    got = materialize(encoders, tasks, cols, consume=True)
    assert sorted(got) == sorted(expected)
    for k in got:
        assert torch.equal(got[k], expected[k])
        assert expected[k].is_contiguous()
    num = "num:" + ",".join(f"x_{i:03d}" for i in range(8))
    assert feature_major(got[num]) and got[num].shape == expected[num].shape  # [N, 8] view of [8, N]
    assert sorted(cols) == sorted(k for k in dm.splits["train"] if k.startswith(("label/", "mask/")))


def test_a_column_read_by_a_later_encoder_is_not_released():
    class Reader(torch.nn.Module):
        features = ("a",)
        input_keys = ()

        def featurize(self, columns):
            return {"r": torch.as_tensor(columns["a"]) * 2}

    class Stacker(Reader):
        def featurize(self, columns):
            out = torch.as_tensor(columns["a"]) + 1
            release_column(columns, "a")
            return {"s": out}

    cols = {"a": torch.arange(4), "label/t": torch.ones(4)}
    got = materialize([Stacker(), Reader()], [], cols, consume=True)
    assert got["s"].tolist() == [1, 2, 3, 4] and got["r"].tolist() == [0, 2, 4, 6]
    assert list(cols) == ["label/t"]                                         # freed after its last reader
    plain = {"a": torch.arange(4)}
    release_column(plain, "a")                                               # a plain dict: no-op
    assert list(plain) == ["a"]


def test_feature_major_columns_batch_like_row_major_ones(monkeypatch):
    from mtlframe import batching
    monkeypatch.setattr(batching, "GATHER_ROWS", 8)
    rows = torch.arange(90, dtype=torch.int32).reshape(30, 3)
    cols = {"ids": rows.t().contiguous().t(), "y": torch.arange(30).float()}
    assert feature_major(cols["ids"]) and not feature_major(rows)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(3))
    assert torch.equal(take(cols, perm)["ids"], rows[perm]) and take(cols, perm)["ids"].is_contiguous()
    for shuffle in (True, False):
        got = list(ColumnBatches(cols, 4, shuffle=shuffle, seed=3))
        order = perm if shuffle else torch.arange(30)
        assert torch.equal(torch.cat([b["ids"] for b in got]), rows[order])
        assert all(b["ids"].is_contiguous() for b in got)


def test_attached_datamodule_keeps_labels_and_priors_match_the_masked_mean():
    dm = tiny_datamodule()
    dm.attach_encoders(_encoders(dm), dm.task_specs())
    priors = dm.label_priors()
    for t in dm.task_specs():
        y = dm.splits["train"][f"label/{t.name}"]
        m = float(y[torch.isfinite(y)].double().mean())
        if t.type == "binary":
            m = float(np.log(m / (1 - m)))
        assert abs(priors[t.name] - m) < 1e-9


def test_synthetic_numeric_columns_are_separate_arrays():
    frame = Synthetic(num_rows=100, num_tasks=2, num_features=4, seed=1).load().frame
    xs = [frame[f"x_{i:03d}"].to_numpy() for i in range(4)]
    assert not any(np.shares_memory(xs[i], xs[j]) for i in range(4) for j in range(i + 1, 4))
    assert abs(float(xs[0][:3].sum()) - float(np.random.default_rng(
        np.random.SeedSequence([1, 1]).spawn(4)[0]).standard_normal(3, dtype=np.float32).sum())) < 1e-6


def test_setup_drops_columns_no_encoder_or_task_reads(monkeypatch):
    """The tiny recipe reads x_000..x_007, cat_0, task_0 and task_1_bin; the generator also makes
    task_1 and task_0_bin, which are dropped before preprocessing (used columns are released as
    they are transformed, so the frame ends empty)."""
    from mtlframe import preprocess

    seen = {}
    real = preprocess.Preprocessor.transform_splits

    def spy(self, frame, *a, **k):
        seen["columns"] = sorted(frame.columns)
        return real(self, frame, *a, **k)

    monkeypatch.setattr(preprocess.Preprocessor, "transform_splits", spy)
    dm = tiny_datamodule()
    assert seen["columns"] == ["cat_0", "task_0", "task_1_bin", *(f"x_{i:03d}" for i in range(8))]
    assert list(dm.table.frame.columns) == []
    generated = Synthetic(num_rows=10, num_features=8, num_tasks=2, num_categorical=1).load().frame.columns
    assert {"task_1", "task_0_bin"} <= set(generated)


def test_mmap_threshold_is_pinned_on_glibc_unless_the_environment_sets_it(monkeypatch):
    import sys

    from mtlframe.process_memory import pin_mmap_threshold

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert pin_mmap_threshold() is False                       # the user's setting wins
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    expected = sys.platform.startswith("linux") and sys.implementation.name == "cpython"
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        expected = False
    assert pin_mmap_threshold() is expected
