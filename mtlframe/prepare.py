"""``mtlframe prepare``: fit the preprocessor over a directory of Parquet files, streamed in record
batches (bounded memory), and save its state next to the data with a fingerprint of the files.

What is fitted is exactly what :meth:`mtlframe.preprocess.Preprocessor.fit` fits (the test
``tests/test_prepare.py`` checks the two agree on the same rows):

* ``categorical``: counts per value, then the values seen at least ``data.min_count`` times in
  order of frequency (ties in order of first appearance, as pandas' ``value_counts``). An integer
  column without a null keeps an int64 vocabulary; one with a null (or a float column) gets the
  strings :func:`~mtlframe.preprocess._as_str` gives for the same distinct values.
  ``data.max_vocab`` keeps the most frequent (after ``min_count``, ties in that order).
* ``multi_categorical``: token counts and the longest row (capped at ``max_multi_len``).
* hashed columns (``data.hash_buckets``): no counts; which of the ``N`` buckets are used (``N``
  bytes), from which the distinct values are estimated for the collision report
  (:func:`~mtlframe.preprocess.collision_report`; the in-memory fit counts them exactly).
* ``numeric``: count, mean and the population std (``ddof=0``) merged batch by batch (Chan et
  al., "Updating formulae and a pairwise algorithm for computing sample variances", 1979);
  ``fill_missing`` ``mean``, ``zero`` or a number. ``median`` needs every value and is refused.
* ``text``: checked not empty. Labels: binary / regression checked batch by batch, multiclass
  classes collected.
* ``sequence`` features are not prepared yet (refused, naming the feature).

Memory: one record batch (``batch_rows`` rows of the needed columns) plus the counts of the
distinct values of each categorical column (the vocabulary being fitted; ``N`` bytes for a hashed
one), whatever the number of rows.

**The training split is the directory.** The in-memory path fits on the rows of
``data.split``'s training split; a prepared state is fitted on every row of the directory, so the
directory must hold training rows only (validation and test rows in other directories).

**Fingerprint:** each Parquet file's path relative to the directory, size in bytes and
modification time (ns). Not a content hash: hashing means reading every byte of what may be
terabytes, the very pass ``train`` reusing a state is meant to skip; size + mtime is what ``make``
and ``rsync`` trust, and catches an appended, rewritten or replaced file. A file rewritten with
the same size and restored mtime goes unnoticed (documented in ``docs/prepare.md``).

The state is ``_mtlframe_prepared.pt`` (``torch.load(weights_only=True)``-loadable): Parquet readers
(pyarrow datasets, Spark) skip names starting with ``_``, so it can live inside the data directory.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtlframe.errors import DataError, RecipeError
from mtlframe.preprocess import LabelSpec, Preprocessor, _as_str, hash_codes

#: name of the saved state (inside the data directory unless ``--output``)
STATE_NAME = "_mtlframe_prepared.pt"
#: format of the saved state
STATE_VERSION = 1
#: rows per record batch read
BATCH_ROWS = 65_536


def parquet_files(root: str | Path) -> list[Path]:
    """The Parquet files of ``root`` (a file, or a directory searched recursively), sorted; names
    starting with ``.`` or ``_`` are skipped, as pyarrow datasets skip them.

    Raises:
        DataError: ``root`` does not exist or holds no ``.parquet`` file.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: no such file or directory; check data.dataset.path in the recipe.")
    files = sorted(p for p in root.rglob("*.parquet")
                   if not any(part.startswith((".", "_")) for part in p.relative_to(root).parts))
    if not files:
        raise DataError(f"{root}: the directory holds no .parquet file (names starting with '.' or '_' are skipped).")
    return files


def fingerprint(root: str | Path) -> dict[str, dict[str, int]]:
    """``relative path -> {"size": bytes, "mtime_ns": ns}`` of every Parquet file of ``root``."""
    root = Path(root)
    out = {}
    for p in parquet_files(root):
        st = p.stat()
        out[p.name if root.is_file() else p.relative_to(root).as_posix()] = {"size": st.st_size,
                                                                           "mtime_ns": st.st_mtime_ns}
    return out


