"""The on-disk embedding cache: hits, misses, invalidation, sharing, crash repair."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from mtlframe_text import models
from mtlframe_text.cache import EmbeddingCache
from mtlframe_text.encoder import TextEncoder

TEXTS = np.array(["the dress is great", "love the fabric", "", "the dress is great", "small fit"], dtype=object)


def count_forwards(monkeypatch) -> list[int]:
    """Patch model loading so every transformer forward pass is counted (``calls[0]`` = texts)."""
    calls = [0]
    real = models.load_model

    def counting(resolved):
        model = real(resolved)
        model.register_forward_hook(lambda mod, args, kwargs, out: calls.__setitem__(
            0, calls[0] + kwargs["input_ids"].shape[0]), with_kwargs=True)
        return model

    monkeypatch.setattr(models, "load_model", counting)
    return calls


def forbid_model(monkeypatch) -> None:
    def boom(resolved):
        raise AssertionError("the transformer was loaded on what should be a cache hit")

    monkeypatch.setattr(models, "load_model", boom)


def frozen(path, **kw) -> TextEncoder:
    return TextEncoder(["body"], model=str(path), dim=4, progress=False, **kw)


def test_second_run_is_a_cache_hit_without_forward_pass(tiny_model_dir, monkeypatch):
    calls = count_forwards(monkeypatch)
    first = frozen(tiny_model_dir)
    out1 = first.featurize({"body": TEXTS})
    assert calls[0] == 4  # 4 unique texts (the empty one included), each encoded once
    assert first.last_stats["encoded"] == 4 and first.last_stats["cache_hits"] == 0
    # same text -> same row; rows index the unique-text table
    idx = out1[first.key]
    assert idx.shape == (5,) and idx[0] == idx[3] and first.table.shape == (1 + 4, 32)  # row 0: padding

    forbid_model(monkeypatch)  # a new encoder in a "new run": must not even load the model
    second = frozen(tiny_model_dir)
    out2 = second.featurize({"body": TEXTS})
    assert second.last_stats["cache_hits"] == 4 and second.last_stats["encoded"] == 0
    torch.testing.assert_close(second.table[out2[second.key]], first.table[out1[first.key]])


def test_partial_hit_encodes_only_new_texts(tiny_model_dir, monkeypatch):
    calls = count_forwards(monkeypatch)
    frozen(tiny_model_dir).featurize({"body": TEXTS[:2]})
    assert calls[0] == 2
    enc = frozen(tiny_model_dir)
    enc.featurize({"body": TEXTS})
    assert calls[0] == 2 + 2 and enc.last_stats["cache_hits"] == 2
    # a later split on the same encoder reuses its table, not even the cache
    enc.featurize({"body": np.array(["love the fabric", "small fit"], dtype=object)})
    assert calls[0] == 4 and enc.last_stats["texts"] == 0


def test_max_length_and_pooling_change_invalidate(tiny_model_dir, monkeypatch):
    calls = count_forwards(monkeypatch)
    frozen(tiny_model_dir, max_length=16).featurize({"body": TEXTS})
    assert calls[0] == 4
    frozen(tiny_model_dir, max_length=8).featurize({"body": TEXTS})
    assert calls[0] == 8
    frozen(tiny_model_dir, max_length=8, pooling="cls").featurize({"body": TEXTS})
    assert calls[0] == 12
    frozen(tiny_model_dir, max_length=16).featurize({"body": TEXTS})  # back to the first: hit
    assert calls[0] == 12


def test_model_file_change_invalidates(tiny_model_copy, monkeypatch):
    from safetensors.torch import load_file, save_file

    calls = count_forwards(monkeypatch)
    a = frozen(tiny_model_copy)
    a.featurize({"body": TEXTS})
    assert calls[0] == 4
    weights = tiny_model_copy / "model.safetensors"
    state = load_file(str(weights))
    name = next(k for k in state if "word_embeddings" in k)
    state[name] = state[name] + torch.randn_like(state[name])  # (a constant shift would vanish in LayerNorm)
    save_file(state, str(weights), metadata={"format": "pt"})
    os.utime(weights, ns=(1, 1))  # a different mtime for sure, even on a coarse clock
    b = frozen(tiny_model_copy)
    b.featurize({"body": TEXTS})
    assert calls[0] == 8 and b.last_stats["encoded"] == 4
    assert not torch.allclose(a.table, b.table)


def test_same_weights_elsewhere_share_the_cache(tiny_model_dir, tiny_model_copy, monkeypatch):
    frozen(tiny_model_dir).featurize({"body": TEXTS})
    forbid_model(monkeypatch)
    frozen(tiny_model_copy).featurize({"body": TEXTS})  # identical files, another path: hit


def test_cache_append_lookup_refresh_and_repair(tmp_path):
    key = {"model": "m", "pooling": "mean", "max_length": 8}
    a = EmbeddingCache(tmp_path, key, dim=3)
    with a.locked():
        assert a.lookup(["x"]).tolist() == [-1]
        a.append(["x", "y", "x"], np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.float32))
        assert len(a) == 2 and a.lookup(["y", "x", "z"]).tolist() == [1, 0, -1]
        assert a.vectors().dtype == np.float16 and a.vectors()[1].tolist() == [4, 5, 6]
    b = EmbeddingCache(tmp_path, key, dim=3)  # another process's view
    with b.locked():
        b.append(["z"], np.array([[1e9, np.nan, -1e9]]))  # clipped to float16's range, NaN -> 0
        assert np.isfinite(b.vectors()).all()
    with a.locked():
        assert a.lookup(["z"]).tolist() == [2]
    # an interrupted append: vectors written, digests not -> the half row is dropped
    with open(a.vectors_file, "ab") as fh:
        fh.write(b"\x00\x00")
    c = EmbeddingCache(tmp_path, key, dim=3)
    with c.locked():
        assert len(c) == 3 and c.vectors_file.stat().st_size == 3 * 3 * 2
    assert EmbeddingCache(tmp_path, {**key, "max_length": 9}, dim=3).path != a.path
    with pytest.raises(ValueError, match=r"\[1, 3\]"):
        with a.locked():
            a.append(["w"], np.zeros((1, 4)))
