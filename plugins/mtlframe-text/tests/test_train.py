"""End to end through mtlframe: recipe -> train -> checkpoint -> predict, frozen and finetune."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mtlframe.recipe import recipe_from_dict
from mtlframe.run import load_checkpoint, predict_frame, train


@pytest.fixture()
def reviews_csv(tmp_path, tiny_words):
    rng = np.random.default_rng(0)
    n = 240
    good = rng.random(n) < 0.5
    words = np.array(tiny_words)
    body = [("great love perfect " if g else "bad cheap return ") + " ".join(rng.choice(words, 3)) for g in good]
    body[:10] = [""] * 10  # missing text
    frame = pd.DataFrame({"item": rng.integers(0, 20, n).astype(str), "body": body,
                          "liked": good.astype(float)})
    path = tmp_path / "reviews.csv"
    frame.to_csv(path, index=False)
    return path, frame


def _recipe(path, text: dict) -> dict:
    return {
        "seed": 1,
        "data": {"dataset": {"name": "csv", "path": str(path), "features": {"item": "categorical", "body": "text"},
                             "labels": ["liked"], "timestamp": None, "user": None, "item": "item"},
                 "split": {"name": "random", "val": 0.2, "test": 0.2}, "batch_size": 32},
        "tasks": {"liked": {"type": "binary", "label": "liked"}},
        "model": {"encoders": [{"name": "embedding", "features": ["item"], "dim": 4},
                               {"name": "text", "features": ["body"], "progress": False, "fill_empty": "", **text}],
                  "backbone": {"name": "shared-bottom", "hidden": [16]}, "tower": {"name": "mlp", "hidden": [8]}},
        "optimizer": {"name": "adam", "lr": 1.0e-2},
        "trainer": {"max_epochs": 3, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
        "logger": {"name": "none"},
    }


@pytest.mark.parametrize("mode", ["frozen", "finetune", "frozen-attention"])
def test_train_and_predict(reviews_csv, tiny_model_dir, tmp_path, mode):
    path, frame = reviews_csv
    text = {"model": str(tiny_model_dir), "mode": mode, "dim": 8, "max_length": 16}
    if mode == "frozen-attention":
        text.update(mode="frozen", pooling="attention", layer=2, attention_heads=2)
    if mode == "finetune":
        text.update(trainable_layers=1, lr=1.0e-3)
    recipe = recipe_from_dict(_recipe(path, text), "test")
    result = train(recipe, tmp_path / f"run-{mode}", progress=False)
    assert result.providers["encoder:text"] == "mtlframe-text 0.1.0"
    assert result.metrics["test"]["liked"]["auc"] > 0.8  # the words give the label away

    loaded = load_checkpoint(result.best_checkpoint)
    pred = predict_frame(loaded, frame.drop(columns=["liked"]).head(12))
    assert pred["liked"].between(0, 1).all() and len(pred) == 12
    if mode.startswith("frozen"):  # the transformer is not part of the model or its checkpoint
        assert result.num_parameters < (1600 if "attention" in mode else 1000)
