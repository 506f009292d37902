"""Token states: the ragged cache, ``layer``, and ``pooling: attention`` (frozen and fine-tuned)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlframe_text import models
from mtlframe_text.cache import EmbeddingCache
from mtlframe_text.encoder import AttentionPooling, TextEncoder

TEXTS = np.array(["the dress is great", "love the fabric", "", "the dress is great", "small fit . soft"], dtype=object)


def reference_states(model_dir, text: str, layer: int) -> torch.Tensor:
    """Token states of ``text`` at hidden layer ``layer`` from the full model, one text at a time."""
    tok = models.load_tokenizer(models.resolve_model(str(model_dir)))
    lm = models.load_model(models.resolve_model(str(model_dir))).eval()
    enc = tok([text], truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        return lm(**enc, output_hidden_states=True).hidden_states[layer][0]     # (L, d)


def test_ragged_cache_spans_and_repair(tmp_path):
    key = {"model": "m", "pooling": "tokens", "max_length": 8}
    a = EmbeddingCache(tmp_path, key, dim=2, ragged=True)
    assert a.path != EmbeddingCache(tmp_path, key, dim=2).path      # pooled and ragged never mix
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    with a.locked():
        a.append(["x", "y", "x"], rows, lengths=[1, 3, 2])        # the repeated "x" is skipped
        with pytest.raises(ValueError, match="one length per text"):
            a.append(["z"], rows[:1])
        with pytest.raises(ValueError, match=r"\[2, 2\] rows"):
            a.append(["z"], rows[:1], lengths=[2])
    b = EmbeddingCache(tmp_path, key, dim=2, ragged=True)            # another process's view
    with b.locked():
        r = b.lookup(["y", "x", "q"])
        assert r.tolist() == [1, 0, -1]
        off, n = b.spans(r[:2])
        assert off.tolist() == [1, 0] and n.tolist() == [3, 1]
        np.testing.assert_array_equal(b.vectors()[1:4], rows[1:4].astype(np.float16))
    # an interrupted append: the lengths and keys of "w" (2 rows) written, only 1 of its rows
    with open(a.vectors_file, "ab") as fh:
        fh.write(np.zeros(2, np.float16).tobytes())
    with open(a.lengths_file, "ab") as fh:
        fh.write(np.array([2], np.int32).tobytes())
    with open(a.keys_file, "ab") as fh:
        fh.write(b"\x01" * 16)
    c = EmbeddingCache(tmp_path, key, dim=2, ragged=True)
    with c.locked():
        assert len(c) == 2 and c.vectors().shape == (4, 2)
        assert c.lengths_file.stat().st_size == 2 * 4 and c.keys_file.stat().st_size == 2 * 16


def test_frozen_attention_caches_the_layers_token_states(tiny_model_dir, monkeypatch):
    enc = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", pooling="attention", layer=1, attention_heads=2,
                      dim=4, progress=False)
    assert enc.proj.in_features == 2 * 32
    out = enc.featurize({"body": TEXTS})
    idx = out[enc.key]
    assert idx.shape == (5,) and idx[0] == idx[3]
    # each text's cached states are layer 1 of the full model (the encoder ran a truncated copy)
    table, spans = torch.cat(enc._token_chunks), enc._spans
    for row, text in ((0, "the dress is great"), (4, "small fit . soft")):
        start, n = spans[idx[row]].tolist()
        want = reference_states(tiny_model_dir, text, 1)
        assert n == want.shape[0]
        torch.testing.assert_close(table[start:start + n].float(), want, atol=2e-3, rtol=2e-3)
    y = enc(out)
    assert y.shape == (5, 4) and torch.isfinite(y).all()
    torch.testing.assert_close(y[0], y[3])
    y.sum().backward()
    assert enc.attention.score.weight.grad.abs().sum() > 0

    # a second run reads the token states from the cache without loading the model
    monkeypatch.setattr(models, "load_model", lambda r: (_ for _ in ()).throw(AssertionError("loaded")))
    again = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", pooling="attention", layer=1, attention_heads=2,
                        dim=4, progress=False)
    again.load_state_dict(enc.state_dict())
    out2 = again.featurize({"body": TEXTS})
    assert again.last_stats["cache_hits"] == 4 and again.last_stats["encoded"] == 0
    torch.testing.assert_close(again(out2), y.detach())


def test_attention_pooling_weights_and_masking():
    pool = AttentionPooling(dim=2, heads=1)
    with torch.no_grad():
        pool.score.weight.copy_(torch.tensor([[1.0, 0.0]]))
        pool.score.bias.zero_()
    x = torch.tensor([[[0.0, 1.0], [float(np.log(3.0)), 5.0], [9.0, 9.0]]])     # (1, 3, 2); token 3 is padding
    mask = torch.tensor([[True, True, False]])
    # softmax over scores (0, ln 3) -> weights (1/4, 3/4)
    torch.testing.assert_close(pool(x, mask), torch.tensor([[0.75 * float(np.log(3.0)), 0.25 * 1.0 + 0.75 * 5.0]]))
    assert pool(x, torch.zeros_like(mask)).abs().sum() == 0            # no tokens -> zeros, not NaN


def test_layer_changes_the_cache_entry_and_is_validated(tiny_model_dir):
    last = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", progress=False)
    explicit_last = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", layer=3, progress=False)
    lower = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", layer=1, progress=False)
    minus = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", layer=-3, progress=False)
    assert last.cache().path == explicit_last.cache().path
    assert lower.cache().path != last.cache().path and minus.cache().path == lower.cache().path
    a = last.featurize({"body": TEXTS})
    b = lower.featurize({"body": TEXTS})
    assert not torch.allclose(last.table[a[last.key]], lower.table[b[lower.key]])
    want = reference_states(tiny_model_dir, "love the fabric", 1).mean(0)
    torch.testing.assert_close(lower.table[b[lower.key]][1], want, atol=2e-3, rtol=2e-3)
    with pytest.raises(ValueError, match="has 3 layers"):
        TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", layer=4)
    with pytest.raises(ValueError, match="has 3 layers"):
        TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", layer=-5)
    # layer 0 (= -4) is the token embeddings; -2 is layer 2
    for layer, index in ((0, 0), (-4, 0), (-2, 2)):
        enc = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", layer=layer, progress=False)
        out = enc.featurize({"body": TEXTS})
        want = reference_states(tiny_model_dir, "love the fabric", index).mean(0)
        torch.testing.assert_close(enc.table[out[enc.key]][1], want, atol=2e-3, rtol=2e-3)
    with pytest.raises(ValueError, match="use segments: text"):
        TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", pooling="attention", segments="sentences")


def test_finetune_attention_on_a_lower_layer_trains_only_kept_layers(tiny_model_dir):
    enc = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", mode="finetune", pooling="attention", layer=2,
                      trainable_layers=1, dim=4, progress=False)
    layers = next(m for m in enc.lm.modules() if isinstance(m, torch.nn.ModuleList))
    assert len(layers) == 2                                   # layer 3 is gone: it would get no gradient
    out = enc.featurize({"body": TEXTS})
    enc(out).sum().backward()
    grads = {n: p.grad is not None and p.grad.abs().sum() > 0 for n, p in enc.lm.named_parameters() if p.requires_grad}
    assert grads and all(grads.values()) and all(".1." in n for n in grads)
