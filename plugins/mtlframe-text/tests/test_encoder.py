"""The ``text`` encoder: templates, empty text, shapes, fine-tuning only the chosen layers, LoRA."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from mtlframe.errors import MTLFrameError
from mtlframe_text.encoder import TextEncoder, TextEncoderError


def test_template_and_default_join(tiny_model_dir):
    cols = {"title": np.array(["Great", "", "", None], dtype=object),
            "body": np.array(["love it", "soft", "", float("nan")], dtype=object)}
    joined = TextEncoder(["title", "body"], model=str(tiny_model_dir), fill_empty="")
    assert joined.render(cols).tolist() == ["Great. love it", "soft", "", ""]
    templ = TextEncoder(["title", "body"], model=str(tiny_model_dir), fill_empty="", template="{title}. {body}")
    assert templ.render(cols).tolist() == ["Great. love it", ". soft", "", ""]  # ". " alone -> ""
    with pytest.raises(ValueError, match="'review', which is not in features"):
        TextEncoder(["title"], model=str(tiny_model_dir), fill_empty="", template="{title} {review}")


def test_frozen_shapes_and_empty_or_nan_text(tiny_model_dir):
    enc = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", dim=5, progress=False)
    body = np.array(["the dress is great", "", None, float("nan"), "   ", "!!", "the dress is great"], dtype=object)
    cols = enc.featurize({"body": body})
    idx = cols[enc.key]
    assert idx.dtype == torch.int64 and idx.shape == (7,)
    assert len(set(idx[1:6].tolist())) == 1  # every kind of missing text is the empty text
    out = enc(cols)
    assert out.shape == (7, 5) and torch.isfinite(out).all()
    assert enc.output_dim == 5 and enc.table.shape == (1 + 2, 32)
    assert sum(p.numel() for p in enc.parameters()) == 32 * 5 + 5  # the projection only
    assert not any("lm" in k for k in enc.state_dict())             # no transformer in checkpoints
    ident = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", dim=None, progress=False)
    assert ident.output_dim == 32 and ident(ident.featurize({"body": body})).shape == (7, 32)
    none = enc.featurize({"body": np.array([], dtype=object)})
    assert enc(none).shape == (0, 5)


def test_finetune_updates_only_the_last_layers(tiny_model_dir):
    torch.manual_seed(0)
    enc = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", mode="finetune", trainable_layers=1, lr=1e-2, dim=4)
    body = np.array(["the dress is great", "small fit", "", "love the soft fabric !"], dtype=object)
    cols = enc.featurize({"body": body})
    ids, mask = (cols[k] for k in enc.input_keys)
    assert ids.shape == mask.shape and ids.shape[0] == 4 and ids.shape[1] <= enc.max_length
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("lm.encoder.layer.2.", "proj.")) for n in trainable)
    assert any(n.startswith("lm.encoder.layer.2.") for n in trainable)

    groups = enc.param_groups(1e-3)
    assert len(groups) == 1 and groups[0]["lr"] == 1e-2
    lm_ids = {id(p) for p in groups[0]["params"]}
    rest = [p for p in enc.parameters() if p.requires_grad and id(p) not in lm_ids]
    opt = torch.optim.SGD([{"params": rest}, *groups], lr=1e-1)
    before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    enc.train()
    loss = enc(cols).pow(2).sum()
    loss.backward()
    opt.step()
    changed = {n for n, p in enc.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "nothing changed"
    assert changed <= trainable
    assert "proj.weight" in changed and any(n.startswith("lm.encoder.layer.2.") for n in changed)
    assert not any(n.startswith(("lm.embeddings.", "lm.encoder.layer.0.", "lm.encoder.layer.1."))
                   for n in changed)


def test_finetune_all_and_none(tiny_model_dir):
    every = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", mode="finetune", trainable_layers=None)
    assert all(p.requires_grad for p in every.lm.parameters())
    head = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", mode="finetune", trainable_layers=0, dim=3)
    assert not any(p.requires_grad for p in head.lm.parameters()) and head.param_groups(1e-3) == []
    with pytest.raises(ValueError, match="only 3 layers"):
        TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", mode="finetune", trainable_layers=4)


def test_lora_trains_adapters_only(tiny_model_dir):
    pytest.importorskip("peft")
    enc = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", mode="finetune", lora=2, trainable_layers=1,
                      lora_targets=["query", "value"], dim=4, lr=1e-2)
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    lora = [n for n in trainable if "lora_" in n]
    assert lora and all("layer.2." in n for n in lora)
    assert set(trainable) - set(lora) == {"proj.weight", "proj.bias"}
    cols = enc.featurize({"body": np.array(["the dress is great", "small"], dtype=object)})
    assert enc(cols).shape == (2, 4)


def test_lora_without_peft_is_a_clear_error(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    with pytest.raises(TextEncoderError, match=r"pip install 'mtlframe-text\[lora\]'") as err:
        TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", mode="finetune", lora=4)
    assert isinstance(err.value, MTLFrameError)


def test_bad_arguments(tiny_model_dir):
    with pytest.raises(ValueError, match="lora needs mode: finetune"):
        TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", lora=4)
    with pytest.raises(ValueError, match="max_length"):
        TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", max_length=0)


def test_sentences_mode(tiny_model_dir, monkeypatch):
    from mtlframe_text.encoder import split_sentences

    assert split_sentences("Love it. Fits well!\nsoft ... ok? ") == ["Love it.", "Fits well!", "soft ...", "ok?"]
    assert split_sentences(" . ") == []
    enc = TextEncoder(["title", "body"], model=str(tiny_model_dir), fill_empty="", template="{title}. {body}", segments="sentences",
                      max_segments=3, segment_pooling="mean+max", dim=4, progress=False)
    assert enc.output_dim == 4 and enc.proj.in_features == 64
    cols = {"title": np.array(["Great", "", "Great", None], dtype=object),
            "body": np.array(["love it. the fit is small! a b c. d", "soft", "soft", ""], dtype=object)}
    out = enc.featurize(cols)
    idx = out[enc.key]
    assert idx.shape == (4, 3)  # first 3 sentences of row 0
    assert (idx[1, 1:] == 0).all() and idx[1, 0] == idx[2, 1]  # "soft" shared; 0 = padding
    assert idx[3, 0] > 0 and (idx[3, 1:] == 0).all()  # empty row -> the empty text, embedded
    y = enc(out)
    assert y.shape == (4, 4) and torch.isfinite(y).all()
    # sentences and whole texts share the cache: a whole-text encoder of "soft" hits
    from mtlframe_text import models

    monkeypatch.setattr(models, "load_model", lambda r: (_ for _ in ()).throw(AssertionError("loaded")))
    whole = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", dim=4, progress=False)
    whole.featurize({"body": np.array(["soft"], dtype=object)})
    with pytest.raises(ValueError, match="needs mode: frozen"):
        TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", mode="finetune", segments="sentences")


@pytest.mark.parametrize("args", [{"dim": 4}, {"segments": "sentences", "segment_pooling": "mean+max"},
                                  {"mode": "finetune", "trainable_layers": 1, "dim": 4}],
                         ids=["frozen", "sentences", "finetune"])
def test_mtlframe_contract_check(tiny_model_dir, args):
    from mtlframe import testing

    testing.check_encoder(TextEncoder, ["f0", "f1"], model=str(tiny_model_dir), progress=False, fill_empty="", **args)
