"""The preprocessor: fitted on the training split only, then applied to every split and to
``predict`` inputs.

* ``categorical``: vocabulary of the training values seen at least ``min_count`` times, in order
  of frequency; id 0 is the out-of-vocabulary bucket, which also takes missing values (NaN / empty).
  Ids come out as int32 (int64 only past 2^31 - 1 categories). The vocabulary of an integer
  column is kept as an int64 array (8 bytes per entry, not one Python string each).
  ``max_vocab`` keeps the most frequent entries only (ties: the vocabulary order); ``min_count``
  and ``max_vocab`` can be set per column.
* hashed (``hash_buckets: {column: N}``, categorical and multi-categorical): no vocabulary; a
  value's code is ``1 + stable_hash(canonical(value)) mod N`` (0 stays missing / padding), see
  :func:`hash_codes` for the canonical form and the hash; the table has ``N + 1`` rows
  (categorical and multi-categorical alike: no out-of-vocabulary row). The fit reports the
  distinct values seen and the expected share of them sharing a bucket (:attr:`Preprocessor.hash_report`)
  and warns above :data:`HASH_WARN_SHARE`.
* ``multi_categorical``: ``|``-separated tokens; id 0 is padding, 1 out-of-vocabulary, known
  tokens from 2; padded to the longest training row (at most ``max_multi_len``).
* ``numeric``: standardized with the training mean and standard deviation (a constant column gets
  std 1). A missing value (NaN, empty, ``inf`` or ``-inf``: infinities are missing values) is an
  error naming the column, the count and the rows, unless the column has a declared fill
  (``fill_missing``: ``mean``, ``median``, ``zero`` or a number; the value is fitted on the
  training split and saved). A value beyond the float32 range (|x| > 3.4e38, e.g. ``1e300``) is
  an error naming the row, unless the column has a declared ``clip`` range ``[low, high]``, which
  then bounds every value of the column. Fills and clips are counted in :attr:`Preprocessor.reports`.
* ``sequence`` (see ``docs/sequences.md``): an ordered id list per row, most recent last: a
  dataset column of ``|``-separated tokens (``"12|7|33"``, oldest first; an empty cell is an empty
  history), or a history built from the log (:mod:`mtlframe.history`, ``SequenceSpec.of``).
  Out: int32 ``[N, L]`` pre-padded (padding at the front, most recent in the last column),
  ``L = max_len``, **0 = padding, c + 1 = code c of the id space** (1 = out of vocabulary). The id
  space is the feature's own vocabulary of the training rows' tokens, or with ``share_with`` the
  categorical codes of that feature (``seq_code - 1 == its code``). Side field ``g`` -> float32
  ``[N, L]`` under ``f:g``, standardized with the training tokens' mean and std, 0 at padding.
  Longer lists keep their ``max_len`` most recent tokens (counted per split in the report); a
  cell that is not a list of tokens is a :class:`DataError` naming the file, column and row.
* ``text``: kept raw (missing -> ``""``; other cells as they are, so a text encoder can count
  non-string cells) for text encoders to featurize.
* memory: :meth:`Preprocessor.fit` and :meth:`Preprocessor.transform` take ``rows`` (positions
  into the frame) so splits need no copied frames, and work one column at a time (temporaries are
  one column's size); :meth:`Preprocessor.transform_splits` can delete each column from the frame
  once every split has it.
* labels: ``binary`` must be 0/1 (the error lists every other value with its count),
  ``regression`` any finite number (``inf`` or a value beyond float32 is an error), missing = NaN or
  the task's declared ``missing_label`` marker (excluded from that task's loss and metrics);
  ``multiclass`` labels get a class vocabulary from the training split, and a class of another
  split unseen in training is masked with a warning naming the task, split, classes and counts.
* a task without any labelled row in the training split, and a feature column without any value
  in it, are errors naming them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from mtlframe.errors import DataError, closest
from mtlframe.features import FeatureInfo, label_key, mask_key
from mtlframe.history import History, build_history


#: largest finite float32: numeric values beyond it cannot be represented in the model's inputs
F32_MAX = float(np.finfo(np.float32).max)
#: integer-valued floats below this magnitude are written as integers (exact in float64)
_EXACT_INT = 2.0**53
#: ``fill_missing`` policies besides a number


@dataclass(frozen=True)
class LabelSpec:
    """A task's label: its column, type and the optional marker of a missing label.

    ``missing``: label value meaning "no label" (the recipe's ``tasks.<name>.missing_label``,
    e.g. ``-1``); those rows are masked like NaN.
    """

    task: str
    column: str
    type: str
    missing: float | str | None = None

    @property
    def missing_text(self) -> str:
        """The marker as written in messages (``-1``, ``'none'``)."""
        return f"{self.missing:g}" if isinstance(self.missing, float) else repr(self.missing)


#: default ``max_len`` of a sequence feature
SEQ_MAX_LEN = 50
#: the side field of a history that is the row's time minus the interaction's (seconds for dates)
TIME_GAP = "time_gap"
#: one cell of a sequence column: ``|``-separated ids without blanks, square or curly brackets,
#: commas or semicolons (the marks of a list written in another syntax: ``[12, 7]``, ``12,7``)
_SEQ_CELL = r"[^|\s\[\]{},;]+(?:\|[^|\s\[\]{},;]+)*"


@dataclass(frozen=True)
class SequenceSpec:
    """How a ``sequence`` feature is read (the recipe's ``data.sequences.<name>``).

    Attributes:
        max_len: ``L``, the most recent tokens kept.
        share_with: a categorical feature whose codes are the id space (``None``: own vocabulary).
        fields: side fields, batch keys ``<name>:<field>``: for a dataset column, columns of
            ``|``-separated numbers parallel to the ids; for a history, numeric columns of the log
            (or :data:`TIME_GAP`).
        of: build the feature from the log: the history of this column's values
            (:mod:`mtlframe.history`); ``None``: the feature is a dataset column.
        user, timestamp: the log's user and timestamp columns (histories only).
    """

    max_len: int = SEQ_MAX_LEN
    share_with: str | None = None
    fields: tuple[str, ...] = ()
    of: str | None = None
    user: str | None = None
    timestamp: str | None = None


@dataclass
class _Tokens:
    """The tokens of ``n`` rows of a sequence feature, flat, oldest first within a row."""

    values: pd.Series  # raw ids
    row: np.ndarray  # [T] int64 row of each token
    n: int
    lengths: np.ndarray  # [n] tokens per row before truncation
    fields: dict[str, np.ndarray]  # field -> [T] float64


def _row_list(bad: np.ndarray, rows: np.ndarray | None, limit: int = 5) -> str:
    """``"row 3"`` / ``"rows 3, 7, 9 (and 12 more)"``: 1-based frame rows where ``bad`` is True."""
    pos = np.flatnonzero(bad)
    shown = ", ".join(str(_row_number(int(p), rows)) for p in pos[:limit])
    more = f" (and {len(pos) - limit} more)" if len(pos) > limit else ""
    return f"row{'s' if len(pos) > 1 else ''} {shown}{more}"


def _value_counts_text(values: np.ndarray) -> str:
    """``"2 (37 rows), -1 (5 rows), inf (1 row)"``: every distinct value with its count, most frequent first."""
    counts = pd.Series(values).value_counts(dropna=False)
    return ", ".join(f"{v:g} ({n} row{'s' if n != 1 else ''})" if isinstance(v, float) else f"{v} ({n} row{'s' if n != 1 else ''})"
                     for v, n in counts.items())


def _float_text(v: float) -> str | None:
    """One float's text as :func:`_as_str` writes it (``None``: NaN)."""
    if np.isnan(v):
        return None
    return str(int(v)) if float(v).is_integer() and abs(v) < _EXACT_INT else str(float(v))


def _as_str(series: pd.Series) -> pd.Series:
    """Categorical values as strings; NaN/None/'' stay missing. ``3`` and ``3.0`` map to ``"3"``
    value by value (a float with an integer value below 2^53 is written as an integer whatever
    else the column holds: the text of a value must not depend on the rows it is read with, one
    row in ``predict``, a batch of a stream); other floats as Python's ``str`` (``7.5``)."""
    s = series
    floats = pd.api.types.is_float_dtype(s)
    if not floats and s.dtype == object and pd.api.types.infer_dtype(s, skipna=True) in (
            "floating", "mixed-integer-float", "mixed", "mixed-integer"):  # Python floats among other objects (a JSON request)
        s = s.map(lambda v: _float_text(v) if isinstance(v, (float, np.floating)) else v)
    out = s.astype("string")
    if floats:
        values = s.to_numpy(dtype=np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(values) & (np.mod(values, 1) == 0) & (np.abs(values) < _EXACT_INT)
        if whole.any():
            out = out.copy()
            out[whole] = values[whole].astype(np.int64).astype(str)
    out = out.str.strip()
    return out.mask(out == "")


def _as_int(series: pd.Series) -> np.ndarray | None:
    """A numpy-integer column as int64 (it cannot hold missing values), else ``None``.

    The fast path for id columns: it skips the string conversion of :func:`_as_str` and gives the
    same vocabulary (``str(int)`` keys, same frequency order) and the same ids."""
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return None
    if pd.api.types.is_integer_dtype(series) and not isinstance(series.dtype, pd.api.extensions.ExtensionDtype):
        if pd.api.types.is_unsigned_integer_dtype(series) and len(series) and series.max() > np.iinfo(np.int64).max:
            return None  # uint64 ids beyond int64 would wrap to negative numbers: compared as text
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


class VocabIndex:
    """The hash indexes of one vocabulary, built on first use and then reused: a transform looks
    values up in them, and a stream transforms every run of rows (rebuilding a 100K-entry index
    for each run took about half of a string lookup's time)."""

    def __init__(self, vocab: Sequence[str] | np.ndarray) -> None:
        self.vocab = vocab
        self._ints: pd.Index | None = None
        self._ints_known = False
        self._strs: pd.Index | None = None

    def ints(self) -> pd.Index | None:
        """The vocabulary as an int64 index when every entry is a canonical integer, else ``None``."""
        if not self._ints_known:
            ints = _int_vocab(self.vocab)
            self._ints, self._ints_known = (None if ints is None else pd.Index(ints)), True
        return self._ints

    def strs(self) -> pd.Index:
        """The vocabulary as a string index (the categories of :class:`pandas.Categorical`)."""
        if self._strs is None:
            self._strs = pd.Index(_str_vocab(self.vocab), dtype=object)
        return self._strs


def _lookup(series: pd.Series, vocab: Sequence[str] | np.ndarray,
            index: VocabIndex | None = None) -> tuple[np.ndarray, int]:
    """``(codes, n_missing)``: each value's index in ``vocab`` (``-1``: unknown or missing) and the
    number of missing values (NaN / empty). Integer columns take one hash lookup, no strings.
    ``index``: the vocabulary's :class:`VocabIndex` when the caller keeps one."""
    index = index if index is not None else VocabIndex(vocab)
    ints = _as_int(series)
    int_index = index.ints() if ints is not None else None
    if int_index is not None:
        return int_index.get_indexer(ints), 0
    strs = _as_str(series)
    return pd.Categorical(strs, categories=index.strs()).codes, int(strs.isna().sum())


def _fit_vocab(series: pd.Series, min_count: int, max_vocab: int | None = None) -> tuple[list[str] | np.ndarray, int]:
    """``(vocabulary, present)``: the values seen at least ``min_count`` times, most frequent
    first (an int64 array for an integer column, else strings), at most ``max_vocab`` of them
    (ties in the vocabulary order), and the number of present values."""
    ints = _as_int(series)
    values = pd.Series(ints, copy=False) if ints is not None else _as_str(series)
    counts = values.value_counts(dropna=True)
    present = int(counts.sum())
    counts = counts[counts >= min_count].iloc[:max_vocab]
    return (np.array(counts.index, dtype=np.int64) if ints is not None else [str(v) for v in counts.index]), present


def id_dtype(cardinality: int) -> torch.dtype:
    """int32 for ids below 2^31 - 1, else int64."""
    return torch.int32 if cardinality < 2**31 - 1 else torch.int64


#: the 16-byte SipHash key of :func:`stable_hash` (pandas' default, spelled out so that it cannot change)
HASH_KEY = "0123456789123456"
#: expected share of distinct values sharing a bucket above which the fit warns
HASH_WARN_SHARE = 0.10


def stable_hash(strings: np.ndarray) -> np.ndarray:
    """uint64 hash of each string of ``strings`` (an object array of ``str``), the same in every
    process, machine and run (never Python's salted ``hash``).

    ``h = mix(SipHash-2-4(key = ASCII HASH_KEY, message = UTF-8 bytes))`` (Aumasson & Bernstein,
    "SipHash: a fast short-input PRF", 2012), the 64-bit result read as a little-endian integer,
    then ``mix(x)``: ``x ^= x >> 30; x *= 0xBF58476D1CE4E5B9; x ^= x >> 27; x *= 0x94D049BB133111EB;
    x ^= x >> 31`` (mod 2^64; the SplitMix64 finalizer). This is ``pandas.util.hash_array`` of the
    strings with ``encoding="utf8"``, ``hash_key=HASH_KEY``; ``tests/test_hashing.py`` recomputes it
    in plain Python from this description.
    """
    if len(strings) == 0:
        return np.zeros(0, dtype=np.uint64)
    return pd.util.hash_array(np.asarray(strings, dtype=object), encoding="utf8", hash_key=HASH_KEY, categorize=False)


def canonical_ids(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, texts)``: ``texts[codes[i]]`` is the canonical text of row ``i`` (``codes`` int64
    ``[N]``, -1 = missing; ``texts`` an object array of ``str``, one per distinct raw value).

    Canonical text, value by value (so a value gets the same text whatever else its column holds,
    and whichever file, batch or request it comes from): an integer (any integer dtype, a Python
    ``int``) -> its decimal digits (``7``, ``-3``); a float with an integer value below 2^53 ->
    the same digits (``7.0`` -> ``7``), another float -> Python's ``str`` (``7.5``, ``inf``); a
    boolean -> ``True`` / ``False``; a string -> itself with surrounding blanks stripped, as written
    (``" 7 "`` -> ``7``, but ``"7.0"`` and ``"007"`` stay themselves); NaN, None, an empty or blank
    string -> missing. So the int ``7`` of one file and the string ``"7"`` of another are one id.
    The texts are those :func:`_as_str` gives (the vocabulary path), per distinct value.
    """
    ints = _as_int(series)
    if ints is not None:
        codes, uniq = pd.factorize(ints)
        return codes.astype(np.int64, copy=False), uniq.astype(str).astype(object)
    codes, uniq = pd.factorize(series)  # NaN / None / NA -> -1; then one text per distinct raw value
    texts = _as_str(pd.Series(uniq, copy=False))
    blank = texts.isna().to_numpy(dtype=bool)  # an empty or blank string is missing too
    if blank.any():
        codes = np.where((codes >= 0) & blank[codes.clip(0)], -1, codes)
    return codes.astype(np.int64, copy=False), texts.fillna("").to_numpy(dtype=object)


def hash_codes(series: pd.Series, buckets: int) -> np.ndarray:
    """int64 ``[N]`` codes of a hashed feature: ``1 + stable_hash(canonical text) mod buckets``,
    0 for a missing value (see :func:`canonical_ids`, :func:`stable_hash`)."""
    codes, texts = canonical_ids(series)
    per_value = (stable_hash(texts) % np.uint64(buckets)).astype(np.int64) + 1
    return np.where(codes >= 0, per_value[codes.clip(0)] if len(per_value) else 0, 0)


def collision_report(buckets: int, distinct: int | None, used: int, estimated: bool = False) -> dict[str, Any]:
    """What a hashed feature's fit reports: ``{"buckets", "used", "distinct", "estimated",
    "expected_share", "buckets_for_1pct"}``.

    ``expected_share``: the expected share of the ``distinct`` values that share their bucket
    with another, ``1 - (1 - 1/N)^(d - 1)`` for ``d`` values hashed uniformly into ``N`` buckets.
    ``distinct`` ``None`` (streamed fit): estimated from the buckets used by linear counting,
    ``-N ln(1 - used/N)`` (Whang, Vander-Zanden & Taylor, "A linear-time probabilistic counting
    algorithm for database applications", 1990); ``estimated`` True then, and when every bucket is
    used the estimate is the expected number of values that fill every bucket, ``N ln N``.
    ``buckets_for_1pct``: the smallest ``N`` whose expected share is 1 % or less.
    """
    estimated = estimated or distinct is None
    if distinct is None:
        distinct = int(round(-buckets * np.log1p(-used / buckets))) if used < buckets else int(round(buckets * np.log(max(buckets, 2))))
    share = float(-np.expm1((distinct - 1) * np.log1p(-1.0 / buckets))) if buckets > 1 and distinct > 1 else (
        1.0 if distinct > 1 else 0.0)
    need = int(np.ceil(1.0 / -np.expm1(np.log(0.99) / (distinct - 1)))) if distinct > 1 else 1
    return {"buckets": int(buckets), "used": int(used), "distinct": int(distinct), "estimated": bool(estimated),
            "expected_share": share, "buckets_for_1pct": need}


def collision_text(col: str, rep: Mapping[str, Any]) -> str:
    """One line describing a hashed feature's fit (see :func:`collision_report`)."""
    approx = "~" if rep["estimated"] else ""
    return (f"hashed feature '{col}': {approx}{rep['distinct']:,} distinct value(s) in {rep['buckets']:,} buckets "
            f"({rep['used']:,} used); expected share of values sharing a bucket: {rep['expected_share']:.1%}")


class Preprocessor:
    """Fits vocabularies and numeric statistics on the train split and transforms tables to tensors.

    Args:
        features: ``column -> type`` of the input features to use.
        labels: one :class:`LabelSpec` per task.
        min_count: categories seen fewer times in train map to the out-of-vocabulary id.
        max_multi_len: cap on the padded length of multi-categorical features.
        fill_missing: ``numeric column -> policy`` for missing values: ``"error"`` (the default of
            an unlisted column), ``"mean"``, ``"median"``, ``"zero"`` or a number (raw units).
        clip: ``numeric column -> (low, high)``: values are clipped to this range (raw units)
            before standardization; without it a value beyond float32 is an error.
        sequences: ``sequence column -> SequenceSpec`` (a sequence feature not listed takes the
            defaults: ``max_len`` 50, own vocabulary, no side fields).
        max_vocab: ``column -> n``: keep the ``n`` most frequent values of the column's
            vocabulary (after ``min_count``; ties in the vocabulary order); the others map to the
            out-of-vocabulary id. ``min_count`` may also be such a mapping (unlisted columns: 1).
        hash_buckets: ``categorical / multi-categorical column -> N``: no vocabulary, codes
            ``1 + stable_hash(value) mod N`` (see :func:`hash_codes`); ``min_count`` / ``max_vocab``
            do not apply to it.

    Raises:
        DataError: a ``hash_buckets`` column that is not a categorical or multi-categorical feature.

    Attributes (after :meth:`fit`):
        vocab: ``column -> vocabulary`` in frequency order, id ``i + 1`` for entry ``i``: a list of
            strings, or an int64 numpy array for an integer column.
        fill: ``numeric column -> raw fill value`` of the columns with a declared fill.
        reports: what the last :meth:`transform` / :meth:`transform_splits` did, per split
            (``"data"`` for :meth:`transform`): ``{"oov": {col: {"rows", "oov", "missing"}},
            "filled": {col: n}, "clipped": {col: n}, "masked_labels": {task: n},
            "unseen_classes": {task: {class: n}}, "truncated": {col: {"rows", "truncated"}}}``;
            a sequence's ``oov`` entry also holds ``"tokens"`` and ``"oov_tokens"`` (its ``oov``
            counts rows with an unknown token, ``missing`` rows with an empty history).
        seq_stats: ``"<sequence>:<field>" -> (mean, std)`` of the side fields' training tokens.
        hash_report: ``hashed column -> collision_report(...)`` (distinct values, buckets used,
            expected share of values sharing a bucket) of the fit.
    """

    def __init__(self, features: Mapping[str, str], labels: Sequence[LabelSpec],
                 min_count: int | Mapping[str, int] = 1,
                 max_multi_len: int = 64, fill_missing: Mapping[str, str | float] | None = None,
                 clip: Mapping[str, Sequence[float]] | None = None,
                 sequences: Mapping[str, SequenceSpec] | None = None,
                 max_vocab: Mapping[str, int] | None = None,
                 hash_buckets: Mapping[str, int] | None = None) -> None:
        self.features = dict(features)
        self.sequences: dict[str, SequenceSpec] = {c: (sequences or {}).get(c, SequenceSpec())
                                                   for c, t in self.features.items() if t == "sequence"}
        self.seq_stats: dict[str, tuple[float, float]] = {}
        self.labels = list(labels)
        self.min_count = dict(min_count) if isinstance(min_count, Mapping) else min_count
        self.max_vocab: dict[str, int] = {k: int(v) for k, v in (max_vocab or {}).items()}
        self.hash_buckets: dict[str, int] = {k: int(v) for k, v in (hash_buckets or {}).items()}
        bad = [c for c in self.hash_buckets if self.features.get(c) not in ("categorical", "multi_categorical")]
        if bad:
            raise DataError(f"data.hash_buckets: {', '.join(map(repr, bad))} is not a categorical or multi-categorical "
                            f"feature of the model ({', '.join(f'{c}: {t}' for c, t in self.features.items())}); "
                            "only those are hashed.")
        self.hash_report: dict[str, dict[str, Any]] = {}
        self.max_multi_len = max_multi_len
        self.fill_missing: dict[str, str | float] = dict(fill_missing or {})
        self.clip: dict[str, tuple[float, float]] = {k: (float(v[0]), float(v[1])) for k, v in (clip or {}).items()}
        self.vocab: dict[str, list[str] | np.ndarray] = {}
        self.stats: dict[str, tuple[float, float]] = {}
        self.fill: dict[str, float] = {}
        self.multi_len: dict[str, int] = {}
        self.classes: dict[str, list[str]] = {}
        self.reports: dict[str, dict[str, dict]] = {}
        self.fitted = False

    # -- fitting -------------------------------------------------------------------------------
    def cut(self, col: str) -> tuple[int, int | None]:
        """``(min_count, max_vocab)`` of column ``col`` (``max_vocab`` ``None``: no cap)."""
        mc = self.min_count.get(col, 1) if isinstance(self.min_count, Mapping) else self.min_count
        return int(mc), self.max_vocab.get(col)

    def set_hash_report(self, col: str, distinct: int | None, used: int, source: str) -> None:
        """Record hashed column ``col``'s :func:`collision_report` and warn when its expected share
        of values sharing a bucket exceeds :data:`HASH_WARN_SHARE`."""
        rep = collision_report(self.hash_buckets[col], distinct, used)
        self.hash_report[col] = rep
        if rep["expected_share"] > HASH_WARN_SHARE:
            warnings.warn(f"{source}: HASH COLLISIONS: {collision_text(col, rep)}, above "
                          f"{HASH_WARN_SHARE:.0%}: those values share an embedding row and the model cannot tell "
                          f"them apart. Raise data.hash_buckets.{col} (>= {rep['buckets_for_1pct']:,} buckets for "
                          "1%), or use a vocabulary (remove the column from data.hash_buckets).",
                          UserWarning, stacklevel=3)

    def fit(self, frame: pd.DataFrame, source: str = "data", rows: np.ndarray | None = None,
            histories: Mapping[str, History] | None = None) -> Preprocessor:
        """Fit on the training rows: ``frame``, or its rows at positions ``rows`` (no frame copy).

        ``histories``: ``feature -> History`` of every row of ``frame`` for the sequence features
        built from the log (``SequenceSpec.of``); one missing is built from the ``rows`` alone
        (they see only each other).

        Raises:
            DataError: a numeric column holds a non-numeric value, a value beyond float32 without a
                ``clip`` range, or missing values without a declared fill; a feature column has no
                value in the training split; a task has no labelled row in it; a binary label is not
                0/1; a multiclass label has < 2 classes. Each names the column (and task) and rows.
        """
        for col, typ in self.features.items():
            if typ == "sequence":  # after the categorical features whose codes it may share
                continue
            series = _rows(frame[col], rows)
            if typ == "categorical" and col in self.hash_buckets:
                codes, texts = canonical_ids(series)
                self._check_not_empty(frame, int((codes >= 0).sum()), len(series), col, typ, source)
                self._fit_hashed(col, texts[np.unique(codes[codes >= 0])], source)
            elif typ == "categorical":
                vocab, present = _fit_vocab(series, *self.cut(col))
                self._check_not_empty(frame, present, len(series), col, typ, source)
                self.vocab[col] = vocab
            elif typ == "multi_categorical":
                tokens = _as_str(series).dropna().str.split("|")
                self._check_not_empty(frame, len(tokens), len(series), col, typ, source)
                lengths = tokens.map(len)
                flat = tokens.explode().str.strip()
                if col in self.hash_buckets:
                    kept = flat.dropna()
                    self._fit_hashed(col, kept[kept != ""].unique().to_numpy(dtype=object), source)
                else:
                    min_count, max_vocab = self.cut(col)
                    counts = flat.value_counts()
                    counts = counts[(counts >= min_count) & (counts.index != "")].iloc[:max_vocab]
                    self.vocab[col] = [str(v) for v in counts.index]
                self.multi_len[col] = int(min(max(int(lengths.max()) if len(lengths) else 1, 1), self.max_multi_len))
            elif typ == "numeric":
                values = self._bounded(self._numeric(series, col, source, rows), col, source, rows, None)
                finite = values[np.isfinite(values)]
                self._check_not_empty(frame, finite.size, len(values), col, typ, source)
                policy = self.fill_missing.get(col, "error")
                if finite.size < values.size and policy == "error":
                    self._missing_error(values, col, source, rows, "the training split")
                mean = float(finite.mean())
                std = float(finite.std()) if finite.size > 1 else 1.0
                self.stats[col] = (mean, std if std > 1e-12 else 1.0)
                if policy != "error":
                    self.fill[col] = (mean if policy == "mean" else float(np.median(finite)) if policy == "median"
                                      else 0.0 if policy == "zero" else float(policy))
            else:  # text
                present = series.notna() & (series.astype("string").str.strip() != "")
                self._check_not_empty(frame, int(present.sum()), len(series), col, typ, source)
        for col in self.sequences:
            self._fit_sequence(frame, col, source, rows, (histories or {}).get(col))
        for lab in self.labels:
            series = _rows(frame[lab.column], rows)
            if lab.type == "multiclass":
                vals = self._class_values(series, lab)
                labelled = len(vals)
            else:
                if rows is not None and lab.type in ("binary", "regression"):
                    # every split's values at once: one error listing all of them, not one per split
                    self._label_values(frame[lab.column], lab, source, None)
                values = self._label_values(series, lab, source, rows)
                labelled = int(np.isfinite(values).sum())
            if labelled == 0:
                where = (f"{len(series)} rows; " if rows is not None else "")
                raise DataError(f"{source}: task '{lab.task}' has no labelled row in the training split ({where}"
                                f"label column '{lab.column}' is empty"
                                + (f" or {lab.missing_text} (missing_label) in every one" if lab.missing is not None
                                   else " in every one")
                                + "); check tasks." + lab.task + ".label, the split, or drop the task.")
            if lab.type == "multiclass":
                self.classes[lab.task] = sorted(vals.unique().tolist())
                if len(self.classes[lab.task]) < 2:
                    raise DataError(f"{source}: multiclass label column '{lab.column}' (task '{lab.task}') has "
                                    f"{len(self.classes[lab.task])} class(es) in the training split; it needs two or more.")
        self.fitted = True
        return self

    def _fit_hashed(self, col: str, texts: np.ndarray, source: str) -> None:
        """Collision report of hashed column ``col`` from the distinct canonical texts of its training values."""
        texts = pd.unique(np.asarray(texts, dtype=object))  # texts of raw values that differ only by blanks merge
        used = len(np.unique(stable_hash(texts) % np.uint64(self.hash_buckets[col])))
        self.set_hash_report(col, len(texts), used, source)

    @staticmethod
    def _check_not_empty(frame: pd.DataFrame, n_present: int, n_rows: int, col: str, typ: str, source: str) -> None:
        """Raise when a feature column has no value (NaN, empty string; numeric: +-inf too) in the
        ``n_rows`` training rows."""
        if n_rows and not n_present:
            whole = n_rows != len(frame)
            in_file = int(frame[col].notna().sum()) if whole else 0
            raise DataError(f"{source}: feature column '{col}' ({typ}) is empty: no value in any of the "
                            f"{n_rows} rows of the training split"
                            + (f" ({in_file} non-empty cells in the whole table)" if whole else "")
                            + f". Remove '{col}' from the recipe's model.encoders, or fill the column.")

    def _bounded(self, values: np.ndarray, col: str, source: str, rows: np.ndarray | None,
                 report: dict | None) -> np.ndarray:
        """``values`` (float64, raw units) clipped to the column's ``clip`` range, or checked to fit
        float32. Infinities are missing values and left as they are."""
        finite = np.isfinite(values)
        if col in self.clip:
            low, high = self.clip[col]
            out = values.copy()
            out[finite] = np.clip(values[finite], low, high)
            if report is not None:
                n = int((finite & (out != values)).sum())
                if n:
                    report.setdefault("clipped", {})[col] = report.get("clipped", {}).get(col, 0) + n
            return out
        big = finite & (np.abs(values) > F32_MAX)
        if big.any():
            pos = int(np.flatnonzero(big)[0])
            raise DataError(f"{source}: numeric column '{col}' has {int(big.sum())} value(s) beyond the float32 "
                            f"range (|x| > {F32_MAX:.4g}), e.g. {values[pos]:g} at {_row_list(big, rows)}; "
                            f"fix the data, or declare a range to clip the column to (recipe key "
                            f"data.clip.{col}: [low, high]).")
        return values

    def _missing_error(self, values: np.ndarray, col: str, source: str, rows: np.ndarray | None,
                       where: str, retrain: bool = False) -> None:
        nan = np.isnan(values)
        inf = np.isinf(values)
        kinds = ", ".join(t for t in (f"{int(nan.sum())} empty/NaN" if nan.any() else "",
                                      f"{int(inf.sum())} inf/-inf" if inf.any() else "") if t)
        raise DataError(f"{source}: numeric column '{col}' has {int((nan | inf).sum())} missing value(s) of "
                        f"{len(values)} in {where} ({kinds}; infinities count as missing) at "
                        f"{_row_list(nan | inf, rows)}. Fill them in the data, or declare a fill in the recipe: "
                        f"data.fill_missing: {{{col}: mean}} (or median, zero, a number; "
                        "`data.fill_missing: mean` for every numeric feature)"
                        + (" and retrain: the model was trained without a fill for this column."
                           if retrain else "."))

    @staticmethod
    def _numeric(series: pd.Series, col: str, source: str, rows: np.ndarray | None = None,
                 what: str = "numeric column", fix: str = "clean the column or declare it categorical") -> np.ndarray:
        """``series`` as float64 ``[N]`` (NaN where empty); text is parsed as numbers.

        Raises:
            DataError: a value that is not a number (``source``, ``what`` and ``col``, the value, its
                row and ``fix`` named).
        """
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            return series.to_numpy(dtype=np.float64, na_value=np.nan)
        coerced = pd.to_numeric(series.replace("", np.nan), errors="coerce")
        bad = coerced.isna() & series.notna() & (series.astype("string").str.strip() != "")
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{source}: {what} '{col}' has a non-numeric value {series.iloc[pos]!r} at "
                            f"row {_row_number(pos, rows)}; {fix}.")
        return coerced.to_numpy(dtype=np.float64, na_value=np.nan)

    # -- information -------------------------------------------------------------------------
    def feature_info(self) -> dict[str, FeatureInfo]:
        """Fitted feature descriptions, injected into encoders."""
        info = {}
        for col, typ in self.features.items():
            if col in self.hash_buckets:  # N buckets + row 0 (missing / padding)
                info[col] = FeatureInfo(col, typ, cardinality=self.hash_buckets[col] + 1,
                                        max_len=self.multi_len.get(col))
            elif typ == "categorical":
                info[col] = FeatureInfo(col, typ, cardinality=len(self.vocab[col]) + 1)
            elif typ == "multi_categorical":
                info[col] = FeatureInfo(col, typ, cardinality=len(self.vocab[col]) + 2, max_len=self.multi_len[col])
            elif typ == "sequence":
                spec = self.sequences[col]
                info[col] = FeatureInfo(col, typ, cardinality=len(self._seq_vocab(col)) + 1, max_len=spec.max_len,
                                        share_with=spec.share_with, fields=spec.fields)
            else:
                info[col] = FeatureInfo(col, typ)
        return info

    # -- transforming ------------------------------------------------------------------------
    def transform(self, frame: pd.DataFrame, source: str = "data", with_labels: bool = True,
                  rows: np.ndarray | None = None, histories: Mapping[str, History] | None = None) -> dict[str, Any]:
        """Turn a table into columns: ``name -> [N]`` / ``[N, L]`` tensors (text: numpy strings).

        Categorical ids are int32 ``[N]`` (int64 past 2^31 - 1 categories), multi-categorical
        int64 ``[N, L]``, numeric float32 ``[N]``, sequence int32 ``[N, L]`` (pre-padded) plus its
        side fields ``f:g`` float32 ``[N, L]``; a sequence built from the log takes its rows'
        histories from ``histories`` (``feature -> History`` of every row of ``frame``), else
        builds them from the transformed rows alone (one split, seeing only each other: ``predict``
        on a log file). Labels come as ``label/<task>`` float32 ``[N]`` (multiclass: int64, -1 =
        missing) and ``mask/<task>`` bool ``[N]``. With ``rows``
        (positions into ``frame``) only those rows are transformed, without copying the frame.

        :attr:`reports` ``["data"]`` then counts what was filled, clipped, out of vocabulary or
        masked (see the class docstring).

        Raises:
            DataError: a required column is missing (named), a value cannot be parsed, a numeric
                value is missing without a declared fill or beyond float32 without a ``clip``
                range, a label is invalid (each names the column and rows).
        """
        self._check_columns(frame, source, with_labels, histories)
        report: dict[str, dict] = {}
        self.reports = {"data": report}
        out: dict[str, Any] = {}
        for col in self.features:
            out.update(self.transform_column(frame, col, source, rows, report=report, histories=histories))
        if with_labels:
            out.update(self.transform_labels(frame, source, rows, report=report))
        return out

    def _check_columns(self, frame: pd.DataFrame, source: str, with_labels: bool,
                       histories: Mapping[str, History] | None = None) -> None:
        if not self.fitted:
            raise RuntimeError("Preprocessor.transform called before fit")
        needed = [c for col in self.features for c in self._sources(col, histories)]
        needed += [lab.column for lab in self.labels] if with_labels else []
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            col = missing[0]
            near = closest(col, frame.columns)
            raise DataError(f"{source}: required column '{col}' is missing"
                            + (f" (did you mean '{near[0]}'?)" if near else "")
                            + f". Missing: {', '.join(missing)}. The model was trained with columns: "
                            f"{', '.join(self.features)}.")

    def transform_column(self, frame: pd.DataFrame, col: str, source: str = "data",
                         rows: np.ndarray | None = None, split: str | None = None,
                         report: dict | None = None, histories: Mapping[str, History] | None = None) -> dict[str, Any]:
        """The output of one input column (see :meth:`transform`): ``{col: values}`` (a sequence:
        also its ``col:field`` side fields), or the ``label/`` and ``mask/`` entries of every task
        whose label is ``col``. ``split`` names the rows in warnings; ``report`` (a dict) receives
        the counts described in :attr:`reports`."""
        out: dict[str, Any] = {}
        typ = self.features.get(col)
        if typ == "sequence":
            out.update(self._sequence(frame, col, source, rows, report, (histories or {}).get(col)))
            if col not in frame.columns:  # built from the log: no label can be this column
                return out
        series = _rows(frame[col], rows)
        where = f"the {split} split" if split else source
        if typ == "categorical" and col in self.hash_buckets:
            codes = hash_codes(series, self.hash_buckets[col])
            if report is not None:  # no vocabulary, nothing is out of it
                report.setdefault("oov", {})[col] = {"rows": len(codes), "oov": 0, "missing": int((codes == 0).sum())}
            dtype = id_dtype(self.hash_buckets[col] + 1)
            out[col] = torch.from_numpy(codes.astype(np.int32 if dtype == torch.int32 else np.int64))
        elif typ == "categorical":
            vocab = self.vocab[col]
            codes, n_missing = _lookup(series, vocab, self._vocab_index(col, vocab))
            if report is not None:
                report.setdefault("oov", {})[col] = {"rows": len(codes), "oov": int((codes < 0).sum()) - n_missing,
                                                     "missing": n_missing}
            dtype = id_dtype(len(vocab) + 1)
            ids = torch.from_numpy(codes.astype(np.int32 if dtype == torch.int32 else np.int64))
            out[col] = ids.add_(1)
        elif typ == "sequence":
            pass  # done above
        elif typ == "multi_categorical":
            out[col] = self._multi(series, col, report)
        elif typ == "numeric":
            values = self._bounded(self._numeric(series, col, source, rows), col, source, rows, report)
            missing = ~np.isfinite(values)
            if missing.any():
                if col not in self.fill:
                    self._missing_error(values, col, source, rows, where, retrain=split is None)
                values = values.copy()  # may be a view of the caller's frame
                values[missing] = self.fill[col]
                if report is not None:
                    report.setdefault("filled", {})[col] = int(missing.sum())
            mean, std = self.stats[col]
            z = ((values - mean) / std).astype(np.float32)
            big = ~np.isfinite(z)
            if big.any():  # a value within float32 whose standardized value is not (a near-constant column)
                raise DataError(f"{source}: numeric column '{col}' has {int(big.sum())} value(s) whose standardized "
                                f"value (x - {mean:g}) / {std:g} overflows float32, at {_row_list(big, rows)}; "
                                f"fix the data, or declare a range to clip the column to (data.clip.{col}).")
            out[col] = torch.from_numpy(z)
        elif typ is not None:  # text
            values = series.to_numpy(dtype=object, copy=True)  # cells as they are: text encoders count non-strings
            values[pd.isna(values)] = ""
            out[col] = values
        for lab in self.labels:
            if lab.column == col:
                out.update(self._label(series, lab, source, rows, split, report))
        return out

    def transform_splits(self, frame: pd.DataFrame, index: Mapping[str, np.ndarray], source: str = "data",
                         release: Sequence[str] = (),
                         histories: Mapping[str, History] | None = None) -> dict[str, dict[str, Any]]:
        """:meth:`transform` of several row subsets of one frame, column by column.

        Args:
            frame: the whole table.
            index: ``split -> row positions``.
            source: for error messages.
            release: columns to delete from ``frame`` as soon as every split has them, so the
                frame and the transformed columns are not both held in full (peak: the frame plus
                one column).
            histories: ``feature -> History`` of every row of ``frame`` (see :meth:`transform`).

        Returns:
            ``split -> columns``, as :meth:`transform` gives for ``frame`` at those rows;
            :attr:`reports` holds one report per split.
        """
        self._check_columns(frame, source, True, histories)
        out: dict[str, dict[str, Any]] = {k: {} for k in index}
        self.reports = {k: {} for k in index}
        columns = list(dict.fromkeys([*self.features, *(lab.column for lab in self.labels)]))
        drop = set(release)
        for col in columns:
            for k, rows in index.items():
                out[k].update(self.transform_column(frame, col, source, rows, split=k, report=self.reports[k],
                                                    histories=histories))
            if col in drop and col in frame.columns:
                del frame[col]
        order = [*(key for c in self.features for key in (c, *self._side_keys(c))),
                 *(key for lab in self.labels for key in (label_key(lab.task), mask_key(lab.task)))]
        return {k: {c: cols[c] for c in order} for k, cols in out.items()}

    # -- sequences ---------------------------------------------------------------------------------
    def _side_keys(self, col: str) -> list[str]:
        """Batch keys ``col:field`` of a sequence feature's side fields (none for other types)."""
        spec = self.sequences.get(col)
        return [f"{col}:{g}" for g in spec.fields] if spec else []

    def _sources(self, col: str, histories: Mapping[str, History] | None) -> list[str]:
        """The frame columns feature ``col`` is read from: itself; a history built from the log
        reads its ``of`` column and side fields (plus the user and timestamp columns when its
        histories are built from the frame, or a ``time_gap`` field needs the timestamps)."""
        spec = self.sequences.get(col)
        if spec is None:
            return [col]
        fields = [g for g in spec.fields if g != TIME_GAP]
        if spec.of is None:
            return [col, *fields]
        built = histories is not None and col in histories
        extra = [] if built else [spec.user, spec.timestamp]
        if TIME_GAP in spec.fields:
            extra.append(spec.timestamp)
        return list(dict.fromkeys(c for c in [spec.of, *fields, *extra] if c))

    def _vocab_index(self, col: str, vocab: Sequence[str] | np.ndarray) -> VocabIndex:
        """The kept :class:`VocabIndex` of ``col``'s vocabulary ``vocab`` (built again when the
        vocabulary object changed, e.g. after a new fit)."""
        cache = self.__dict__.setdefault("_vocab_indexes", {})
        entry = cache.get(col)
        if entry is None or entry.vocab is not vocab:
            entry = cache[col] = VocabIndex(vocab)
        return entry

    def _seq_vocab(self, col: str) -> list[str] | np.ndarray:
        """The id space of sequence feature ``col``: its own vocabulary or its ``share_with``'s."""
        spec = self.sequences[col]
        return self.vocab[spec.share_with if spec.share_with else col]

    def _malformed(self, col: str, source: str, rows: np.ndarray | None, bad: np.ndarray, shown: pd.Series,
                   why: str) -> None:
        pos = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: sequence column '{col}' holds a malformed cell at row {_row_number(pos, rows)}: "
                        f"{shown.iloc[pos]!r} ({int(bad.sum())} malformed cell(s) in all, {_row_list(bad, rows)}); "
                        f"{why}")

    def _split_cells(self, series: pd.Series, col: str, source: str, rows: np.ndarray | None,
                     numeric: bool = False) -> tuple[pd.Series, np.ndarray]:
        """``(tokens, counts)``: the flat tokens (oldest first) of ``|``-separated cells and the
        tokens per cell (an empty cell: 0). Parquet list cells are taken as they are.

        Raises:
            DataError: a cell that is not a ``|``-separated list of tokens (a blank, square or
                curly bracket, comma or semicolon inside a token, an empty token); with
                ``numeric``, a token that is not a number. The column and row are named.
        """
        first = series.dropna().head(1)
        if len(first) and pd.api.types.is_list_like(first.iloc[0]) and not isinstance(first.iloc[0], str):
            lists = series.explode()  # list cells (Parquet list<...>); an empty list gives one NaN
            counts = series.map(len, na_action="ignore").fillna(0).to_numpy(dtype=np.int64)
            tokens = lists[lists.notna()].reset_index(drop=True)
        else:
            cells = _as_str(series).str.replace(r"\s*\|\s*", "|", regex=True)
            ok = cells.str.fullmatch(_SEQ_CELL).fillna(True).to_numpy(dtype=bool)
            if not ok.all():
                self._malformed(col, source, rows, ~ok, series, (
                    "a cell is a '|'-separated list of ids, oldest first (e.g. '12|7|33'), or empty for an empty "
                    "history; no blanks, brackets, commas or semicolons inside an id, no empty id. Fix the cell."))
            parts = cells.fillna("").str.split("|")
            counts = np.where(cells.isna().to_numpy(), 0, parts.str.len().to_numpy(dtype=np.int64))
            flat = parts.explode().to_numpy(dtype=object)
            tokens = pd.Series(flat[flat != ""], dtype="string")
        if numeric:
            values = pd.to_numeric(tokens, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            bad_tok = ~np.isfinite(values)
            if bad_tok.any():
                row = np.repeat(np.arange(len(counts)), counts)
                bad = np.zeros(len(counts), dtype=bool)
                bad[row[bad_tok]] = True
                self._malformed(col, source, rows, bad, series, "a side-field cell is a '|'-separated list of "
                                "finite numbers, one per id of the sequence. Fix the cell.")
            return pd.Series(values, copy=False), counts
        return tokens, counts

    def _seq_tokens(self, frame: pd.DataFrame, col: str, source: str, rows: np.ndarray | None,
                    history: History | None) -> _Tokens:
        """The tokens of sequence feature ``col`` at ``rows``, from its dataset column or, for a
        history, gathered from the log by ``history`` (built from ``frame`` when ``None``)."""
        spec = self.sequences[col]
        if spec.of is None:
            tokens, counts = self._split_cells(_rows(frame[col], rows), col, source, rows)
            n = len(counts)
            row = np.repeat(np.arange(n, dtype=np.int64), counts)
            fields = {}
            for g in spec.fields:
                values, lengths = self._split_cells(_rows(frame[g], rows), g, source, rows, numeric=True)
                if not np.array_equal(lengths, counts):
                    bad = lengths != counts
                    self._malformed(g, source, rows, bad, _rows(frame[g], rows), (
                        f"side field '{g}' of sequence '{col}' must hold one number per id; that row has "
                        f"{int(lengths[bad][0])} value(s) for {int(counts[bad][0])} id(s). Fix the cell."))
                fields[g] = values.to_numpy()
            return _Tokens(tokens, row, n, counts, fields)
        if history is None:  # predict: the rows themselves are the log (one split, seeing only each other)
            sub = np.arange(len(frame)) if rows is None else np.asarray(rows, dtype=np.int64)
            own = build_history(frame[spec.user].to_numpy()[sub], self._times(frame, col, spec, source)[sub],
                                spec.max_len)
            h = History(np.where(own.positions >= 0, sub[own.positions.clip(0)], -1), own.lengths)
        else:
            h = history.take(rows)
        mask = h.positions >= 0
        pos = h.positions[mask].astype(np.int64)
        row = np.nonzero(mask)[0].astype(np.int64)
        fields = {}
        for g in spec.fields:
            if g == TIME_GAP:
                t = self._times(frame, col, spec, source)
                own = t if rows is None else t[rows]
                fields[g] = own[row] - t[pos]
                continue
            values = pd.to_numeric(frame[g], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)[pos]
            bad = ~np.isfinite(values)
            if bad.any():
                raise DataError(f"{source}: column '{g}' (side field of the history '{col}') has {int(bad.sum())} "
                                f"missing or non-numeric value(s) in the histories, e.g. at row "
                                f"{int(pos[bad][0]) + 1}; a side field must be a finite number in every row. "
                                "Fill the column or drop the field.")
            fields[g] = values
        return _Tokens(_rows(frame[spec.of], pos), row, len(h.lengths), h.lengths, fields)

    @staticmethod
    def _times(frame: pd.DataFrame, col: str, spec: SequenceSpec, source: str) -> np.ndarray:
        """The log's timestamps as float64 (dates: seconds since the epoch).

        Raises:
            DataError: missing timestamps (rows named).
        """
        stamps = frame[spec.timestamp]
        if stamps.isna().any():
            bad = stamps.isna().to_numpy()
            raise DataError(f"{source}: timestamp column '{spec.timestamp}' has {int(bad.sum())} missing value(s) "
                            f"at {_row_list(bad, None)}; the history '{col}' needs the time of every row. "
                            "Fill or drop those rows.")
        if pd.api.types.is_datetime64_any_dtype(stamps):
            return stamps.to_numpy().astype("datetime64[ns]").astype(np.int64) / 1e9
        return stamps.to_numpy(dtype=np.float64)

    def _fit_sequence(self, frame: pd.DataFrame, col: str, source: str, rows: np.ndarray | None,
                      history: History | None) -> None:
        """The id space (own vocabulary of the training tokens, or ``share_with``'s) and the side
        fields' training mean and std of sequence feature ``col``.

        Raises:
            DataError: ``share_with`` is not a categorical feature; a dataset sequence column has
                no token in the training split; a malformed cell (column and row named).
        """
        spec = self.sequences[col]
        if spec.share_with in self.hash_buckets:
            raise DataError(f"{source}: sequence feature '{col}' shares the codes of '{spec.share_with}', which is hashed "
                            f"(data.hash_buckets.{spec.share_with}); a sequence reads the codes of a vocabulary. "
                            f"Drop data.sequences.{col}.share_with, or give '{spec.share_with}' a vocabulary.")
        if spec.share_with is not None and self.features.get(spec.share_with) != "categorical":
            cats = [c for c, t in self.features.items() if t == "categorical"]
            raise DataError(f"{source}: sequence feature '{col}' shares the codes of '{spec.share_with}', which is not "
                            f"a categorical feature of the model (categorical features: {', '.join(cats) or 'none'}); "
                            f"add it to an encoder's features, or drop data.sequences.{col}.share_with.")
        tok = self._seq_tokens(frame, col, source, rows, history)
        if spec.of is None:
            self._check_not_empty(frame, len(tok.values), tok.n, col, "sequence", source)
        if spec.share_with is None:
            self.vocab[col] = _fit_vocab(tok.values, *self.cut(col))[0]
        for g, values in tok.fields.items():
            std = float(values.std()) if values.size > 1 else 1.0
            self.seq_stats[f"{col}:{g}"] = (float(values.mean()) if values.size else 0.0, std if std > 1e-12 else 1.0)

    def _sequence(self, frame: pd.DataFrame, col: str, source: str, rows: np.ndarray | None,
                  report: dict | None, history: History | None) -> dict[str, torch.Tensor]:
        """``{col: int32 [N, L], col:field: float32 [N, L]}`` (see the module docstring); the
        report gets the out-of-vocabulary and truncation counts."""
        spec = self.sequences[col]
        tok = self._seq_tokens(frame, col, source, rows, history)
        vocab = self._seq_vocab(col)
        codes, _ = _lookup(tok.values, vocab, self._vocab_index(col, vocab))  # -1: unknown (or a missing id in the log)
        n, width = tok.n, spec.max_len
        in_row = np.bincount(tok.row, minlength=n)
        start = np.cumsum(in_row) - in_row
        slot = width - in_row[tok.row] + (np.arange(len(tok.row)) - start[tok.row])  # pre-padded, most recent last
        keep = slot >= 0
        r, c = tok.row[keep], slot[keep]
        ids = np.zeros((n, width), dtype=np.int32 if id_dtype(len(vocab) + 2) == torch.int32 else np.int64)
        ids[r, c] = codes[keep] + 2
        out = {col: torch.from_numpy(ids)}
        for g, values in tok.fields.items():
            mean, std = self.seq_stats[f"{col}:{g}"]
            side = np.zeros((n, width), dtype=np.float32)
            side[r, c] = (values[keep] - mean) / std
            out[f"{col}:{g}"] = torch.from_numpy(side)
        if report is not None:
            unknown = np.zeros(n, dtype=bool)
            unknown[tok.row[codes < 0]] = True
            report.setdefault("oov", {})[col] = {"rows": n, "oov": int(unknown.sum()),
                                                 "missing": int((in_row == 0).sum()), "tokens": len(codes),
                                                 "oov_tokens": int((codes < 0).sum())}
            report.setdefault("truncated", {})[col] = {"rows": n, "truncated": int((tok.lengths > width).sum()),
                                                       "max_len": width}
        return out

    def _multi(self, series: pd.Series, col: str, report: dict | None = None) -> torch.Tensor:
        width = self.multi_len[col]
        tokens = _as_str(series).fillna("").str.split("|")
        flat = tokens.explode().str.strip()
        row = np.repeat(np.arange(len(tokens)), tokens.map(len).to_numpy(dtype=np.int64))
        hashed = col in self.hash_buckets
        if hashed:  # 1 + hash mod N: no out-of-vocabulary code
            codes = hash_codes(flat.reset_index(drop=True), self.hash_buckets[col])
        else:
            categories = self._vocab_index(col, self.vocab[col]).strs()
            codes = pd.Categorical(flat, categories=categories).codes.astype(np.int64) + 2  # unknown -> 1
        codes[(flat == "").fillna(True).to_numpy(dtype=bool) | flat.isna().to_numpy()] = 0
        if report is not None:  # rows with an unknown token; rows without any token
            unknown = np.zeros(len(tokens), dtype=bool)
            if not hashed:
                unknown[row[codes == 1]] = True
            empty = np.ones(len(tokens), dtype=bool)
            empty[row[codes > 0]] = False
            report.setdefault("oov", {})[col] = {"rows": len(tokens), "oov": int(unknown.sum()),
                                                 "missing": int((empty & ~unknown).sum())}
        pos = pd.Series(row).groupby(row).cumcount().to_numpy()
        keep = (pos < width) & (codes > 0)
        out = np.zeros((len(tokens), width), dtype=np.int64)
        out[row[keep], pos[keep]] = codes[keep]
        return torch.from_numpy(out)

    def transform_labels(self, frame: pd.DataFrame, source: str = "data", rows: np.ndarray | None = None,
                         split: str | None = None, report: dict | None = None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for lab in self.labels:
            out.update(self._label(_rows(frame[lab.column], rows), lab, source, rows, split, report))
        return out

    @staticmethod
    def _marker(lab: LabelSpec) -> str | None:
        """The ``missing_label`` marker as the string a multiclass label is compared in (``-1`` -> ``"-1"``)."""
        return None if lab.missing is None else str(_as_str(pd.Series([lab.missing]))[0])

    def _class_values(self, series: pd.Series, lab: LabelSpec) -> pd.Series:
        """The present labels of a multiclass task as strings (missing and the marker dropped)."""
        vals = _as_str(series).dropna()
        return vals if lab.missing is None else vals[(vals != self._marker(lab)).to_numpy(dtype=bool)]

    def _label_values(self, series: pd.Series, lab: LabelSpec, source: str,
                      rows: np.ndarray | None = None) -> np.ndarray:
        """A binary / regression label as float64, NaN where missing (NaN or the ``missing_label``
        marker).

        Raises:
            DataError: a binary label other than 0/1 (every offending value with its count), a
                regression label that is infinite or beyond float32 (rows named).
        """
        fix = ("a binary label must be 0 or 1 (or empty when missing): write it as 0/1 in the data"
               if lab.type == "binary" else "a regression label must be a number (or empty when missing)")
        values = self._numeric(series, lab.column, source, rows, what=f"{lab.type} label column", fix=fix)
        if lab.missing is not None:
            marked = values == float(lab.missing)
            if marked.any():
                values = values.copy()  # may be a view of the caller's frame
                values[marked] = np.nan
        if lab.type == "binary":
            bad = ~np.isnan(values) & (values != 0) & (values != 1)
            if bad.any():
                marker = min(values[bad]) if (values[bad] < 0).any() else values[bad][0]
                hint = (f" If a value marks an unlabelled row, declare it: tasks.{lab.task}.missing_label: "
                        f"{marker:g}." if lab.missing is None and np.isfinite(marker) else "")
                first = _row_number(int(np.flatnonzero(bad)[0]), rows)
                raise DataError(f"{source}: binary label column '{lab.column}' (task '{lab.task}') has "
                                f"{int(bad.sum())} value(s) other than 0 and 1: {_value_counts_text(values[bad])} "
                                f"(first at row {first}); binary labels must be 0, 1 or "
                                f"missing (empty). Use a regression task, or derive a 0/1 column.{hint}")
        else:
            bad = np.isinf(values) | (np.abs(np.nan_to_num(values)) > F32_MAX)
            if bad.any():
                raise DataError(f"{source}: regression label column '{lab.column}' (task '{lab.task}') has "
                                f"{int(bad.sum())} infinite or float32-overflowing value(s) "
                                f"({_value_counts_text(values[bad])}) at {_row_list(bad, rows)}; a label must be "
                                "a finite number, or empty for a missing label.")
        return values

    def unseen_classes(self, series: pd.Series, lab: LabelSpec) -> dict[str, int]:
        """``class -> rows`` of the labels of multiclass task ``lab`` that are not classes of the
        training split (missing values and the ``missing_label`` marker excluded)."""
        vals = self._class_values(series, lab)
        vals = vals[~vals.isin(self.classes[lab.task])]
        return {str(k): int(v) for k, v in vals.value_counts().items()}

    def _label(self, series: pd.Series, lab: LabelSpec, source: str, rows: np.ndarray | None = None,
               split: str | None = None, report: dict | None = None) -> dict[str, torch.Tensor]:
        """Label and mask of one task; ``series`` holds the frame's rows ``rows`` (all when ``None``),
        which error messages translate back to the frame's row numbers. A multiclass class unseen in
        training is masked with a warning naming the task, ``split``, the classes and counts."""
        if lab.type == "multiclass":
            codes = pd.Categorical(_as_str(series), categories=self.classes[lab.task]).codes.astype(np.int64)
            unseen = self.unseen_classes(series, lab)
            if unseen:
                n = sum(unseen.values())
                shown = ", ".join(f"{c!r} ({k} row{'s' if k != 1 else ''})" for c, k in list(unseen.items())[:20])
                warnings.warn(f"{source}: multiclass task '{lab.task}' (label column '{lab.column}'): {n} row(s) of "
                              f"{'the ' + split + ' split' if split else 'the data'} have a class the training split "
                              f"does not have: {shown}{' ...' if len(unseen) > 20 else ''}; the model cannot predict "
                              f"these classes (trained on {', '.join(map(repr, self.classes[lab.task]))}), so those "
                              "rows are left out of the task's loss and metrics.", UserWarning, stacklevel=2)
                if report is not None:
                    report.setdefault("unseen_classes", {})[lab.task] = unseen
            y = torch.from_numpy(codes)
            mask = y >= 0
        else:
            y = torch.from_numpy(self._label_values(series, lab, source, rows).astype(np.float32))
            mask = torch.isfinite(y)
        if report is not None and lab.missing is not None:
            strs = _as_str(series)
            report.setdefault("masked_labels", {})[lab.task] = int((strs == self._marker(lab)).fillna(False).sum())
        return {label_key(lab.task): y, mask_key(lab.task): mask}

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain state for checkpoints (loadable with ``torch.load(weights_only=True)``): integer
        vocabularies as int64 tensors, the others as lists of strings."""
        vocab = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in self.vocab.items()}
        return {"features": self.features, "labels": [vars(lab) for lab in self.labels],
                "min_count": self.min_count, "max_multi_len": self.max_multi_len, "vocab": vocab,
                "stats": {k: list(v) for k, v in self.stats.items()}, "multi_len": self.multi_len,
                "classes": self.classes, "fill_missing": self.fill_missing,
                "clip": {k: list(v) for k, v in self.clip.items()}, "fill": self.fill,
                "sequences": {k: {**vars(v), "fields": list(v.fields)} for k, v in self.sequences.items()},
                "seq_stats": {k: list(v) for k, v in self.seq_stats.items()},
                "max_vocab": dict(self.max_vocab), "hash_buckets": dict(self.hash_buckets),
                "hash_report": {k: dict(v) for k, v in self.hash_report.items()}}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "Preprocessor":
        pre = cls(state["features"], [LabelSpec(**d) for d in state["labels"]], state["min_count"],
                  state["max_multi_len"], state.get("fill_missing"), state.get("clip"),
                  {k: SequenceSpec(**{**v, "fields": tuple(v["fields"])})
                   for k, v in state.get("sequences", {}).items()},
                  state.get("max_vocab"), state.get("hash_buckets"))
        pre.hash_report = {k: dict(v) for k, v in state.get("hash_report", {}).items()}
        pre.seq_stats = {k: (float(v[0]), float(v[1])) for k, v in state.get("seq_stats", {}).items()}
        pre.vocab = {k: v.numpy().astype(np.int64) if isinstance(v, torch.Tensor) else list(v)
                     for k, v in state["vocab"].items()}
        pre.stats = {k: (float(v[0]), float(v[1])) for k, v in state["stats"].items()}
        pre.multi_len = dict(state["multi_len"])
        pre.classes = {k: list(v) for k, v in state["classes"].items()}
        # checkpoints from before the missing-value policy filled every numeric column with the mean
        pre.fill = ({k: float(v) for k, v in state["fill"].items()} if "fill" in state
                    else {k: mean for k, (mean, _) in pre.stats.items()})
        pre.fitted = True
        return pre
