"""Text columns: long texts (on_truncation), empty cells (fill_empty), non-string cells."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtlframe.errors import DataError, RecipeError
from mtlframe.recipe import recipe_from_dict
from mtlframe_text.encoder import TextEncoder

# token counts with the tiny BERT's [CLS] and [SEP]: "the dress" 4, "a" 3, the long one 8
LONG = "the dress is great love fit"
BODY = np.array(["the dress", LONG, "a", LONG, "the dress"], dtype=object)


def enc(tiny_model_dir, **kw) -> TextEncoder:
    return TextEncoder(["body"], model=str(tiny_model_dir), dim=4, progress=False, max_length=4, **kw)


def _truncation_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "longer than max_length" in str(w.message)]


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_long_texts_warn_once_with_the_share_and_the_limit(tiny_model_dir, mode):
    e = enc(tiny_model_dir, mode=mode)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        e.featurize({"body": BODY})
        e.featurize({"body": BODY[:2]})          # a second split: no second warning
    msgs = _truncation_warnings(record)
    assert msgs == [
        "text encoder (body): 1 of 3 unique texts (33.3%) are longer than max_length=4 tokens (the longest has 8) "
        "and are truncated. raise max_length (the model reads up to 64)"
        + ("; segments: sentences (frozen mode; each sentence is embedded whole)" if mode == "frozen" else "")
        + "; on_truncation: ignore silences this, error refuses it"]


def test_on_truncation_error_and_ignore(tiny_model_dir):
    with pytest.raises(DataError, match=r"1 of 3 unique texts \(33.3%\) are longer than max_length=4 .* Fix: "
                                        r"raise max_length .*on_truncation: warn \(or ignore\) to accept it"):
        enc(tiny_model_dir, on_truncation="error").featurize({"body": BODY})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        enc(tiny_model_dir, on_truncation="ignore").featurize({"body": BODY})
    assert _truncation_warnings(record) == []
    # nothing longer than the limit: no warning
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        TextEncoder(["body"], model=str(tiny_model_dir), progress=False, max_length=8).featurize({"body": BODY})
    assert _truncation_warnings(record) == []


def test_sentences_are_checked_one_by_one(tiny_model_dir):
    e = enc(tiny_model_dir, segments="sentences")
    with pytest.warns(UserWarning, match=r"1 of 2 unique sentences \(50.0%\) are longer than max_length=4"):
        e.featurize({"body": np.array([f"a. {LONG}."], dtype=object)})


def test_empty_cells_are_an_error_naming_each_column_and_count(tiny_model_dir):
    e = TextEncoder(["title", "body"], model=str(tiny_model_dir), progress=False)
    cols = {"title": np.array(["", "the dress", None, "  "], dtype=object),
            "body": np.array(["fit", np.nan, "the", "soft"], dtype=object)}
    with pytest.raises(DataError) as err:
        e.featurize(cols)
    msg = str(err.value)
    assert msg.startswith("text encoder (title, body): empty cells (missing or blank) among 4 rows: "
                          "column 'title' has 3 (75.0%); column 'body' has 1 (25.0%). Set fill_empty: ''")
    assert "fill_empty: '<text>' for a placeholder" in msg


def test_declared_fill_replaces_empty_cells_and_is_counted(tiny_model_dir, caplog):
    e = TextEncoder(["body"], model=str(tiny_model_dir), progress=False, fill_empty="no review")
    with caplog.at_level(logging.INFO, logger="mtlframe_text.encoder"):
        rows = e.featurize({"body": np.array(["", "no review", None, "the dress"], dtype=object)})[e.key]
    assert rows[0] == rows[1] == rows[2] != rows[3]     # the empty cells are the text "no review"
    assert ("text encoder (body): column 'body': 2 empty cells of 4 rows (50.0%) embedded as 'no review' "
            "(fill_empty)") in caplog.messages
    assert e.render({"body": np.array([" ", "a"], dtype=object)}).tolist() == ["no review", "a"]

    blank = TextEncoder(["body"], model=str(tiny_model_dir), progress=False, fill_empty="")
    out = blank(blank.featurize({"body": np.array(["", None], dtype=object)}))
    assert torch.isfinite(out).all() and torch.equal(out[0], out[1])


def test_non_string_cells_are_counted_and_named(tiny_model_dir):
    e = TextEncoder(["body"], model=str(tiny_model_dir), progress=False)
    values = np.array(["the dress", 42, 3.5, True, 42], dtype=object)
    with pytest.warns(UserWarning, match=r"text encoder \(body\): column 'body' has 4 non-string cells of 5 rows "
                                         r"\(e.g. 42 \(int\), 3.5 \(float\), True \(bool\)\); they are embedded "
                                         r"as their text"):
        texts = e.render({"body": values})
    assert texts.tolist() == ["the dress", "42", "3.5", "True", "42"]


def test_the_data_path_hands_non_string_cells_over_as_they_are(tmp_path):
    from mtlframe.preprocess import Preprocessor

    frame = pd.DataFrame({"body": pd.Series(["a", 7, None, np.nan], dtype=object), "y": [0.0, 1.0, 0.0, 1.0]})
    pre = Preprocessor({"body": "text"}, [])
    pre.fit(frame)
    assert pre.transform(frame)["body"].tolist() == ["a", 7, "", ""]


def test_recipe_validation_checks_the_new_parameters(tiny_model_dir):
    base = {"data": {"dataset": {"name": "csv", "path": "r.csv", "features": {"body": "text"}, "labels": ["y"]}},
            "tasks": {"y": {"type": "binary", "label": "y"}},
            "model": {"encoders": [{"name": "text", "features": ["body"], "model": str(tiny_model_dir),
                                    "on_truncation": "sometimes"}],
                      "backbone": {"name": "shared-bottom", "hidden": [4]}}}
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(base, "r.yaml")
    problems = dict(err.value.problems)
    assert "model.encoders[0].on_truncation" in problems and "'warn'" in problems["model.encoders[0].on_truncation"]


REPO = Path(__file__).resolve().parents[3]


def test_shipped_clothing_recipes_declare_the_fill_their_data_needs():
    """The clothing reviews have empty titles and texts: the bundled recipes must declare fill_empty."""
    from mtlframe.recipe import load_recipe

    for name in ("clothing_text_minilm.yaml", "clothing_text_minilm_finetune.yaml"):
        recipe = load_recipe(str(REPO / "recipes" / name))
        text = [e for e in recipe.config.model.encoders if e["name"] == "text"]
        assert [e.get("fill_empty") for e in text] == [""], name


def test_memory_plan_counts_the_frozen_tables_outside_the_parameters(tiny_model_dir):
    """mtlframe's memory plan sees the unique-text table / the cached token states (weights only)."""
    from torch import nn

    from mtlframe import memory_plan
    from mtlframe.recipe import OptimizerConfig

    texts = np.array(["the dress", "a", "the dress", "love it"], dtype=object)
    pooled = TextEncoder(["body"], model=str(tiny_model_dir), progress=False)                 # no projection
    tokens = TextEncoder(["body"], model=str(tiny_model_dir), progress=False, pooling="attention", layer=1,
                         attention_heads=1)
    for e in (pooled, tokens):
        e.featurize({"body": texts})
    model = nn.Module()
    model.encoders = nn.ModuleList([pooled, tokens])
    rows = {r.name: r for r in memory_plan.estimate(model, OptimizerConfig()).rows}
    table = rows["model.encoders[0] text table"]
    assert (table.shape, table.total, table.kind) == ((4, 32), 4 * 32 * 4, "cached, not trained")  # pad + 3 texts
    states = rows["model.encoders[1] token states"]
    # [CLS] the dress [SEP] = 4, [CLS] a [SEP] = 3, [CLS] love [UNK] [SEP] = 4 tokens, float16
    assert (states.shape, states.total) == ((11, 32), 11 * 32 * 2)
    assert states.fix.startswith("pooling: mean")
