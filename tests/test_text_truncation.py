"""The built-in bag-of-words encoder: texts longer than max_tokens, non-string cells."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from mtlframe.encoders.bag_of_words import BagOfWordsEncoder
from mtlframe.errors import DataError
from mtlframe.features import FeatureInfo

INFO = {"a": FeatureInfo("a", "text"), "b": FeatureInfo("b", "text")}


def _bow(**kw) -> BagOfWordsEncoder:
    return BagOfWordsEncoder(["a", "b"], dim=2, num_buckets=64, ngrams=1, max_tokens=3, feature_info=INFO, **kw)


COLS = {"a": np.array(["one two three four", "one", "one two three four five", "x"], dtype=object),
        "b": np.array(["one two", "", "three", "four"], dtype=object)}


def test_truncation_warns_once_per_column_with_the_share_and_the_limit():
    enc = _bow()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ids = enc.featurize(COLS)
        enc.featurize(COLS)                     # a second split: no second warning
    msgs = [str(w.message) for w in record if "max_tokens" in str(w.message)]
    assert msgs == ["bag-of-words: column 'a': 2 of 4 texts (50.0%) have more than max_tokens=3 tokens (n-grams "
                    "included; the longest has 5) and are truncated. Raise max_tokens to keep them; "
                    "on_truncation: ignore silences this, error refuses it"]
    assert ids["bow:a"].shape == (4, 3)         # cut to the limit


def test_truncation_error_and_ignore():
    with pytest.raises(DataError, match=r"column 'a': 2 of 4 texts \(50.0%\) .* Fix: raise max_tokens"):
        _bow(on_truncation="error").featurize(COLS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _bow(on_truncation="ignore").featurize(COLS)


def test_non_string_cells_are_embedded_as_their_text():
    enc = _bow()
    a = enc.featurize({"a": np.array([42, "42", None], dtype=object), "b": np.array(["", "", ""], dtype=object)})
    assert a["bow:a"][0].tolist() == a["bow:a"][1].tolist() and a["bow:a"][2].tolist() == [0]


def test_empty_cells_are_counted_per_column_and_printed_with_the_data(tmp_path, capsys):
    enc = _bow(on_truncation="ignore")
    enc.featurize(COLS)
    enc.featurize({"a": np.array(["x", None, "  "], dtype=object), "b": np.array(["y", "z", "w"], dtype=object)})
    assert enc.data_notes() == [
        "bag-of-words: column 'a': 2 of 7 texts (28.6%) are empty or missing; each is encoded as an empty bag "
        "(a zero vector)",
        "bag-of-words: column 'b': 1 of 7 texts (14.3%) are empty or missing; each is encoded as an empty bag "
        "(a zero vector)"]
    assert enc.data_notes() == []               # reported once
    # through the data module: one line per column, all splits together
    import pandas as pd

    from mtlframe.recipe import recipe_from_dict
    from mtlframe.run import build_system

    frame = pd.DataFrame({"txt": ["good fit", "", None, "too small", "love it"] * 8, "y": [0, 1] * 20})
    frame.to_csv(tmp_path / "t.csv", index=False)
    rec = {"data": {"dataset": {"name": "csv", "path": str(tmp_path / "t.csv"), "features": {"txt": "text"},
                                "labels": ["y"]}, "batch_size": 8},
           "tasks": {"y": {"type": "binary", "label": "y"}},
           "model": {"encoders": [{"name": "bag-of-words", "features": ["txt"], "dim": 4}],
                     "backbone": {"name": "shared-bottom", "hidden": [4]}, "tower": {"name": "mlp", "hidden": [4]}}}
    build_system(recipe_from_dict(rec, "<r>"))
    out = capsys.readouterr().out
    assert "bag-of-words: column 'txt': 16 of 40 texts (40.0%) are empty or missing" in out
