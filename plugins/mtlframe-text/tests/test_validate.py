"""`mtlframe recipe validate` runs the text encoder's argument checks: exact keys, no weights loaded."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mtlframe_text import models

from mtlframe.errors import RecipeError
from mtlframe.recipe import recipe_from_dict


def _recipe(text: dict) -> dict:
    return {
        "data": {"dataset": {"name": "csv", "path": "reviews.csv", "features": {"item": "categorical", "body": "text"},
                             "labels": ["liked"]}},
        "tasks": {"liked": {"type": "binary", "label": "liked"}},
        "model": {"encoders": [{"name": "embedding", "features": ["item"], "dim": 4},
                               {"name": "text", "features": ["body"], **text}],
                  "backbone": {"name": "shared-bottom", "hidden": [16]}},
    }


@pytest.fixture()
def no_weights(monkeypatch):
    """Validation must never load a transformer or its tokenizer."""
    def refuse(*_a, **_k):
        raise AssertionError("recipe validation loaded model weights or a tokenizer")
    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(models, "load_tokenizer", refuse)


def _problems(text: dict) -> dict[str, str]:
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(_recipe(text), "r.yaml")
    return dict(err.value.problems)


def test_layer_beyond_the_model_names_the_key_and_the_range(tiny_model_dir, no_weights):
    problems = _problems({"model": str(tiny_model_dir), "layer": 9})
    assert list(problems) == ["model.encoders[1].layer"]
    assert "layer=9, but" in problems["model.encoders[1].layer"]
    assert "has 3 layers (use 0..3, 0 = the token embeddings; or count back from -1 = the last to -4)" \
        in problems["model.encoders[1].layer"]


def test_max_length_beyond_the_model(tiny_model_dir, no_weights):
    """The tiny BERT has 64 positions: a longer max_length would crash in the position embeddings."""
    problems = _problems({"model": str(tiny_model_dir), "max_length": 100000})
    assert problems["model.encoders[1].max_length"].endswith("reads at most 64 tokens; use max_length <= 64.")
    assert list(_problems({"model": str(tiny_model_dir), "max_length": 64, "layer": 9})) == ["model.encoders[1].layer"]


def test_every_problem_of_the_entry_at_once(tiny_model_dir, no_weights):
    problems = _problems({"model": str(tiny_model_dir), "pooling": "attention", "segments": "sentences",
                          "dropout": 1.5, "max_length": 0})
    assert "use segments: text" in problems["model.encoders[1].pooling"]
    assert "dropout must be in [0, 1), got 1.5" in problems["model.encoders[1].dropout"]
    assert "max_length must be >= 1" in problems["model.encoders[1].max_length"]


def test_finetune_checks_without_loading_weights(tiny_model_dir, no_weights):
    problems = _problems({"model": str(tiny_model_dir), "mode": "finetune", "trainable_layers": 5})
    assert "trainable_layers=5, but" in problems["model.encoders[1].trainable_layers"]
    assert "only 3 layers" in problems["model.encoders[1].trainable_layers"]
    problems = _problems({"model": str(tiny_model_dir), "lora": 4})
    assert "lora needs mode: finetune" in problems["model.encoders[1].lora"]
    # a valid fine-tuning entry validates, still without weights
    recipe_from_dict(_recipe({"model": str(tiny_model_dir), "mode": "finetune", "trainable_layers": 2,
                              "layer": 2}), "r.yaml")


def test_missing_model_is_reported_at_the_model_key(tmp_path, no_weights):
    problems = _problems({"model": str(tmp_path / "nowhere")})
    assert "cannot find model" in problems["model.encoders[1].model"]


def test_unknown_parameter_suggests_the_closest(tiny_model_dir):
    problems = _problems({"model": str(tiny_model_dir), "layers": 2})
    assert "Did you mean 'layer'?" in problems["model.encoders[1].layers"]
    assert "encoder 'text'" in problems["model.encoders[1].layers"]


def test_constructor_raises_the_same_message_with_the_parameter(tiny_model_dir):
    from mtlframe_text.encoder import TextEncoder

    from mtlframe.errors import ArgumentError

    with pytest.raises(ArgumentError, match=r"has 3 layers \(use 0..3") as err:
        TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", layer=9)
    assert err.value.param == "layer"


def test_constructor_cuts_max_length_at_the_model_limit(tiny_model_dir):
    """Built directly (no recipe validation), a max_length past the model's positions is cut to them,
    with a warning; the default max_length is cut silently (a short-context model still works)."""
    from mtlframe_text.encoder import TextEncoder

    with pytest.warns(UserWarning, match="reads at most 64 tokens; texts are cut at 64"):
        enc = TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", max_length=1000, progress=False)
    assert enc.max_length == 64
    assert TextEncoder(["body"], model=str(tiny_model_dir), fill_empty="", progress=False).max_length == 64
    out = enc.featurize({"body": np.array([" ".join(["soft"] * 200)], dtype=object)})
    assert torch.isfinite(enc(out)).all()
