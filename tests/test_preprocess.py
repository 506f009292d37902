"""The preprocessor: fitted on train only; OOV, NaN, multi-categorical and label handling."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mtlframe.errors import DataError
from mtlframe.features import label_key, mask_key
from mtlframe.preprocess import LabelSpec, Preprocessor

FEATURES = {"city": "categorical", "age": "numeric", "tags": "multi_categorical", "text": "text"}
LABELS = [LabelSpec("click", "click", "binary"), LabelSpec("rating", "rating", "regression"),
          LabelSpec("kind", "kind", "multiclass")]
FILL = {"age": "mean"}  # _train() has a missing age


def _train():
    return pd.DataFrame({"city": ["a", "b", "a", None], "age": [10.0, 20.0, np.nan, 30.0],
                         "tags": ["x|y", "y", "", "z|x|y"], "text": ["hi", None, "yo", ""],
                         "click": [1, 0, np.nan, 1], "rating": [4.0, 3.0, 5.0, np.nan],
                         "kind": ["u", "v", "u", None]})


def test_fit_on_train_and_transform_unseen_values():
    pre = Preprocessor(FEATURES, LABELS, fill_missing=FILL).fit(_train())
    info = pre.feature_info()
    assert info["city"].cardinality == 3          # OOV + a + b
    assert pre.vocab["city"] == ["a", "b"]        # by frequency
    mean = (10 + 20 + 30) / 3
    std = float(np.std([10.0, 20.0, 30.0]))
    assert pre.stats["age"] == pytest.approx((mean, std))
    test = pd.DataFrame({"city": ["b", "zzz", None], "age": [20.0, np.nan, 40.0], "tags": ["y|new", None, "x"],
                         "text": ["t", np.nan, ""], "click": [0, 1, 1], "rating": [1.0, 2.0, 3.0],
                         "kind": ["v", "w", "u"]})
    with pytest.warns(UserWarning, match=r"multiclass task 'kind'.*'w' \(1 row\)"):
        out = pre.transform(test)
    assert out["city"].tolist() == [2, 0, 0]       # unseen and missing -> OOV 0
    assert out["age"][1].item() == 0.0             # missing -> train mean -> 0
    assert out["age"][2].item() == pytest.approx((40 - mean) / std)
    # tags: vocab by frequency y(3) x(2) z(1) -> ids y=2, x=3, z=4; 'new' -> OOV 1; padding 0
    assert out["tags"].shape == (3, 3)
    assert out["tags"][0].tolist() == [2, 1, 0]
    assert out["tags"][1].tolist() == [0, 0, 0]
    assert out["text"].tolist() == ["t", "", ""]
    assert out[label_key("kind")].tolist() == [1, -1, 0]  # unseen class 'w' -> masked, with a warning
    assert out[mask_key("kind")].tolist() == [True, False, True]


def test_missing_labels_are_masked():
    pre = Preprocessor(FEATURES, LABELS, fill_missing=FILL).fit(_train())
    out = pre.transform(_train())
    assert out[mask_key("click")].tolist() == [True, True, False, True]
    assert out[mask_key("rating")].tolist() == [True, True, True, False]
    assert math.isnan(out[label_key("click")][2].item())


def test_errors_name_column_and_row():
    pre = Preprocessor(FEATURES, LABELS, fill_missing=FILL).fit(_train())
    with pytest.raises(DataError, match="required column 'age' is missing"):
        pre.transform(_train().drop(columns=["age"]), "in.csv")
    bad = _train()
    bad["age"] = ["1", "2", "old", "4"]
    with pytest.raises(DataError, match=r"'age'.*'old' at row 3"):
        pre.transform(bad, "in.csv")
    bad = _train()
    bad["click"] = [1, 2, 0, 1]
    with pytest.raises(DataError, match=r"binary label column 'click'.*2 \(1 row\) \(first at row 2\)"):
        pre.transform(bad, "in.csv")
    # in a split (a subset of the rows), the row named is the file's, not the position in the split
    split = {"train": np.array([0, 2]), "test": np.array([3, 1])}
    with pytest.raises(DataError, match=r"binary label column 'click'.* 2 \(1 row\) \(first at row 2\);"):
        pre.transform_splits(bad, split, "in.csv")
    bad = _train()
    bad["age"] = ["1", "2", "3", "old"]
    with pytest.raises(DataError, match=r"'age'.*'old' at row 4;"):
        pre.transform_splits(bad, split, "in.csv")


def test_state_round_trip():
    pre = Preprocessor(FEATURES, LABELS, min_count=1, fill_missing=FILL).fit(_train())
    again = Preprocessor.from_state_dict(pre.state_dict())
    a, b = pre.transform(_train()), again.transform(_train())
    for k in ("city", "age", "tags"):
        assert torch.equal(a[k], b[k])


def test_zero_rows_transform_to_empty_columns():
    """An empty split (data.split.val: 0) or a header-only file gives empty columns, not a crash."""
    pre = Preprocessor(FEATURES, LABELS, fill_missing=FILL).fit(_train())
    out = pre.transform(_train().iloc[:0])
    assert out["tags"].shape == (0, 3) and out["tags"].dtype == torch.int64
    assert out["city"].shape == (0,) and out["age"].shape == (0,)
    assert out[mask_key("click")].shape == (0,)
