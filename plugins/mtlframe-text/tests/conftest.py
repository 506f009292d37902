"""Fixtures: a tiny randomly initialized BERT saved to a local folder (no downloads), a private
embedding cache per test, and HF_HUB_OFFLINE=1 everywhere."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

WORDS = ("the a this dress is great love fit fits small large fabric soft cheap nice bad return "
         "perfect color size comfortable toy story movie comedy drama action star wars top shirt").split()


@pytest.fixture(scope="session")
def tiny_words() -> list[str]:
    """The tiny BERT's word vocabulary (tests build texts from it)."""
    return list(WORDS)


def make_tiny_bert(path: Path, layers: int = 3, hidden: int = 32, seed: int = 0) -> Path:
    """Save a tiny BERT (``layers`` x ``hidden``) with a word-level vocabulary to ``path``."""
    import json

    import torch
    from transformers import BertConfig, BertModel

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", *WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64}), encoding="utf-8")
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=64)
    torch.manual_seed(seed)
    BertModel(cfg).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A read-only (by convention) tiny BERT shared by the session's tests."""
    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture()
def tiny_model_copy(tmp_path, tiny_model_dir) -> Path:
    """A private copy of the tiny BERT that a test may modify."""
    import shutil

    return Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny-bert-copy"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLFRAME_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
