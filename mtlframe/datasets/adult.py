"""UCI Adult (census income), with the two tasks of the MMoE paper (bundled).

Source: UCI Machine Learning Repository, dataset 2 "Adult" (Becker & Kohavi, 1996),
https://archive.ics.uci.edu/dataset/2/adult — licence CC BY 4.0; credit: Barry Becker and
Ronny Kohavi, UCI ML Repository. The train (32,561) and test (16,281) files are joined into one
CSV with a header row (48,842 rows), shipped gzipped as ``mtlframe/datasets/data/adult.csv.gz``.

Tasks, as in Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD 2018, sec. 5.2:

* ``income``: 1.0 if income is ``>50K`` (the test file's trailing ``.`` is stripped), else 0.0 —
  23.93 % positive.
* ``never_married``: 1.0 if marital status is ``Never-married``, else 0.0 — 33.00 % positive.

Inputs are every other column except ``marital-status`` (removed as in the paper, since it *is*
the second label). ``relationship`` stays an input as in the paper, although it is strongly
informative of ``never_married`` (``Husband``/``Wife`` imply married; 89 % of ``Own-child`` rows
are never married) — drop it from the recipe's encoders for a harder auxiliary task.

Columns are renamed to snake_case (``educational-num`` -> ``educational_num``, ...). ``?`` marks
a missing value in the source (workclass 2,799 rows, occupation 2,809, native-country 857); it is
read as NaN, which the preprocessor maps to its missing/out-of-vocabulary index (not a category
of its own). The original UCI spellings ``education-num`` and ``sex`` are accepted too.
"""
from __future__ import annotations

from importlib import resources

import pandas as pd

from mtlframe.datasets.base import RecDataset, Table, require_file
from mtlframe.datasets.tabular import check_columns

__all__ = ["Adult"]

CREDIT = ("Adult (census income), Barry Becker and Ronny Kohavi, UCI Machine Learning Repository, "
          "CC BY 4.0: https://archive.ics.uci.edu/dataset/2/adult")

CATEGORICAL = ["workclass", "education", "occupation", "relationship", "race", "gender",
               "native_country"]
NUMERIC = ["age", "fnlwgt", "educational_num", "capital_gain", "capital_loss", "hours_per_week"]
FEATURES: dict[str, str] = {**{c: "numeric" for c in NUMERIC}, **{c: "categorical" for c in CATEGORICAL}}
LABELS: list[str] = ["income", "never_married"]

_ALIASES = {"education-num": "educational-num", "sex": "gender"}
_SOURCE_COLUMNS = [c.replace("_", "-") for c in NUMERIC + CATEGORICAL] + ["marital-status", "income"]
_DTYPES = {**{c.replace("_", "-"): "float64" for c in NUMERIC},
           **{c.replace("_", "-"): "str" for c in CATEGORICAL},
           "marital-status": "str", "income": "str"}


class Adult(RecDataset):
    """UCI Adult: predict income > 50K and never-married from census attributes.

    Args:
        path: a CSV in the bundled layout (header row with ``age, workclass, fnlwgt, education,
            educational-num, marital-status, occupation, relationship, race, gender,
            capital-gain, capital-loss, hours-per-week, native-country, income``); ``None``
            reads the copy bundled with mtlframe.

    ``load()`` returns 48,842 rows; binary labels ``income`` and ``never_married``; 6 numeric and
    7 categorical features; no user, item or timestamp column.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def load(self) -> Table:
        if self.path is None:
            res = resources.files("mtlframe.datasets") / "data" / "adult.csv.gz"
            source = str(res)
            with res.open("rb") as fh:
                raw = pd.read_csv(fh, compression="gzip", na_values=["?"], dtype=_DTYPES,
                                  usecols=_SOURCE_COLUMNS)
        else:
            p = require_file(self.path, "adult",
                             "Pass a CSV in the bundled layout as data.dataset.path, or null for "
                             "the bundled copy.")
            source = str(p)
            header = [c.strip() for c in pd.read_csv(p, nrows=0).columns]
            renamed = [_ALIASES.get(c, c) for c in header]
            check_columns(source, _SOURCE_COLUMNS, renamed)
            raw = pd.read_csv(p, header=0, names=renamed, na_values=["?"], skipinitialspace=True,
                              dtype=_DTYPES, usecols=_SOURCE_COLUMNS)
        raw.columns = [c.replace("-", "_") for c in raw.columns]
        income = raw["income"].str.strip().str.rstrip(".")
        frame = raw[NUMERIC + CATEGORICAL].copy()
        frame["income"] = income.str.startswith(">50K").astype("float64")
        frame["never_married"] = (raw["marital_status"].str.strip() == "Never-married").astype("float64")
        return Table(frame=frame, features=dict(FEATURES), labels=list(LABELS), source=source,
                     credit=CREDIT)
