"""Women's E-Commerce Clothing Reviews (bundled).

Source: Kaggle, nicapotato/womens-ecommerce-clothing-reviews — 23,486 reviews of 1,206 clothing
items. Licence: CC0 1.0 (public domain); credit: nicapotato on Kaggle. The original CSV ships with
mtlframe, gzipped, as ``mtlframe/datasets/data/womens_clothing_reviews.csv.gz``.

Columns (original name -> column, role):

=========================  =========================  =====================================
``Clothing ID``            ``clothing_id``            categorical feature; the item column
``Age``                    ``age``                    numeric feature (reviewer's age)
``Division Name``          ``division``               categorical (14 rows missing -> NaN)
``Department Name``        ``department``             categorical (14 rows missing -> NaN)
``Class Name``             ``class_name``             categorical (14 rows missing -> NaN)
``Title``                  ``title``                  text (3,810 missing -> ``""``)
``Review Text``            ``review_text``            text (845 missing -> ``""``)
``Rating``                 ``rating``                 label, float 1..5 (mean 4.196)
``Recommended IND``        ``recommended``            label, 0/1 float (82.2 % positive)
``Positive Feedback Count`` ``positive_feedback_count`` numeric column, *not* a feature
(derived)                  ``helpful``                label, 1.0 if feedback count >= 1 (52.4 %)
=========================  =========================  =====================================

``positive_feedback_count`` stays in the frame for analysis but is not a feature: it determines
the ``helpful`` label. Missing categorical values are left as NaN (the preprocessor maps them to
its missing/out-of-vocabulary index). There is no user or timestamp column.
"""
from __future__ import annotations

from importlib import resources

import pandas as pd

from mtlframe.datasets.base import RecDataset, Table, require_file
from mtlframe.datasets.tabular import check_columns

__all__ = ["ClothingReviews"]

CREDIT = ("Women's E-Commerce Clothing Reviews, nicapotato (Kaggle), CC0 1.0 public domain: "
          "https://www.kaggle.com/datasets/nicapotato/womens-ecommerce-clothing-reviews")

_RENAME = {
    "Clothing ID": "clothing_id",
    "Age": "age",
    "Title": "title",
    "Review Text": "review_text",
    "Rating": "rating",
    "Recommended IND": "recommended",
    "Positive Feedback Count": "positive_feedback_count",
    "Division Name": "division",
    "Department Name": "department",
    "Class Name": "class_name",
}
_DTYPES = {
    "Clothing ID": "int64", "Age": "float64", "Rating": "float64", "Recommended IND": "float64",
    "Positive Feedback Count": "float64", "Title": "str", "Review Text": "str",
    "Division Name": "str", "Department Name": "str", "Class Name": "str",
}
FEATURES: dict[str, str] = {
    "clothing_id": "categorical",
    "age": "numeric",
    "division": "categorical",
    "department": "categorical",
    "class_name": "categorical",
    "title": "text",
    "review_text": "text",
}
LABELS: list[str] = ["rating", "recommended", "helpful"]


class ClothingReviews(RecDataset):
    """Women's clothing reviews: predict rating, recommendation and helpfulness of a review.

    Args:
        path: the original Kaggle CSV (``Womens Clothing E-Commerce Reviews.csv``); ``None`` reads
            the copy bundled with mtlframe.

    ``load()`` returns 23,486 rows; labels ``rating`` (regression, 1..5), ``recommended`` and
    ``helpful`` (binary, 0.0/1.0); item column ``clothing_id``.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def load(self) -> Table:
        if self.path is None:
            res = resources.files("mtlframe.datasets") / "data" / "womens_clothing_reviews.csv.gz"
            source = str(res)
            with res.open("rb") as fh:
                raw = pd.read_csv(fh, compression="gzip", usecols=list(_RENAME), dtype=_DTYPES)
        else:
            p = require_file(self.path, "clothing-reviews",
                             "Pass the Kaggle CSV as data.dataset.path, or null for the bundled copy.")
            source = str(p)
            header = pd.read_csv(p, nrows=0)
            check_columns(source, _RENAME, header.columns)
            raw = pd.read_csv(p, usecols=list(_RENAME), dtype=_DTYPES)
        frame = raw.rename(columns=_RENAME)[list(_RENAME.values())]
        frame["title"] = frame["title"].fillna("")
        frame["review_text"] = frame["review_text"].fillna("")
        frame["helpful"] = (frame["positive_feedback_count"] >= 1).astype("float64")
        return Table(frame=frame, features=dict(FEATURES), labels=list(LABELS), item="clothing_id",
                     source=source, credit=CREDIT)