def fingerprint_changes(saved: Mapping[str, Mapping[str, int]], now: Mapping[str, Mapping[str, int]]) -> list[str]:
    """What differs between two fingerprints, one line per file: added, removed, size or time changed
    (empty: the same files)."""
    lines = []
    for name in sorted(set(saved) | set(now)):
        if name not in now:
            lines.append(f"{name}: removed")
        elif name not in saved:
            lines.append(f"{name}: added")
        elif saved[name]["size"] != now[name]["size"]:
            lines.append(f"{name}: size changed ({saved[name]['size']} -> {now[name]['size']} bytes)")
        elif saved[name]["mtime_ns"] != now[name]["mtime_ns"]:
            lines.append(f"{name}: modified (same size, new modification time)")
    return lines


def _merge_counts(total: dict, counts: pd.Series) -> None:
    """Add ``value -> count`` (in order of first appearance) to ``total``, keeping first appearances first."""
    for k, n in zip(counts.index.tolist(), counts.to_numpy().tolist()):
        total[k] = total.get(k, 0) + n


def _sorted_vocab(counts: Mapping[Any, int], min_count: int, max_vocab: int | None = None) -> list:
    """Keys seen ``min_count`` times or more, by descending count (ties: first appearance), as
    ``Series.value_counts`` orders them; the first ``max_vocab`` of them (all when ``None``)."""
    s = pd.Series(list(counts.values()), index=pd.Index(list(counts.keys()), dtype=object), dtype=np.int64)
    s = s.sort_values(ascending=False, kind="stable")
    return s[s >= min_count].index.tolist()[:max_vocab]


def unsupported(pre: Preprocessor) -> list[tuple[str, str]]:
    """``(recipe key, reason)`` of what a streamed fit cannot do: sequence features, a ``median`` fill."""
    problems = [(f"model.encoders ('{c}')", f"mtlframe prepare does not fit sequence features yet ('{c}'); "
                 "train with the in-memory datasets (a csv / parquet file).")
                for c, t in pre.features.items() if t == "sequence"]
    problems += [(f"data.fill_missing.{c}", "median needs every value of the column in memory, which mtlframe "
                  "prepare does not hold; use mean, zero or a number.")
                 for c, policy in pre.fill_missing.items() if policy == "median" and pre.features.get(c) == "numeric"]
    return problems


