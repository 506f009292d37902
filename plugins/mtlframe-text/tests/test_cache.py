"""The on-disk embedding cache: hits, misses, invalidation, sharing, crash repair."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from mtlframe_text import models
from mtlframe_text.cache import CacheMismatchWarning, EmbeddingCache
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
    return TextEncoder(["body"], model=str(path), dim=4, progress=False, **{"fill_empty": "", **kw})


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


# -- every read checks the entry's width, dtype and key ------------------------------------------------
KEY = {"model": "fingerprint-a", "pooling": "mean", "max_length": 8, "dtype": "float32"}


def _write(tmp_path, dim=3, key=KEY, ragged=False) -> EmbeddingCache:
    c = EmbeddingCache(tmp_path, key, dim=dim, ragged=ragged)
    with c.locked():
        if ragged:  # "x": 2 token rows, "y": 1
            c.append(["x", "y"], np.arange(3 * dim, dtype=np.float32).reshape(3, dim), lengths=[2, 1])
        else:
            c.append(["x", "y"], np.arange(2 * dim, dtype=np.float32).reshape(2, dim))
    return c


def _edit_meta(cache: EmbeddingCache, **fields) -> None:
    import json

    meta = json.loads(cache.meta_file.read_text())
    meta.update(fields)
    cache.meta_file.write_text(json.dumps(meta))


@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("edit, why", [
    ({"dim": 4}, "dim 4 (expected 3)"),                                   # another width under this key
    ({"vector_dtype": "float32"}, "vector_dtype 'float32' (expected 'float16')"),
    ({"model": "fingerprint-b"}, "model 'fingerprint-b' (expected 'fingerprint-a')"),   # another model's entry
    ({"layer": 2}, "layer 2 (expected none)"),
])
def test_mismatching_entry_is_a_miss_never_wrong_vectors(tmp_path, ragged, edit, why):
    first = _write(tmp_path, ragged=ragged)
    _edit_meta(first, **edit)
    reader = EmbeddingCache(tmp_path, KEY, dim=3, ragged=ragged)
    with pytest.warns(CacheMismatchWarning, match=re.escape(f"does not match this encoder setting ({why}); its "
                                                            "rows are ignored and recomputed")):
        with reader.locked():
            assert reader.lookup(["x", "y"]).tolist() == [-1, -1] and len(reader) == 0
            reader.append(["x"], np.ones((2 if ragged else 1, 3)), lengths=[2] if ragged else None)
    with reader.locked():   # the recomputed entry is read back without a warning
        assert reader.vectors().tolist() == np.ones((2 if ragged else 1, 3)).tolist()


def test_entry_of_another_width_copied_in_is_not_read_as_this_width(tmp_path):
    import shutil

    wide = _write(tmp_path / "a", dim=4)                 # 2 rows x 4 = 8 float16 values
    narrow = EmbeddingCache(tmp_path / "b", KEY, dim=2)  # would read them as 4 rows x 2
    shutil.copytree(wide.path, narrow.path)
    with pytest.warns(UserWarning, match="dim 4 \\(expected 2\\)"):
        with narrow.locked():
            assert len(narrow) == 0 and narrow.vectors().shape == (0, 2)


def test_data_without_meta_is_not_trusted(tmp_path):
    c = _write(tmp_path)
    c.meta_file.unlink()
    with pytest.warns(UserWarning, match="meta.json is missing"):
        with EmbeddingCache(tmp_path, KEY, dim=3).locked() as fresh:
            assert len(fresh) == 0


def test_reader_notices_an_entry_recreated_by_another_process(tmp_path):
    reader = _write(tmp_path)                             # holds an index: x -> 0, y -> 1
    other = EmbeddingCache(tmp_path, KEY, dim=3)
    _edit_meta(other, dim=9)                              # a foreign entry: another process recreates it
    with pytest.warns(UserWarning):
        with other.locked():
            other.append(["y", "x"], np.array([[7, 7, 7], [8, 8, 8]], dtype=np.float32))
    with reader.locked():
        rows = reader.lookup(["x"])
        assert reader.vectors()[rows].tolist() == [[8, 8, 8]]   # not the stale row 0 (= y's vector now)


def test_old_entries_without_the_new_fields_still_hit(tmp_path):
    import json

    c = _write(tmp_path)
    meta = json.loads(c.meta_file.read_text())
    for k in ("vector_dtype", "entry_id"):
        del meta[k]
    c.meta_file.write_text(json.dumps(meta))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with EmbeddingCache(tmp_path, KEY, dim=3).locked() as again:
            assert again.lookup(["y"]).tolist() == [1]


def test_encoder_recomputes_an_entry_written_for_another_model(tiny_model_dir, monkeypatch):
    """An entry whose meta.json names another model (e.g. copied over) is re-encoded, never read."""
    import json

    calls = count_forwards(monkeypatch)
    first = frozen(tiny_model_dir)
    first.featurize({"body": TEXTS})
    entry = first.cache()
    meta = json.loads(entry.meta_file.read_text())
    meta["model"] = "0" * 64
    entry.meta_file.write_text(json.dumps(meta))
    with open(entry.vectors_file, "r+b") as fh:       # and its vectors are not this model's
        fh.write(np.full(4 * 32, 7, dtype=np.float16).tobytes())
    second = frozen(tiny_model_dir)
    with pytest.warns(CacheMismatchWarning, match=r"model '0{64}' \(expected '[0-9a-f]{64}'\)"):
        out = second.featurize({"body": TEXTS})
    assert calls[0] == 8 and second.last_stats["encoded"] == 4
    torch.testing.assert_close(second.table[out[second.key]], first.table[first.featurize({"body": TEXTS})[first.key]])
