"""The preprocessor: fitted on the training split only, then applied to every split and to
``predict`` inputs.

* ``categorical``: vocabulary of the training values seen at least ``min_count`` times, in order
  of frequency; id 0 is the out-of-vocabulary bucket, which also takes missing values (NaN / empty).
  Ids come out as int32 (int64 only past 2^31 - 1 categories). The vocabulary of an integer
  column is kept as an int64 array (8 bytes per entry, not one Python string each).
* ``multi_categorical``: ``|``-separated tokens; id 0 is padding, 1 out-of-vocabulary, known
  tokens from 2; padded to the longest training row (at most ``max_multi_len``).
* ``numeric``: standardized with the training mean and standard deviation; a missing value
  becomes 0, i.e. the training mean (a constant column gets std 1).
* ``text``: kept raw (missing -> ``""``; other cells as they are, so a text encoder can count
  non-string cells) for text encoders to featurize.
* memory: :meth:`Preprocessor.fit` and :meth:`Preprocessor.transform` take ``rows`` (positions
  into the frame) so splits need no copied frames, and work one column at a time (temporaries are
  one column's size); :meth:`Preprocessor.transform_splits` can delete each column from the frame
  once every split has it.
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


def _int_vocab(vocab: Sequence[str] | np.ndarray) -> np.ndarray | None:
    """The vocabulary as int64 when every entry is a canonical integer string, else ``None``."""
    if isinstance(vocab, np.ndarray):
        return vocab
    try:
        ints = np.array([int(v) for v in vocab], dtype=np.int64)
    except (ValueError, OverflowError):
        return None
    if any(str(i) != v for i, v in zip(ints.tolist(), vocab)):
        return None
    return ints


def _str_vocab(vocab: Sequence[str] | np.ndarray) -> list[str]:
    return [str(v) for v in vocab.tolist()] if isinstance(vocab, np.ndarray) else list(vocab)


def _rows(series: pd.Series, rows: np.ndarray | None) -> pd.Series:
    """``series`` at positions ``rows`` (all rows when ``None``), index reset; copies one column at most."""
    if rows is None:
        return series
    return pd.Series(series.to_numpy()[rows], name=series.name, copy=False) if not isinstance(
        series.dtype, pd.api.extensions.ExtensionDtype) else series.iloc[rows].reset_index(drop=True)


def _row_number(pos: int, rows: np.ndarray | None) -> int:
    """1-based row of the whole frame for position ``pos`` of the subset ``rows``."""
    return int(rows[pos] if rows is not None else pos) + 1


def id_dtype(cardinality: int) -> torch.dtype:
    """int32 for ids below 2^31 - 1, else int64."""
    return torch.int32 if cardinality < 2**31 - 1 else torch.int64


class Preprocessor:
    """Fits vocabularies and numeric statistics on the train split and transforms tables to tensors.

    Args:
        features: ``column -> type`` of the input features to use.
        labels: one :class:`LabelSpec` per task.
        min_count: categories seen fewer times in train map to the out-of-vocabulary id.
        max_multi_len: cap on the padded length of multi-categorical features.

    Attributes (after :meth:`fit`):
        vocab: ``column -> vocabulary`` in frequency order, id ``i + 1`` for entry ``i``: a list of
            strings, or an int64 numpy array for an integer column.
    """

    def __init__(self, features: Mapping[str, str], labels: Sequence[LabelSpec], min_count: int = 1,
                 max_multi_len: int = 64) -> None:
        self.features = dict(features)
        self.labels = list(labels)
        self.min_count = min_count
        self.max_multi_len = max_multi_len
        self.vocab: dict[str, list[str] | np.ndarray] = {}
        self.stats: dict[str, tuple[float, float]] = {}
        self.multi_len: dict[str, int] = {}
        self.classes: dict[str, list[str]] = {}
        self.fitted = False

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, frame: pd.DataFrame, source: str = "data", rows: np.ndarray | None = None) -> Preprocessor:
        """Fit on the training rows: ``frame``, or its rows at positions ``rows`` (no frame copy).

        Raises:
            DataError: a numeric column holds a non-numeric value; a multiclass label has < 2 classes.
        """
        for col, typ in self.features.items():
            series = _rows(frame[col], rows)
            if typ == "categorical":
                ints = _as_int(series)
                values = pd.Series(ints, copy=False) if ints is not None else _as_str(series)
                counts = values.value_counts(dropna=True)
                counts = counts[counts >= self.min_count]
                self.vocab[col] = (np.array(counts.index, dtype=np.int64) if ints is not None
                                   else [str(v) for v in counts.index])
            elif typ == "multi_categorical":
                tokens = _as_str(series).dropna().str.split("|")
                lengths = tokens.map(len)
                counts = tokens.explode().str.strip().value_counts()
                counts = counts[(counts >= self.min_count) & (counts.index != "")]
                self.vocab[col] = [str(v) for v in counts.index]
                self.multi_len[col] = int(min(max(int(lengths.max()) if len(lengths) else 1, 1), self.max_multi_len))
            elif typ == "numeric":
                values = self._numeric(series, col, source)
                finite = values[np.isfinite(values)]
                mean = float(finite.mean()) if finite.size else 0.0
                std = float(finite.std()) if finite.size > 1 else 1.0
                self.stats[col] = (mean, std if std > 1e-12 else 1.0)
        for lab in self.labels:
            if lab.type == "multiclass":
                vals = _as_str(_rows(frame[lab.column], rows)).dropna()
                self.classes[lab.task] = sorted(vals.unique().tolist())
                if len(self.classes[lab.task]) < 2:
                    raise DataError(f"{source}: multiclass label column '{lab.column}' (task '{lab.task}') has "
                                    f"{len(self.classes[lab.task])} class(es) in the training split; it needs two or more.")
        self.fitted = True
        return self

    @staticmethod
    def _numeric(series: pd.Series, col: str, source: str, rows: np.ndarray | None = None) -> np.ndarray:
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            return series.to_numpy(dtype=np.float64, na_value=np.nan)
        coerced = pd.to_numeric(series.replace("", np.nan), errors="coerce")
        bad = coerced.isna() & series.notna() & (series.astype("string").str.strip() != "")
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{source}: numeric column '{col}' has a non-numeric value {series.iloc[pos]!r} at "
                            f"row {_row_number(pos, rows)}; clean the column or declare it categorical.")
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
    def transform(self, frame: pd.DataFrame, source: str = "data", with_labels: bool = True,
                  rows: np.ndarray | None = None) -> dict[str, Any]:
        """Turn a table into columns: ``name -> [N]`` / ``[N, L]`` tensors (text: numpy strings).

        Categorical ids are int32 ``[N]`` (int64 past 2^31 - 1 categories), multi-categorical
        int64 ``[N, L]``, numeric float32 ``[N]``. Labels come as ``label/<task>`` float32 ``[N]``
        (multiclass: int64, -1 = missing) and ``mask/<task>`` bool ``[N]``. With ``rows``
        (positions into ``frame``) only those rows are transformed, without copying the frame.

        Raises:
            DataError: a required column is missing (named), or a value cannot be parsed.
        """
        self._check_columns(frame, source, with_labels)
        out: dict[str, Any] = {}
        for col in self.features:
            out.update(self.transform_column(frame, col, source, rows))
        if with_labels:
            out.update(self.transform_labels(frame, source, rows))
        return out

    def _check_columns(self, frame: pd.DataFrame, source: str, with_labels: bool) -> None:
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

    def transform_column(self, frame: pd.DataFrame, col: str, source: str = "data",
                         rows: np.ndarray | None = None) -> dict[str, Any]:
        """The output of one input column (see :meth:`transform`): ``{col: values}``, or the
        ``label/`` and ``mask/`` entries of every task whose label is ``col``."""
        out: dict[str, Any] = {}
        typ = self.features.get(col)
        series = _rows(frame[col], rows)
        if typ == "categorical":
            vocab = self.vocab[col]
            ints = _as_int(series)
            int_vocab = _int_vocab(vocab) if ints is not None else None
            if int_vocab is not None:  # id columns: one hash lookup, no strings
                codes = pd.Index(int_vocab).get_indexer(ints)
            else:
                codes = pd.Categorical(_as_str(series), categories=_str_vocab(vocab)).codes
            dtype = id_dtype(len(vocab) + 1)
            ids = torch.from_numpy(codes.astype(np.int32 if dtype == torch.int32 else np.int64))
            out[col] = ids.add_(1)
        elif typ == "multi_categorical":
            out[col] = self._multi(series, col)
        elif typ == "numeric":
            values = self._numeric(series, col, source, rows)
            mean, std = self.stats[col]
            z = (values - mean) / std
            z[~np.isfinite(z)] = 0.0
            out[col] = torch.from_numpy(z.astype(np.float32))
        elif typ is not None:  # text
            values = series.to_numpy(dtype=object, copy=True)  # cells as they are: text encoders count non-strings
            values[pd.isna(values)] = ""
            out[col] = values
        for lab in self.labels:
            if lab.column == col:
                out.update(self._label(series, lab, source, rows))
        return out

    def transform_splits(self, frame: pd.DataFrame, index: Mapping[str, np.ndarray], source: str = "data",
                         release: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
        """:meth:`transform` of several row subsets of one frame, column by column.

        Args:
            frame: the whole table.
            index: ``split -> row positions``.
            source: for error messages.
            release: columns to delete from ``frame`` as soon as every split has them, so the
                frame and the transformed columns are not both held in full (peak: the frame plus
                one column).

        Returns:
            ``split -> columns``, as :meth:`transform` gives for ``frame`` at those rows.
        """
        self._check_columns(frame, source, True)
        out: dict[str, dict[str, Any]] = {k: {} for k in index}
        columns = list(dict.fromkeys([*self.features, *(lab.column for lab in self.labels)]))
        drop = set(release)
        for col in columns:
            for k, rows in index.items():
                out[k].update(self.transform_column(frame, col, source, rows))
            if col in drop:
                del frame[col]
        order = [*self.features, *(key for lab in self.labels for key in (label_key(lab.task), mask_key(lab.task)))]
        return {k: {c: cols[c] for c in order} for k, cols in out.items()}

    def _multi(self, series: pd.Series, col: str) -> torch.Tensor:
        width = self.multi_len[col]
        tokens = _as_str(series).fillna("").str.split("|")
        flat = tokens.explode().str.strip()
        row = np.repeat(np.arange(len(tokens)), tokens.map(len).to_numpy(dtype=np.int64))
        codes = pd.Categorical(flat, categories=self.vocab[col]).codes.astype(np.int64) + 2  # unknown -> 1
        codes[(flat == "").to_numpy() | flat.isna().to_numpy()] = 0
        pos = pd.Series(row).groupby(row).cumcount().to_numpy()
        keep = (pos < width) & (codes > 0)
        out = np.zeros((len(tokens), width), dtype=np.int64)
        out[row[keep], pos[keep]] = codes[keep]
        return torch.from_numpy(out)

    def transform_labels(self, frame: pd.DataFrame, source: str = "data",
                         rows: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for lab in self.labels:
            out.update(self._label(_rows(frame[lab.column], rows), lab, source, rows))
        return out

    def _label(self, series: pd.Series, lab: LabelSpec, source: str,
               rows: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Label and mask of one task; ``series`` holds the frame's rows ``rows`` (all when ``None``),
        which error messages translate back to the frame's row numbers."""
        if lab.type == "multiclass":
            codes = pd.Categorical(_as_str(series), categories=self.classes[lab.task]).codes.astype(np.int64)
            y = torch.from_numpy(codes)
            mask = y >= 0
        else:
            values = self._numeric(series, lab.column, source, rows)
            if lab.type == "binary":
                bad = np.isfinite(values) & (values != 0) & (values != 1)
                if bad.any():
                    pos = int(np.flatnonzero(bad)[0])
                    raise DataError(f"{source}: binary label column '{lab.column}' (task '{lab.task}') has value "
                                    f"{float(values[pos]):g} at row {_row_number(pos, rows)}; binary labels must be "
                                    "0, 1 or missing. "
                                    "Use a regression task, or derive a 0/1 column.")
            y = torch.from_numpy(values.astype(np.float32))
            mask = torch.isfinite(y)
        return {label_key(lab.task): y, mask_key(lab.task): mask}

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain state for checkpoints (loadable with ``torch.load(weights_only=True)``): integer
        vocabularies as int64 tensors, the others as lists of strings."""
        vocab = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in self.vocab.items()}
        return {"features": self.features, "labels": [vars(lab) for lab in self.labels],
                "min_count": self.min_count, "max_multi_len": self.max_multi_len, "vocab": vocab,
                "stats": {k: list(v) for k, v in self.stats.items()}, "multi_len": self.multi_len,
                "classes": self.classes}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "Preprocessor":
        pre = cls(state["features"], [LabelSpec(**d) for d in state["labels"]], state["min_count"],
                  state["max_multi_len"])
        pre.vocab = {k: v.numpy().astype(np.int64) if isinstance(v, torch.Tensor) else list(v)
                     for k, v in state["vocab"].items()}
        pre.stats = {k: (float(v[0]), float(v[1])) for k, v in state["stats"].items()}
        pre.multi_len = dict(state["multi_len"])
        pre.classes = {k: list(v) for k, v in state["classes"].items()}
        pre.fitted = True
        return pre