class StreamingFit:
    """Fits a :class:`Preprocessor` batch by batch; :meth:`finish` leaves it as ``fit`` would.

    Args:
        pre: an unfitted preprocessor (its features, labels, ``min_count``, fills and clips are used).
        source: named in errors (the data directory).
        integer: ``column -> True`` for categorical / label columns whose Parquet type is an integer.

    Raises (from :meth:`update` / :meth:`finish`):
        RecipeError: a ``sequence`` feature, or ``fill_missing: median`` (needs every value).
        DataError: as :meth:`Preprocessor.fit`; each names the file (see :meth:`start_file`) and the row within it.
    """

    def __init__(self, pre: Preprocessor, source: str, integer: Mapping[str, bool] | None = None) -> None:
        problems = unsupported(pre)
        if problems:
            raise RecipeError(problems)
        self.pre, self.source = pre, source
        self.integer = dict(integer or {})
        self.rows = 0
        #: the file being read (named in errors, with rows counted within it) and its first row in ``rows``
        self.file, self.file_start = source, 0
        self.counts: dict[str, dict] = {c: {} for c, t in pre.features.items()
                                        if t in ("categorical", "multi_categorical") and c not in pre.hash_buckets}
        #: hashed column -> which of its buckets a value fell in (bucket ``code - 1``)
        self.buckets: dict[str, np.ndarray] = {c: np.zeros(n, dtype=bool) for c, n in pre.hash_buckets.items()}
        self.nulls: dict[str, bool] = {}
        self.present: dict[str, int] = {c: 0 for c in pre.features}
        self.longest: dict[str, int] = {}
        self.moments: dict[str, tuple[int, float, float]] = {}  # n, mean, M2
        #: numeric column without a fill -> (NaN count, first 1-based rows, missing count)
        self.missing: dict[str, tuple[int, list[tuple[str, int]], int]] = {}
        self.labelled: dict[str, int] = {lab.task: 0 for lab in pre.labels}
        #: binary / regression task -> sum of its present labels (as float32, summed in float64): with
        #: ``labelled``, the label mean the output bias starts from (``label_sums``)
        self.label_sums: dict[str, float] = {lab.task: 0.0 for lab in pre.labels if lab.type != "multiclass"}
        #: multiclass task -> its distinct raw label values (a dict: ordered, no repeats across batches)
        self.classes: dict[str, dict] = {lab.task: {} for lab in pre.labels if lab.type == "multiclass"}

    def start_file(self, name: str) -> None:
        """The next batches come from file ``name``: errors name it, with rows counted within it."""
        self.file, self.file_start = name, self.rows

    def _tokens(self, series: pd.Series, col: str) -> pd.Series:
        """The stripped tokens of a batch of multi-categorical cells (counting the present cells
        and the longest row of ``col``)."""
        tokens = _as_str(series).dropna().str.split("|")
        self.present[col] += len(tokens)
        if len(tokens):
            self.longest[col] = max(self.longest.get(col, 0), int(tokens.map(len).max()))
        return tokens.explode().str.strip()

    def update(self, frame: pd.DataFrame) -> None:
        """Add one record batch (a frame holding the features' and labels' columns)."""
        start = self.rows - self.file_start
        pre, rows, where = self.pre, np.arange(start, start + len(frame)), self.file
        for col, typ in pre.features.items():
            series = frame[col].reset_index(drop=True)
            if col in self.buckets:  # hashed: which buckets are used, no counts
                if typ == "multi_categorical":
                    series = self._tokens(series, col).reset_index(drop=True)
                codes = hash_codes(series, pre.hash_buckets[col])
                if typ == "categorical":
                    self.present[col] += int((codes > 0).sum())
                self.buckets[col][codes[codes > 0] - 1] = True
            elif typ == "categorical":
                if self.integer.get(col):
                    self.nulls[col] = self.nulls.get(col, False) or bool(series.isna().any())
                    vals = series.dropna().astype(np.int64)
                else:
                    vals = _as_str(series).dropna()
                counts = vals.value_counts(sort=False)
                self.present[col] += int(counts.sum())
                _merge_counts(self.counts[col], counts)
            elif typ == "multi_categorical":
                counts = self._tokens(series, col).value_counts(sort=False)
                _merge_counts(self.counts[col], counts[counts.index != ""])
            elif typ == "numeric":
                values = pre._bounded(pre._numeric(series, col, where, rows), col, where, rows, None)
                ok = np.isfinite(values)
                if not ok.all() and pre.fill_missing.get(col, "error") == "error":
                    nan, first, seen = self.missing.get(col, (0, [], 0))
                    bad = np.flatnonzero(~ok)
                    first = first + [(where, int(r) + start + 1) for r in bad[:5 - len(first)]]
                    self.missing[col] = (nan + int(np.isnan(values).sum()), first, seen + bad.size)
                finite = values[ok]
                self.present[col] += finite.size
                if finite.size:
                    n, mean, m2 = self.moments.get(col, (0, 0.0, 0.0))
                    bn, bmean = finite.size, float(finite.mean())
                    bm2 = float(((finite - bmean) ** 2).sum())
                    tot = n + bn
                    delta = bmean - mean
                    self.moments[col] = (tot, mean + delta * bn / tot, m2 + bm2 + delta * delta * n * bn / tot)
            else:  # text
                self.present[col] += int((series.notna() & (series.astype("string").str.strip() != "")).sum())
        for lab in pre.labels:
            series = frame[lab.column].reset_index(drop=True)
            if lab.type == "multiclass":
                self.classes[lab.task].update(dict.fromkeys(pd.unique(series.dropna()).tolist()))
                self.labelled[lab.task] += len(pre._class_values(series, lab))
            else:
                values = pre._label_values(series, lab, where, rows).astype(np.float32)
                finite = np.isfinite(values)
                self.labelled[lab.task] += int(finite.sum())
                self.label_sums[lab.task] += float(values[finite].sum(dtype=np.float64))
        self.rows += len(frame)

    def finish(self) -> Preprocessor:
        """Set the preprocessor's vocabularies, statistics, fills and classes; returns it, fitted.

        Raises:
            DataError: a feature column without any value, a task without a labelled row, a
                multiclass task with fewer than 2 classes (as :meth:`Preprocessor.fit`).
        """
        pre, n = self.pre, self.rows
        shape = pd.DataFrame(index=pd.RangeIndex(n))  # the "frame" of the emptiness check: all rows are training rows
        for col, (nan, first, seen) in self.missing.items():
            by_file: dict[str, list[int]] = {}
            for name, row in first:
                by_file.setdefault(name, []).append(row)
            at = "; ".join(f"{name} row{'s' if len(r) > 1 else ''} {', '.join(map(str, r))}" for name, r in by_file.items())
            more = f" (and {seen - len(first)} more)" if seen > len(first) else ""
            kinds = ", ".join(t for t in (f"{nan} empty/NaN" if nan else "", f"{seen - nan} inf/-inf" if seen > nan
                                          else "") if t)
            raise DataError(f"{self.source}: numeric column '{col}' has {seen} missing value(s) of {n} in the prepared "
                            f"directory ({kinds}; infinities count as missing) at {at}{more}. Fill "
                            f"them in the data, or declare a fill in the recipe: data.fill_missing: {{{col}: mean}} "
                            "(or zero, a number; `data.fill_missing: mean` for every numeric feature).")
        for col, typ in pre.features.items():
            pre._check_not_empty(shape, self.present[col], n, col, typ, self.source)
            if col in self.buckets:
                pre.set_hash_report(col, None, int(self.buckets[col].sum()), self.source)
                if typ == "multi_categorical":
                    pre.multi_len[col] = int(min(max(self.longest.get(col, 1), 1), pre.max_multi_len))
            elif typ == "categorical":
                keys = _sorted_vocab(self.counts[col], *pre.cut(col))
                if self.integer.get(col) and not self.nulls.get(col):
                    pre.vocab[col] = np.array(keys, dtype=np.int64)
                elif self.integer.get(col):  # a null makes the whole column float in memory: "3", not 3
                    pre.vocab[col] = _as_str(pd.Series(keys, dtype=np.float64)).tolist()
                else:
                    pre.vocab[col] = [str(k) for k in keys]
            elif typ == "multi_categorical":
                pre.vocab[col] = [str(k) for k in _sorted_vocab(self.counts[col], *pre.cut(col))]
                pre.multi_len[col] = int(min(max(self.longest.get(col, 1), 1), pre.max_multi_len))
            elif typ == "numeric":
                count, mean, m2 = self.moments[col]
                std = float(np.sqrt(m2 / count)) if count > 1 else 1.0
                pre.stats[col] = (mean, std if std > 1e-12 else 1.0)
                policy = pre.fill_missing.get(col, "error")
                if policy != "error":
                    pre.fill[col] = mean if policy == "mean" else 0.0 if policy == "zero" else float(policy)
        for lab in pre.labels:
            if self.labelled[lab.task] == 0:
                raise DataError(f"{self.source}: task '{lab.task}' has no labelled row in the {n} rows of the "
                                f"prepared directory (label column '{lab.column}' is empty"
                                + (f" or {lab.missing_text} (missing_label)" if lab.missing is not None else "")
                                + f" in every one); check tasks.{lab.task}.label, the data, or drop the task.")
            if lab.type == "multiclass":
                distinct = pd.Series(list(self.classes[lab.task]))
                pre.classes[lab.task] = sorted(pre._class_values(distinct, lab).unique().tolist())
                if len(pre.classes[lab.task]) < 2:
                    raise DataError(f"{self.source}: multiclass label column '{lab.column}' (task '{lab.task}') has "
                                    f"{len(pre.classes[lab.task])} class(es) in the prepared directory; it needs two "
                                    "or more.")
        pre.fitted = True
        return pre


