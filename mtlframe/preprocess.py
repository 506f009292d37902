"""The preprocessor: fitted on the training split only, then applied to every split and to
``predict`` inputs.

* ``categorical``: vocabulary of the training values seen at least ``min_count`` times, in order
  of frequency; id 0 is the out-of-vocabulary bucket, which also takes missing values (NaN / empty).
* ``multi_categorical``: ``|``-separated tokens; id 0 is padding, 1 out-of-vocabulary, known
  tokens from 2; padded to the longest training row (at most ``max_multi_len``).
* ``numeric``: standardized with the training mean and standard deviation; a missing value
  becomes 0, i.e. the training mean (a constant column gets std 1).
* ``text``: kept raw (strings, NaN -> ``""``) for text encoders to featurize.
* labels: ``binary`` must be 0/1, ``regression`` any number, missing = NaN (excluded from that
  task's loss and metrics); ``multiclass`` labels get a class vocabulary from the training split,
  and an unseen class counts as missing.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from mtlframe.errors import DataError, closest
from mtlframe.features import FeatureInfo, label_key, mask_key


@dataclass(frozen=True)
class LabelSpec:
    task: str
    column: str
    type: str


def _as_str(series: pd.Series) -> pd.Series:
    """Categorical values as strings; NaN/None/'' stay missing. ``3`` and ``3.0`` map to ``"3"``."""
    s = series
    if pd.api.types.is_float_dtype(s):
        as_int = s.dropna()
        if len(as_int) and np.all(np.equal(np.mod(as_int.to_numpy(), 1), 0)):
            s = s.astype("Int64")
    out = s.astype("string").str.strip()
    return out.mask(out == "")


def _as_int(series: pd.Series) -> np.ndarray | None:
    """A numpy-integer column as int64 (it cannot hold missing values), else ``None``.

    The fast path for id columns: it skips the string conversion of :func:`_as_str` and gives the
    same vocabulary (``str(int)`` keys, same frequency order) and the same ids."""
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return None
    if pd.api.types.is_integer_dtype(series) and not isinstance(series.dtype, pd.api.extensions.ExtensionDtype):
        return series.to_numpy(dtype=np.int64, copy=False)
    return None


def _int_vocab(vocab: Sequence[str]) -> np.ndarray | None:
    """The vocabulary as int64 when every entry is a canonical integer string, else ``None``."""
    try:
        ints = np.array([int(v) for v in vocab], dtype=np.int64)
    except (ValueError, OverflowError):
        return None
    if any(str(i) != v for i, v in zip(ints.tolist(), vocab)):
        return None
    return ints


class Preprocessor:
    """Fits vocabularies and numeric statistics on the train split and transforms tables to tensors.

    Args:
        features: ``column -> type`` of the input features to use.
        labels: one :class:`LabelSpec` per task.
        min_count: categories seen fewer times in train map to the out-of-vocabulary id.
        max_multi_len: cap on the padded length of multi-categorical features.
    """

    def __init__(self, features: Mapping[str, str], labels: Sequence[LabelSpec], min_count: int = 1,
                 max_multi_len: int = 64) -> None:
        self.features = dict(features)
        self.labels = list(labels)
        self.min_count = min_count
        self.max_multi_len = max_multi_len
        self.vocab: dict[str, list[str]] = {}
        self.stats: dict[str, tuple[float, float]] = {}
        self.multi_len: dict[str, int] = {}
        self.classes: dict[str, list[str]] = {}
        self.fitted = False

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, frame: pd.DataFrame, source: str = "data") -> "Preprocessor":
        """Fit on the training rows. Raises :class:`DataError` on a bad numeric column."""
        for col, typ in self.features.items():
            if typ == "categorical":
                ints = _as_int(frame[col])
                values = pd.Series(ints, copy=False) if ints is not None else _as_str(frame[col])
                counts = values.value_counts(dropna=True)
                counts = counts[counts >= self.min_count]
                self.vocab[col] = [str(v) for v in counts.index]
            elif typ == "multi_categorical":
                tokens = _as_str(frame[col]).dropna().str.split("|")
                lengths = tokens.map(len)
                counts = tokens.explode().str.strip().value_counts()
                counts = counts[(counts >= self.min_count) & (counts.index != "")]
                self.vocab[col] = [str(v) for v in counts.index]
                self.multi_len[col] = int(min(max(int(lengths.max()) if len(lengths) else 1, 1), self.max_multi_len))
            elif typ == "numeric":
                values = self._numeric(frame, col, source)
                finite = values[np.isfinite(values)]
                mean = float(finite.mean()) if finite.size else 0.0
                std = float(finite.std()) if finite.size > 1 else 1.0
                self.stats[col] = (mean, std if std > 1e-12 else 1.0)
        for lab in self.labels:
            if lab.type == "multiclass":
                vals = _as_str(frame[lab.column]).dropna()
                self.classes[lab.task] = sorted(vals.unique().tolist())
                if len(self.classes[lab.task]) < 2:
                    raise DataError(f"{source}: multiclass label column '{lab.column}' (task '{lab.task}') has "
                                    f"{len(self.classes[lab.task])} class(es) in the training split; it needs two or more.")
        self.fitted = True
        return self

    @staticmethod
    def _numeric(frame: pd.DataFrame, col: str, source: str) -> np.ndarray:
        series = frame[col]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            return series.to_numpy(dtype=np.float64, na_value=np.nan)
        coerced = pd.to_numeric(series.replace("", np.nan), errors="coerce")
        bad = coerced.isna() & series.notna() & (series.astype("string").str.strip() != "")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{source}: numeric column '{col}' has a non-numeric value {series.iloc[row]!r} at "
                            f"row {row + 1}; clean the column or declare it categorical.")
        return coerced.to_numpy(dtype=np.float64, na_value=np.nan)

    # -- information -------------------------------------------------------------------------
    def feature_info(self) -> dict[str, FeatureInfo]:
        """Fitted feature descriptions, injected into encoders."""
        info = {}
        for col, typ in self.features.items():
            if typ == "categorical":
                info[col] = FeatureInfo(col, typ, cardinality=len(self.vocab[col]) + 1)
            elif typ == "multi_categorical":
                info[col] = FeatureInfo(col, typ, cardinality=len(self.vocab[col]) + 2, max_len=self.multi_len[col])
            else:
                info[col] = FeatureInfo(col, typ)
        return info

    # -- transforming ------------------------------------------------------------------------
    def transform(self, frame: pd.DataFrame, source: str = "data", with_labels: bool = True) -> dict[str, Any]:
        """Turn a table into columns: ``name -> [N]`` / ``[N, L]`` tensors (text: numpy strings).

        Labels come as ``label/<task>`` float32 ``[N]`` (multiclass: int64, -1 = missing) and
        ``mask/<task>`` bool ``[N]``.

        Raises:
            DataError: a required column is missing (named), or a value cannot be parsed.
        """
        if not self.fitted:
            raise RuntimeError("Preprocessor.transform called before fit")
        needed = list(self.features) + ([lab.column for lab in self.labels] if with_labels else [])
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            col = missing[0]
            near = closest(col, frame.columns)
            raise DataError(f"{source}: required column '{col}' is missing"
                            + (f" (did you mean '{near[0]}'?)" if near else "")
                            + f". Missing: {', '.join(missing)}. The model was trained with columns: "
                            f"{', '.join(self.features)}.")
        out: dict[str, Any] = {}
        for col, typ in self.features.items():
            if typ == "categorical":
                ints = _as_int(frame[col])
                int_vocab = _int_vocab(self.vocab[col]) if ints is not None else None
                if int_vocab is not None:  # id columns: one hash lookup, no strings
                    codes = pd.Index(int_vocab).get_indexer(ints)
                else:
                    codes = pd.Categorical(_as_str(frame[col]), categories=self.vocab[col]).codes
                out[col] = torch.from_numpy((codes.astype(np.int64) + 1))
            elif typ == "multi_categorical":
                out[col] = self._multi(frame[col], col)
            elif typ == "numeric":
                values = self._numeric(frame, col, source)
                mean, std = self.stats[col]
                z = (values - mean) / std
                z[~np.isfinite(z)] = 0.0
                out[col] = torch.from_numpy(z.astype(np.float32))
            else:  # text
                out[col] = frame[col].fillna("").astype(str).to_numpy(dtype=object)
        if with_labels:
            out.update(self.transform_labels(frame, source))
        return out

    def _multi(self, series: pd.Series, col: str) -> torch.Tensor:
        width = self.multi_len[col]
        tokens = _as_str(series).fillna("").str.split("|")
        flat = tokens.explode().str.strip()
        row = np.repeat(np.arange(len(tokens)), tokens.map(len).to_numpy())
        codes = pd.Categorical(flat, categories=self.vocab[col]).codes.astype(np.int64) + 2  # unknown -> 1
        codes[(flat == "").to_numpy() | flat.isna().to_numpy()] = 0
        pos = pd.Series(row).groupby(row).cumcount().to_numpy()
        keep = (pos < width) & (codes > 0)
        out = np.zeros((len(tokens), width), dtype=np.int64)
        out[row[keep], pos[keep]] = codes[keep]
        return torch.from_numpy(out)

    def transform_labels(self, frame: pd.DataFrame, source: str = "data") -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for lab in self.labels:
            series = frame[lab.column]
            if lab.type == "multiclass":
                codes = pd.Categorical(_as_str(series), categories=self.classes[lab.task]).codes.astype(np.int64)
                y = torch.from_numpy(codes)
                mask = y >= 0
            else:
                values = self._numeric(frame, lab.column, source)
                if lab.type == "binary":
                    bad = np.isfinite(values) & (values != 0) & (values != 1)
                    if bad.any():
                        row = int(np.flatnonzero(bad)[0])
                        raise DataError(f"{source}: binary label column '{lab.column}' (task '{lab.task}') has value "
                                        f"{float(values[row]):g} at row {row + 1}; binary labels must be 0, 1 or missing. "
                                        "Use a regression task, or derive a 0/1 column.")
                y = torch.from_numpy(values.astype(np.float32))
                mask = torch.isfinite(y)
            out[label_key(lab.task)] = y
            out[mask_key(lab.task)] = mask
        return out

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"features": self.features, "labels": [vars(lab) for lab in self.labels],
                "min_count": self.min_count, "max_multi_len": self.max_multi_len, "vocab": self.vocab,
                "stats": {k: list(v) for k, v in self.stats.items()}, "multi_len": self.multi_len,
                "classes": self.classes}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "Preprocessor":
        pre = cls(state["features"], [LabelSpec(**d) for d in state["labels"]], state["min_count"],
                  state["max_multi_len"])
        pre.vocab = {k: list(v) for k, v in state["vocab"].items()}
        pre.stats = {k: (float(v[0]), float(v[1])) for k, v in state["stats"].items()}
        pre.multi_len = dict(state["multi_len"])
        pre.classes = {k: list(v) for k, v in state["classes"].items()}
        pre.fitted = True
        return pre
