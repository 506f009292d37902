"""The user's own table: a CSV file (:class:`CsvDataset`) or a Parquet file (:class:`ParquetDataset`).

The recipe declares which columns are model inputs (``features: {column: type}``) and which are
task labels; the loader reads only those columns and checks them before anything is trained:

* a declared column that is not in the file -> :class:`~mtlframe.errors.DataError` naming the file,
  the column, and the closest column names present;
* a ``numeric`` feature with a value that is not a number -> the file, the column, the first bad
  row (1-based data row; for CSV also the file line) and its value;
* a label column that is not numeric -> the same (encode class labels as integers ``0..C-1``).

Empty cells are missing values (NaN): a missing label masks the row for that task; a missing
``numeric`` feature value follows the recipe's ``data.fill_missing`` (an error by default, see
``docs/recipes.md``, "Missing values"). ``categorical``, ``text`` and
``multi_categorical`` and ``sequence`` columns of a CSV are read as strings, so ids such as ``"007"``
keep their leading zeros. A ``sequence`` column holds an ordered id list per row, oldest first
(``"12|7|33"``; an empty cell is an empty history); its options (``max_len``, ``share_with``, side
fields) are the recipe's ``data.sequences.<column>``, and a malformed cell is a
:class:`~mtlframe.errors.DataError` naming the file, column and row (``docs/sequences.md``).

Recipe::

    data:
      dataset:
        name: csv
        path: data/clicks.csv
        features: {user_id: categorical, item_id: categorical, price: numeric, tags: multi_categorical,
                   recent_items: sequence}
        labels: [click, purchase]
        timestamp: ts
        user: user_id
        item: item_id
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from mtlframe.datasets.base import RecDataset, Table, require_file
from mtlframe.errors import DataError, closest
from mtlframe.features import FEATURE_TYPES

__all__ = ["CsvDataset", "ParquetDataset"]

_STRING_TYPES = ("categorical", "text", "multi_categorical", "sequence")


def check_columns(source: str, wanted: Iterable[str], present: Iterable[str], role: str = "") -> None:
    """Raise a :class:`DataError` listing every column of ``wanted`` not in ``present``.

    Each missing column is named with its closest matches among ``present``.
    """
    present = list(present)
    rows = []
    for col in dict.fromkeys(wanted):
        if col not in present:
            near = closest(col, present)
            hint = f" (closest: {', '.join(repr(c) for c in near)})" if near else ""
            rows.append(f"'{col}'{hint}")
    if rows:
        what = f"{role} column" if role else "column"
        plural = "s" if len(rows) > 1 else ""
        raise DataError(f"{source}: declared {what}{plural} {', '.join(rows)} not found in the file; "
                        f"columns present: {present}")


def to_numeric_column(values: pd.Series, source: str, column: str, role: str,
                      line_offset: int | None = None) -> pd.Series:
    """Return ``values`` as float64 (int / float / bool kept as numbers; NaN where empty).

    Raises:
        DataError: naming ``source``, ``column``, the first non-numeric row (1-based data row,
            plus the file line when ``line_offset`` is given) and its value.
    """
    if pd.api.types.is_bool_dtype(values):
        return values.astype("float64")
    if pd.api.types.is_numeric_dtype(values):
        return values
    coerced = pd.to_numeric(values, errors="coerce")
    bad = coerced.isna().to_numpy() & values.notna().to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        where = f"row {pos + 1}"
        if line_offset is not None:
            where += f" (line {pos + line_offset} of the file)"
        n_bad = int(bad.sum())
        fix = ("encode it as numbers (0/1 for a binary task, 0..C-1 for multiclass)"
               if role == "label" else "fix the data, or declare the column as categorical or text")
        raise DataError(f"{source}: {role} column '{column}' must be numeric, but {where} holds "
                        f"{values.iloc[pos]!r} ({n_bad} non-numeric value{'s' if n_bad > 1 else ''} "
                        f"in all); {fix}.")
    return coerced.astype("float64")


class _UserTable(RecDataset):
    """Shared checks of :class:`CsvDataset` and :class:`ParquetDataset`."""

    _line_offset: int | None = None

    def __init__(self, path: str, features: dict[str, str], labels: list[str],
                 timestamp: str | None, user: str | None, item: str | None) -> None:
        self.path = str(path)
        self.features = dict(features)
        self.labels = list(labels)
        self.timestamp = timestamp
        self.user = user
        self.item = item
        #: further columns to load as they are, when the file has them (the data module adds
        #: ``metrics_group``'s column and the sources of ``data.sequences``, and names a missing one
        #: at its recipe key)
        self.extra_columns: list[str] = []
        self._present: list[str] | None = None
        for col, typ in self.features.items():
            if typ not in FEATURE_TYPES:
                near = closest(typ, FEATURE_TYPES, n=1)
                hint = f" Did you mean '{near[0]}'?" if near else ""
                raise DataError(f"{self.path}: feature column '{col}' has type '{typ}'; types are "
                                f"{', '.join(FEATURE_TYPES)}.{hint}")
        if not self.labels:
            raise DataError(f"{self.path}: no label columns declared; list at least one in `labels`")

    def _columns(self) -> list[str]:
        extra = [c for c in self.extra_columns if self._present is None or c in self._present]
        declared = [c for c in (self.timestamp, self.user, self.item) if c]
        return list(dict.fromkeys([*self.features, *self.labels, *declared, *extra]))

    def _check_present(self, present: list[str]) -> None:
        self._present = list(present)
        check_columns(self.path, self._columns(), present)

    def _finish(self, frame: pd.DataFrame) -> Table:
        for col, typ in self.features.items():
            if typ == "numeric":
                frame[col] = to_numeric_column(frame[col], self.path, col, "numeric feature",
                                               self._line_offset)
        for col in self.labels:
            frame[col] = to_numeric_column(frame[col], self.path, col, "label", self._line_offset)
        ts = self.timestamp
        if ts and not (pd.api.types.is_numeric_dtype(frame[ts])
                       or pd.api.types.is_datetime64_any_dtype(frame[ts])):
            try:
                frame[ts] = pd.to_datetime(frame[ts])
            except (ValueError, TypeError) as exc:
                raise DataError(f"{self.path}: timestamp column '{ts}' is neither numeric nor a "
                                f"date/time string ({exc})") from None
        return Table(frame=frame, features=dict(self.features), labels=list(self.labels),
                     timestamp=ts, user=self.user, item=self.item, source=self.path)

    def _string_dtypes(self) -> dict[str, str]:
        cols = {c for c, t in self.features.items() if t in _STRING_TYPES}
        cols |= {c for c in (self.user, self.item) if c and self.features.get(c) != "numeric"}
        return {c: "str" for c in cols}


class CsvDataset(_UserTable):
    """A delimited text file with a header row.

    Args:
        path: the file (may be compressed: ``.gz``, ``.zip``, ``.bz2``, ``.xz``, ``.zst``).
        features: ``column -> type`` of the model inputs; types are ``categorical``, ``numeric``,
            ``text``, ``multi_categorical`` (``|``-separated tokens), ``sequence`` (``|``-separated
            ids, oldest first; see ``data.sequences``).
        labels: columns usable as task labels (numeric; empty cells are missing labels, as is a
            task's ``missing_label`` value).
        timestamp: event-time column (numbers or date/time strings), enables the ``time`` split.
        user: user-id column.
        item: item-id column (negative sampling, cold-start split).
        sep: field separator (``","``; ``"\\t"`` for TSV).
    """

    _line_offset = 2  # header is line 1, data row 1 is line 2

    def __init__(self, path: str, features: dict[str, str], labels: list[str],
                 timestamp: str | None = None, user: str | None = None, item: str | None = None,
                 sep: str = ",") -> None:
        super().__init__(path, features, labels, timestamp, user, item)
        self.sep = sep

    def load(self) -> Table:
        p = require_file(self.path, "csv dataset", "Check data.dataset.path in the recipe.")
        try:
            header = pd.read_csv(p, sep=self.sep, nrows=0)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"{p}: cannot read it as CSV with sep={self.sep!r}: {exc}") from None
        self._check_present(list(header.columns))
        try:
            frame = pd.read_csv(p, sep=self.sep, usecols=self._columns(),
                                dtype=self._string_dtypes())
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataError(f"{p}: cannot parse it as CSV with sep={self.sep!r}: {exc}") from None
        return self._finish(frame[self._columns()])


class ParquetDataset(_UserTable):
    """A Parquet file (needs ``pyarrow``: ``pip install pyarrow``); only the declared columns are read.

    Args:
        path: the ``.parquet`` file.
        features: ``column -> type`` of the model inputs; types are ``categorical``, ``numeric``,
            ``text``, ``multi_categorical`` (``|``-separated tokens), ``sequence`` (``|``-separated
            ids, oldest first; see ``data.sequences``).
        labels: columns usable as task labels (numeric; nulls are missing labels).
        timestamp: event-time column (numbers, dates or date/time strings), enables the ``time`` split.
        user: user-id column.
        item: item-id column (negative sampling, cold-start split).
    """

    def __init__(self, path: str, features: dict[str, str], labels: list[str],
                 timestamp: str | None = None, user: str | None = None,
                 item: str | None = None) -> None:
        super().__init__(path, features, labels, timestamp, user, item)

    def load(self) -> Table:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{self.path}: reading Parquet needs pyarrow, which is not installed. "
                            "Run `pip install pyarrow` (or `pip install 'mtlframe[parquet]'`).") from None
        p = require_file(self.path, "parquet dataset", "Check data.dataset.path in the recipe.")
        try:
            present = list(pq.read_schema(p).names)
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError on a bad file
            raise DataError(f"{p}: cannot read it as Parquet: {exc}") from None
        self._check_present(present)
        frame = pd.read_parquet(p, columns=self._columns(), engine="pyarrow")
        return self._finish(frame.reset_index(drop=True))