def fit_parquet(pre: Preprocessor, root: str | Path, batch_rows: int = BATCH_ROWS) -> tuple[Preprocessor, int]:
    """``(pre fitted, rows read)``: :func:`read_parquet_fit`, finished."""
    fit = read_parquet_fit(pre, root, batch_rows)
    return fit.finish(), fit.rows


def read_parquet_fit(pre: Preprocessor, root: str | Path, batch_rows: int = BATCH_ROWS) -> "StreamingFit":
    """The :class:`StreamingFit` of ``pre`` over every row of the Parquet files of ``root`` (see
    :func:`parquet_files`), not finished (:meth:`StreamingFit.finish` fits ``pre``; its
    ``label_sums`` and ``labelled`` give the label means). Reads ``batch_rows`` rows at a time (file by file, in name order), only the features' and labels'
    columns. Peak memory: one batch plus one row group being decoded (Parquet writers' row groups:
    pyarrow 1M rows by default, Spark 128 MB) plus the counts of the distinct categorical values.

    Raises:
        DataError: a column missing from the files (named, with the closest names), a file that
            is not Parquet, and the errors of :class:`StreamingFit`.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{root}: mtlframe prepare reads Parquet with pyarrow, which is not installed. "
                        "Run `pip install pyarrow` (or `pip install 'mtlframe[parquet]'`).") from None

    from mtlframe.datasets.tabular import check_columns

    files = parquet_files(root)
    columns = list(dict.fromkeys([*pre.features, *(lab.column for lab in pre.labels)]))
    integer = dict.fromkeys(columns, True)
    for path in files:  # every file's footer first (metadata only): a missing column before a long pass
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: cannot read it as Parquet: {exc}") from None
        check_columns(str(path), columns, schema.names)
        for c in columns:  # an id column is integer if it is in every file (else pandas' concat makes it float)
            integer[c] = integer[c] and pa.types.is_integer(schema.field(c).type)
    fit = StreamingFit(pre, str(root), integer)
    for path in files:  # one file, one batch at a time (a scanner's read-ahead grew with the data)
        fit.start_file(str(path))
        # pre_buffer=False: with pyarrow's default, iter_batches keeps every column chunk it has
        # read, so memory grew with the file (a 376 MB file: +390 MB; without it: flat)
        with pq.ParquetFile(path, pre_buffer=False) as f:
            for batch in f.iter_batches(batch_size=batch_rows, columns=columns):
                fit.update(batch.to_pandas())
    return fit


def recipe_preprocessor(recipe: Any) -> tuple[Preprocessor, str]:
    """The unfitted preprocessor a recipe's model reads (encoders' features typed by
    ``data.dataset.features``, one label per task) and ``data.dataset.path``.

    Raises:
        RecipeError: a dataset other than ``parquet``, no ``data.dataset.path``, a feature not declared in ``data.dataset.features``.
    """
    cfg = recipe.config.data
    dataset = dict(cfg.dataset)
    if dataset.get("name") != "parquet":
        raise RecipeError([("data.dataset.name", f"mtlframe prepare reads a directory (or file) of Parquet files; "
                            f"the dataset must be {{name: parquet, path: DIR}}, not {dataset.get('name')!r}.")],
                          recipe.source, recipe.lines)
    path = dataset.get("path")
    if not path:
        raise RecipeError([("data.dataset.path", "mtlframe prepare needs the directory (or file) of the Parquet "
                            "training rows.")], recipe.source, recipe.lines)
    declared = dataset.get("features") or {}
    features: dict[str, str] = {}
    for i, enc in enumerate(recipe.data["model"]["encoders"]):
        for j, col in enumerate(enc.get("features") or []):
            if col in cfg.sequences and col not in declared:  # a history built from the log
                features[col] = "sequence"
                continue
            if col not in declared:
                raise RecipeError([(f"model.encoders[{i}].features[{j}]", f"'{col}' is not declared in "
                                    f"data.dataset.features ({', '.join(declared) or 'none'}).")],
                                  recipe.source, recipe.lines)
            features[col] = declared[col]
    labels = [LabelSpec(name, task.label, "binary" if task.type == "retrieval" else task.type, task.missing_label)
              for name, task in recipe.config.tasks.items()]
    problems = cfg.feature_key_problems(features)
    if problems:
        raise RecipeError(problems, recipe.source, recipe.lines)
    pre = Preprocessor(features, labels, **cfg.preprocessor_options(features))
    problems = unsupported(pre)
    if problems:
        raise RecipeError(problems, recipe.source, recipe.lines)
    return pre, str(path)


def prepare(recipe: Any, output: str | Path | None = None, batch_rows: int = BATCH_ROWS,
            state_file: str | Path | None = None) -> Path:
    """Fit the recipe's preprocessor over ``data.dataset.path`` and save it with the fingerprint
    (to ``state_file`` when given: ``data.stream.prepared``).

    Returns:
        the saved file: ``<output or the data directory>/_mtlframe_prepared.pt``, holding
        ``{"version", "preprocessor" (Preprocessor.state_dict), "fingerprint", "rows", "label_sums"}``
        (``label_sums``: binary / regression task -> ``[sum of the present labels, their count]``,
        what ``train`` starts each output bias from).
    """
    import torch

    pre, path = recipe_preprocessor(recipe)
    fp = fingerprint(path)
    fit = read_parquet_fit(pre, path, batch_rows)
    pre, rows = fit.finish(), fit.rows
    changes = fingerprint_changes(fp, fingerprint(path))
    if changes:  # written to while being read: the state would describe no version of the data
        raise DataError(f"{path}: files changed while mtlframe prepare read them (nothing saved):\n  "
                        + "\n  ".join(changes) + "\nRun it again once the data is written.")
    root = Path(path)
    out_dir = Path(output) if output is not None else (root if root.is_dir() else root.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = Path(state_file) if state_file is not None else out_dir / STATE_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    torch.save({"version": STATE_VERSION, "preprocessor": pre.state_dict(), "fingerprint": fp,
                "rows": rows, "label_sums": {t: [fit.label_sums[t], fit.labelled[t]] for t in fit.label_sums}},
               tmp)
    os.replace(tmp, target)
    return target


#: the settings a prepared state must share with the recipe that reuses it: ``state key -> recipe key``
_SETTINGS = {"features": "model.encoders / data.dataset.features", "labels": "tasks", "min_count": "data.min_count",
             "max_vocab": "data.max_vocab", "hash_buckets": "data.hash_buckets",
             "fill_missing": "data.fill_missing", "clip": "data.clip", "max_multi_len": "(max_multi_len)"}


def load_prepared(state_file: str | Path, data: str | Path, expect: Preprocessor | None = None) -> Preprocessor:
    """The preprocessor saved by :func:`prepare`, after checking ``data``'s files are those it was
    fitted on and, with ``expect`` (the recipe's unfitted preprocessor, :func:`recipe_preprocessor`),
    that it was fitted with the same features, tasks, ``min_count``, fills and clips.

    Raises:
        DataError: the state is stale (each added, removed or changed file named, and the command
            that refits it), was fitted with other settings (each differing recipe key named, with
            both values), or is not a prepared state.
    """
    import torch

    state = torch.load(state_file, weights_only=True)
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise DataError(f"{state_file}: not a state written by this version of mtlframe prepare; run it again.")
    changes = fingerprint_changes(state["fingerprint"], fingerprint(data))
    if changes:
        raise DataError(f"{state_file} is stale: the files of {data} changed since mtlframe prepare fitted it:\n  "
                        + "\n  ".join(changes) + "\nRun `mtlframe prepare RECIPE` again.")
    if expect is not None:
        now = expect.state_dict()
        diff = [f"{key}: prepared with {state['preprocessor'][name]!r}, the recipe has {now[name]!r}"
                for name, key in _SETTINGS.items() if state["preprocessor"].get(name, {}) != now[name]]
        if diff:
            raise DataError(f"{state_file} was prepared with other settings than the recipe's:\n  " + "\n  ".join(diff)
                            + "\nRun `mtlframe prepare RECIPE` again with this recipe.")
    return Preprocessor.from_state_dict(state["preprocessor"])


__all__: Iterable[str] = ["prepare", "fit_parquet", "read_parquet_fit", "StreamingFit", "fingerprint",
                          "fingerprint_changes", "load_prepared", "parquet_files", "recipe_preprocessor", "STATE_NAME"]
