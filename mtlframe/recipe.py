"""YAML recipes: loading, dotted overrides, and validation before any data is read.

A recipe is a YAML mapping (see ``docs/recipes.md``). Every component is written as
``{name: <registered name>, **args}``; its constructor signature is its schema. Validation
collects every problem (unknown or misspelled key, wrong type, unknown component name, bad
value) and raises one :class:`~mtlframe.errors.RecipeError` listing them with dotted paths
(``model.backbone.num_expert``), file and line, the valid keys and the closest match.
"""
from __future__ import annotations

import copy
import difflib
import functools
import inspect
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator,
                      model_validator)

from mtlframe.errors import MTLFrameError, RecipeError, closest, file_problem, near_hint, read_text_file
from mtlframe.features import DEFAULT_METRICS, TASK_TYPES

# --------------------------------------------------------------------------------------------
# YAML with line numbers and no duplicate keys
# --------------------------------------------------------------------------------------------

#: the named policies of ``data.fill_missing`` (a number is a constant fill)
FILL_POLICIES = ("error", "mean", "median", "zero")


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate keys."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _line_map(node: yaml.Node, prefix: str = "", out: dict[str, int] | None = None) -> dict[str, int]:
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            path = f"{prefix}.{k.value}" if prefix else str(k.value)
            out[path] = k.start_mark.line + 1
            _line_map(v, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            path = f"{prefix}[{i}]"
            out[path] = v.start_mark.line + 1
            _line_map(v, path, out)
    return out


def parse_yaml(text: str, source: str) -> tuple[dict, dict[str, int]]:
    """Parse recipe text. Returns ``(data, dotted_path -> line)``.

    Raises:
        RecipeError: not YAML, duplicate key, or not a mapping at the top.
    """
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = {"": mark.line + 1} if mark else {}
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError([("", f"not valid YAML: {problem}")], source, line) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError([("", f"the top level must be a mapping of keys, got {type(data).__name__}")], source)
    return data, (_line_map(node) if node is not None else {})


# --------------------------------------------------------------------------------------------
# Dotted overrides
# --------------------------------------------------------------------------------------------


def key_path_problem(key: str) -> str | None:
    """Why a dotted key (``model.encoders[0].dim``) is malformed, or ``None`` when it is well formed.

    Refused: an empty part (``trainer..max_epochs``, a leading or trailing dot), an empty or
    non-integer index (``encoders[]``, ``encoders[x]``) and unbalanced brackets.
    """
    if not key:
        return "the key is empty"
    for part in key.split("."):
        name, _, rest = part.partition("[")
        if part == "" or (name == "" and not rest):
            where = "leading" if key.startswith(".") else "trailing" if key.endswith(".") else "empty"
            what = {"leading": "starts with a dot", "trailing": "ends with a dot",
                    "empty": "has an empty part between two dots"}[where]
            fixed = ".".join(p for p in key.split(".") if p)
            return f"the key '{key}' {what}; write it as {fixed or 'a.b'}"
        if rest:
            if name == "":
                return f"the key '{key}' has an index with no key before it; write it like model.encoders[0].dim"
            if not re.fullmatch(r"(\[-?\d+\])+", "[" + rest):
                return (f"the key '{key}' has a malformed index '[{rest}'; list items are written "
                        "model.encoders[0].dim or model.encoders.0.dim")
    return None


def _split_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for chunk in path.replace("]", "").split("."):
        for j, piece in enumerate(chunk.split("[")):
            if piece == "":
                continue
            parts.append(int(piece) if (j > 0 or piece.isdigit()) and piece.lstrip("-").isdigit() else piece)
    return parts


def apply_overrides(data: dict, overrides: list[str], via: str = "command-line override") -> dict:
    """Apply ``key.sub=value`` overrides (values parsed as YAML: ``3``, ``[64, 32]``, ``null``).

    List items are addressed as ``model.encoders[0].dim`` or ``model.encoders.0.dim``.

    Args:
        via: what the overrides are, for messages (``"command-line override"``, ``"--grid"``).

    Raises:
        RecipeError: an override without ``=``, a malformed key (``trainer..max_epochs``: see
            :func:`key_path_problem`), or a path through a non-mapping; each problem names the override.
    """
    data = copy.deepcopy(data)
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append((key or item, f"{via} '{item}' must look like key.sub=value"))
            continue
        bad = key_path_problem(key.strip())
        if bad:
            problems.append((key.strip(), f"{via} '{item}': {bad}."))
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        parts = _split_path(key.strip())
        node: Any = data
        where: list[str | int] = []
        try:
            for p in [*parts[:-1], None]:
                last = parts[-1] if p is None else p
                if isinstance(node, list) and isinstance(last, int) and not -len(node) <= last < len(node):
                    at = "".join(f"[{q}]" if isinstance(q, int) else f".{q}" for q in where).lstrip(".")
                    problems.append((key, f"{via} '{item}': {at} has {len(node)} item(s) "
                                          f"(indexes 0..{len(node) - 1}), so [{last}] does not exist"))
                    break
                if p is None:
                    if isinstance(node, (list, dict)) and (isinstance(node, dict) or isinstance(last, int)):
                        node[last] = value
                    else:
                        raise TypeError
                    break
                node = node.setdefault(p, {}) if isinstance(node, dict) else node[p]
                where.append(p)
        except (IndexError, KeyError, TypeError):
            problems.append((key, f"{via} '{item}' does not address a recipe key"))
    if problems:
        raise RecipeError(problems, f"{via}s" if via == "command-line override" else via)
    return data


# --------------------------------------------------------------------------------------------
# Schema of the fixed part of a recipe
# --------------------------------------------------------------------------------------------

Component = dict[str, Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: split names that give one fold of a cross-validation (``data.split.fold`` of ``data.split.folds``)
FOLD_SPLITS = ("kfold", "group-kfold", "time-kfold", "predefined")


class SplitConfig(_Strict):
    """How rows are split. ``random``: seeded shuffle. ``time``: ordered by the dataset's
    timestamp, the last ``test`` fraction is test, the ``val`` fraction before it is validation.
    ``cold-start``: a ``cold_items`` fraction of items (and all their rows) go to the test split.
    ``user-random``: each user's rows shuffled and split by ``val`` / ``test`` with RecBole's
    per-user rounding (its default 8:1:1 protocol). ``leave-last-out``: per user by timestamp, the
    last row is test, the one before validation (``val`` / ``test`` do not apply).
    Fold splits give train / val / test of ONE fold (``fold``, 1-based, of ``folds``), so a fold
    is an ordinary recipe (``mtlframe cv`` runs them all): ``kfold`` (seeded shuffle into
    ``folds`` parts), ``group-kfold`` (every row of a ``group`` value, default the dataset's user
    column, in one fold), ``time-kfold`` (expanding window: ``folds + 1`` time blocks, fold i
    trains on blocks 1..i and tests on block i+1), ``predefined`` (the dataset's own folds, e.g.
    MovieLens-100K's u1..u5). ``val`` is the fraction of the fold's training part held out for
    validation; ``test`` does not apply.
    See :func:`mtlframe.datamodule.split_indices`."""

    #: the split method (above)
    name: Literal["random", "user-random", "leave-last-out", "time", "cold-start",
                  "kfold", "group-kfold", "time-kfold", "predefined"] = "random"
    #: fraction of the rows for validation (``user-random``: of each user's rows; fold splits: of the
    #: fold's training part); ``val + test < 1``
    val: float = Field(0.1, ge=0.0, lt=1.0)
    #: fraction of the rows (``user-random``: of each user's rows) for test
    test: float = Field(0.1, ge=0.0, lt=1.0)
    #: ``cold-start``: fraction of the items held out, with all their rows, as the test split
    cold_items: float = Field(0.1, gt=0.0, lt=1.0)
    folds: int = Field(5, ge=2, le=1000, description="number of folds of a fold split (kfold, group-kfold, "
                                                      "time-kfold); predefined: the dataset's")
    fold: int = Field(1, ge=1, description="the fold used as test, 1..folds (fold splits)")
    group: str | None = Field(None, description="group-kfold: the column whose rows stay together "
                                                "(default the dataset's user column)")

    @model_validator(mode="after")
    def _fractions(self) -> "SplitConfig":
        if self.val + self.test >= 1.0:
            raise ValueError("val + test must be below 1.0 so that rows remain for training")
        # keys given with a value other than the default (a saved, resolved recipe lists every key
        # at its default: it must load again)
        given = {k for k in self.model_fields_set if getattr(self, k) != type(self).model_fields[k].default}
        if self.name == "leave-last-out" and {"val", "test"} & given:
            raise ValueError("leave-last-out puts each user's last row in test and the one before it in val; "
                             "val / test fractions do not apply: remove them, or use name: user-random.")
        fold_keys = {"folds", "fold", "group"} & given
        if self.name not in FOLD_SPLITS:
            if fold_keys:
                raise ValueError(f"{', '.join(sorted(fold_keys))} appl{'ies' if len(fold_keys) == 1 else 'y'} to fold "
                                 f"splits only ({', '.join(FOLD_SPLITS)}), not to '{self.name}'; remove "
                                 f"{'it' if len(fold_keys) == 1 else 'them'} or use e.g. name: kfold.")
            return self
        if "test" in given:
            raise ValueError(f"{self.name}: the test part is fold `fold` of the folds; a test fraction does not "
                             "apply: remove test (val is the fraction of the fold's training part).")
        if self.group is not None and self.name != "group-kfold":
            raise ValueError(f"group applies to group-kfold only, not to '{self.name}'; remove it or use "
                             "name: group-kfold.")
        if self.name == "predefined" and "folds" in given:
            raise ValueError("predefined: the number of folds is the dataset's (e.g. 5 for movielens-100k); "
                             "remove folds.")
        if self.name != "predefined" and self.fold > self.folds:
            raise ValueError(f"fold {self.fold} is outside 1..{self.folds} (folds: {self.folds}); folds are "
                             "numbered from 1.")
        return self


#: a ``data.fill_missing`` policy: a keyword, or the number that replaces a missing value
FillPolicy = Union[Literal["error", "mean", "median", "zero"], float]


class SequenceConfig(_Strict):
    """One sequence feature (``data.sequences.<name>``, see ``docs/sequences.md``).

    ``of``: build the feature from the flat log, the leak-free history of this column's values
    (:mod:`mtlframe.history`; needs the dataset's user and timestamp columns); without it
    ``<name>`` is a dataset column of type ``sequence`` (``"12|7|33"``, oldest first).
    ``share_with``: a categorical feature whose codes (and embedding table) the ids share.
    ``max_len``: the most recent ids kept. ``fields``: side fields, batch keys ``<name>:<field>``:
    numeric log columns (or ``time_gap``) for a history, ``|``-separated number columns for a
    dataset sequence column."""

    of: str | None = None
    share_with: str | None = None
    max_len: int = Field(50, ge=1, le=100_000)
    fields: list[str] = []

    @field_validator("fields")
    @classmethod
    def _distinct_fields(cls, v: list[str]) -> list[str]:
        twice = sorted({f for f in v if v.count(f) > 1})
        if twice:
            raise ValueError(f"side field(s) {', '.join(map(repr, twice))} listed twice; list each once")
        return v


class StreamConfig(_Strict):
    """``data.stream``: train from a directory of Parquet files without loading it (see
    ``docs/streaming.md``). ``data.dataset`` (``name: parquet``) names the training directory; the
    evaluation splits are their own directories (or files), each optional. The preprocessor comes
    from ``mtlframe prepare`` (``prepared``; run by ``train`` when there is none)."""

    #: the validation directory (or file); none: no validation
    val: str | None = None
    #: the test directory (or file); none: no test
    test: str | None = None
    #: rows of each reader's shuffle buffer (0: no buffer, rows in row-group order)
    buffer_rows: int = Field(65536, ge=0)
    #: data-loader worker processes per training process (0: read in the training process)
    workers: int = Field(2, ge=0, le=64)
    #: the prepared state file (default ``<training directory>/_mtlframe_prepared.pt``)
    prepared: str | None = None


#: the most buckets ``data.hash_buckets`` takes for one column: codes stay below 2^31 (int32 indices of
#: embedding kernels and exported graphs), and the table a single process builds stays finite
MAX_HASH_BUCKETS = 2**31 - 2


class DataConfig(_Strict):
    """The data: which dataset, how it is split into training / validation / test, batching, the
    training sampler and preprocessing (vocabularies, missing values, clipping, sequences)."""

    #: a dataset component, ``{name: movielens-100k, path: ...}``
    dataset: Component
    split: SplitConfig = SplitConfig()
    #: training batch size (rows)
    batch_size: int = Field(1024, ge=1)
    #: validation / test / predict batch size (``None``: ``max(batch_size, 4096)``)
    eval_batch_size: int | None = Field(None, ge=1)
    #: a sampler component: negatives for training (data-side) or a retrieval task's sampled softmax
    #: (model-side); see ``docs/ranking.md``
    sampler: Component = {"name": "none"}
    min_count: Union[int, dict[str, int]] = Field(1, description="categories seen fewer times in train map to OOV: "
                                                  "one count (>= 1) for every vocabulary, or per column `{uid: 5}` "
                                                  "(unlisted columns: 1)")
    #: ``{column: n}`` (n >= 1): keep the ``n`` most frequent values of the column's vocabulary
    #: (after ``min_count``; ties in vocabulary order), the rest map to OOV
    max_vocab: dict[str, int] = {}
    #: ``{column: N}`` (N >= 1): hash the values of a categorical / multi-categorical feature into
    #: ``N`` buckets instead of a vocabulary (code ``1 + stable_hash(value) mod N``; see ``docs/prepare.md``)
    hash_buckets: dict[str, int] = {}
    #: missing values (empty, NaN, inf) of numeric features: ``error`` (default), ``mean``, ``median``,
    #: ``zero`` or a number, for every numeric feature or per column ``{age: mean, income: 0}``
    fill_missing: Union[FillPolicy, dict[str, FillPolicy]] = "error"
    #: ``{column: [low, high]}``: numeric values clipped to this range (raw units) before standardizing
    clip: dict[str, tuple[float, float]] = {}
    #: ``{name: {of, share_with, max_len, fields}}``: sequence features (dataset columns or
    #: histories built from the log), see :class:`SequenceConfig`
    sequences: dict[str, SequenceConfig] = {}
    #: train from Parquet directories without loading them (:class:`StreamConfig`); absent: in memory
    stream: StreamConfig | None = None

    @field_validator("fill_missing", mode="before")
    @classmethod
    def _fill_policies(cls, v: Any) -> Any:
        def check(policy: Any, where: str) -> None:
            if isinstance(policy, bool) or not (policy in FILL_POLICIES or isinstance(policy, (int, float))):
                near = difflib.get_close_matches(str(policy), list(FILL_POLICIES), n=1)
                raise ValueError(f"{where}{policy!r} is not a fill policy"
                                 + (f"; did you mean {near[0]!r}?" if near else ".")
                                 + " Use error, mean, median, zero or a number, for every numeric feature "
                                 "(`fill_missing: mean`) or per column (`fill_missing: {age: mean}`).")

        if isinstance(v, dict):
            for col, policy in v.items():
                check(policy, f"'{col}': ")
        else:
            check(v, "")
        return v

    @field_validator("min_count", "max_vocab", "hash_buckets")
    @classmethod
    def _positive_counts(cls, v: Any) -> Any:
        for col, n in (v.items() if isinstance(v, dict) else [(None, v)]):
            if n < 1:
                raise ValueError(f"{'' if col is None else repr(col) + ': '}{n} is not a count >= 1")
        return v

    @field_validator("hash_buckets")
    @classmethod
    def _hashed_keep_no_vocabulary(cls, v: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        too_big = {c: n for c, n in v.items() if n > MAX_HASH_BUCKETS}
        if too_big:
            col, n = next(iter(too_big.items()))
            raise ValueError(f"'{col}': {n:,} buckets is more than {MAX_HASH_BUCKETS:,} (2^31 - 2): its embedding "
                             f"table would hold {n + 1:,} rows, {(n + 1) * 16 * 4 / 2**30:,.0f} GiB at dim 16 "
                             "before gradients and optimizer state, and `mtlframe prepare` keeps one byte per bucket. "
                             "Use fewer buckets (a few times the distinct values: the collision report of "
                             "`mtlframe prepare` gives the count for 1%), and shard the tables that stay too big "
                             "for one device with the torchrec-embedding encoder (docs/torchrec.md).")
        min_count = info.data.get("min_count")
        for key, cols in (("min_count", min_count if isinstance(min_count, dict) else {}),
                          ("max_vocab", info.data.get("max_vocab") or {})):
            both = [c for c in cols if c in v]
            if both:
                raise ValueError(f"{', '.join(map(repr, both))} is in both data.hash_buckets and data.{key}: a hashed "
                                 f"column keeps no vocabulary to cut; remove it from data.{key}.")
        return v

    def feature_key_problems(self, features: Mapping[str, str]) -> list[tuple[str, str]]:
        """``(recipe key, message)`` for each per-column data key naming a column that is not a
        feature of the right type: ``fill_missing`` / ``clip`` (numeric), ``min_count`` /
        ``max_vocab`` (categorical, multi-categorical, sequence), ``hash_buckets`` (categorical,
        multi-categorical), a sequence's ``share_with`` a hashed feature. ``features``: ``column -> type``."""
        def of(*types: str) -> list[str]:
            return [c for c, t in features.items() if t in types]

        vocab_types = ("categorical", "multi_categorical", "sequence")
        checks = [("fill_missing", self.fill_missing if isinstance(self.fill_missing, dict) else {}, ("numeric",)),
                  ("clip", self.clip, ("numeric",)),
                  ("min_count", self.min_count if isinstance(self.min_count, dict) else {}, vocab_types),
                  ("max_vocab", self.max_vocab, vocab_types),
                  ("hash_buckets", self.hash_buckets, ("categorical", "multi_categorical"))]
        problems = []
        for key, cols, types in checks:
            allowed = of(*types)
            kind = " or ".join(t.replace("_", "-") for t in types)
            for col in cols:
                if col not in allowed:
                    problems.append((f"data.{key}.{col}", f"'{col}' is not a {kind} feature of the model's encoders"
                                     + near_hint(closest(col, allowed), ".")
                                     + f" {kind.capitalize()} features: {', '.join(allowed) or 'none'}."))
        for name, seq in self.sequences.items():
            if seq.share_with in self.hash_buckets:
                problems.append((f"data.sequences.{name}.share_with", f"'{seq.share_with}' is hashed "
                                 f"(data.hash_buckets.{seq.share_with}); a sequence shares the codes of a "
                                 "vocabulary. Drop share_with, or remove the column from data.hash_buckets."))
        return problems

    def preprocessor_options(self, features: Mapping[str, str]) -> dict[str, Any]:
        """The :class:`~mtlframe.preprocess.Preprocessor` keyword arguments this section sets for
        ``features`` (``column -> type``): ``min_count``, ``max_vocab``, ``hash_buckets``,
        ``fill_missing`` and ``clip`` (numeric columns)."""
        numeric = [c for c, t in features.items() if t == "numeric"]
        return {"min_count": dict(self.min_count) if isinstance(self.min_count, dict) else self.min_count,
                "max_vocab": dict(self.max_vocab), "hash_buckets": dict(self.hash_buckets),
                "fill_missing": {c: self.fill_policy(c) for c in numeric},
                "clip": {c: r for c, r in self.clip.items() if c in numeric}}

    @field_validator("clip")
    @classmethod
    def _clip_ranges(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for col, (low, high) in v.items():
            if not low < high:
                raise ValueError(f"clip range of '{col}' must be [low, high] with low < high, got [{low:g}, {high:g}]")
        return v

    @field_validator("sequences")
    @classmethod
    def _sequence_names(cls, v: dict[str, SequenceConfig]) -> dict[str, SequenceConfig]:
        for name, seq in v.items():
            if not name or ":" in name or "/" in name:
                raise ValueError(f"sequence name '{name}' must be non-empty and contain no ':' or '/' "
                                 "(its side fields are the batch keys '<name>:<field>')")
            if seq.of is not None and seq.of == name:
                raise ValueError(f"sequences.{name}: a history needs a new column name, not the column it is "
                                 f"built of ('{seq.of}'); e.g. hist_{seq.of}: {{of: {seq.of}}}")
        return v

    def fill_policy(self, column: str) -> "FillPolicy":
        """The ``fill_missing`` policy of one numeric column (``error`` when unlisted)."""
        if isinstance(self.fill_missing, dict):
            return self.fill_missing.get(column, "error")
        return self.fill_missing


#: keys of a task that only a ``retrieval`` task takes (its two-tower head)
RETRIEVAL_KEYS = ("dim", "similarity", "temperature")


class TaskConfig(_Strict):
    """One task (``tasks.<task>``, named by its key): its label column, type, loss weight and metrics."""

    #: ``binary`` (logloss), ``regression`` (MSE), ``multiclass`` (cross-entropy) or ``retrieval`` (a two-tower
    #: score of the row's user and item, evaluated by full ranking; see ``docs/retrieval.md``)
    type: Literal["binary", "regression", "multiclass", "retrieval"]
    #: the label column of the dataset
    label: str
    #: static loss weight (the ``static`` combiner; a prior for the others)
    weight: float = Field(1.0, ge=0.0)
    #: metric names, the first is the task's primary metric (``None``: by type, binary ``[auc, logloss]``,
    #: regression ``[rmse, mae]``, multiclass ``[accuracy, logloss]``, retrieval the full-ranking metrics)
    metrics: list[str] | None = None
    #: label value that means "no label" (e.g. -1): those rows are masked like an empty label
    missing_label: Union[float, str, None] = None
    #: retrieval tasks: width ``d`` of the user and item vectors
    dim: int | None = Field(None, ge=1)
    #: retrieval tasks: ``dot`` (inner product) or ``cosine`` (inner product of L2-normalized vectors)
    similarity: Literal["dot", "cosine"] | None = None
    #: retrieval tasks: the score is ``similarity / temperature``
    temperature: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _retrieval_keys(self) -> "TaskConfig":
        if self.type != "retrieval":
            given = [k for k in RETRIEVAL_KEYS if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} {'is a key' if len(given) == 1 else 'are keys'} of retrieval "
                                 f"tasks (the two-tower head), and this task is {self.type}; remove "
                                 f"{'it' if len(given) == 1 else 'them'} or set type: retrieval")
            return self
        self.dim = self.dim if self.dim is not None else 64
        self.similarity = self.similarity or "cosine"
        self.temperature = self.temperature if self.temperature is not None else (0.05 if self.similarity == "cosine"
                                                                                  else 1.0)
        return self

    @field_validator("missing_label")
    @classmethod
    def _missing_marker(cls, v: Union[float, str, None], info: Any) -> Union[float, str, None]:
        kind = info.data.get("type")
        if kind in ("binary", "regression") and isinstance(v, str):
            raise ValueError(f"missing_label {v!r} is not a number; {kind} labels are numbers, so the marker is one "
                             "too (e.g. -1)")
        if kind == "binary" and v is not None and v in (0, 1):
            raise ValueError(f"missing_label {v:g} is a binary label value; pick a value other than 0 and 1 (e.g. -1)")
        return v


class ModelConfig(_Strict):
    """The model: encoders (columns -> ``x [B, D]``), a backbone shared by the tasks, and towers."""

    #: encoder components; their outputs are concatenated into ``x [B, D]``
    encoders: list[Component] = Field(min_length=1)
    #: serves the non-retrieval tasks; may be left out when every task is a retrieval task
    backbone: Component | None = None
    #: the tower component of every task (a retrieval task builds it twice: user and item tower)
    tower: Component = {"name": "mlp"}
    #: ``{task: tower component}``: a different tower for one task
    towers: dict[str, Component] = {}
    #: which parameters gradient-level combiners balance (see ``docs/recipes.md``)
    shared: Literal["encoders+backbone", "backbone", "encoders"] = "encoders+backbone"


class OptimizerConfig(_Strict):
    """The optimizer of the dense parameters (sparse embedding tables: ``sparse_optimizer``)."""

    #: the torch optimizer
    name: Literal["adam", "adamw", "sgd", "adagrad"] = "adam"
    #: learning rate
    lr: float = Field(1e-3, gt=0)
    #: L2 penalty (AdamW: decoupled weight decay)
    weight_decay: float = Field(0.0, ge=0)
    #: SGD momentum
    momentum: float = Field(0.0, ge=0)
    #: Adam/AdamW's fused kernel (one kernel for all parameters; CPU and CUDA). None = when supported.
    fused: bool | None = None
    #: update of sparse embedding tables (encoder ``sparse: true``): ``auto`` (SparseAdam under
    #: Adam/AdamW, the optimizer itself under Adagrad/SGD), ``sparse_adam``, or ``rowwise_adagrad``
    #: (one accumulator per row: the least optimizer memory). See ``mtlframe.optim``.
    sparse_optimizer: Literal["auto", "sparse_adam", "rowwise_adagrad"] = "auto"
    #: learning rate of the sparse tables' optimizer (None: ``lr``)
    sparse_lr: float | None = Field(None, gt=0)
    #: learning-rate schedule ``{name: cosine | linear-warmup | step | plateau | onecycle, interval: step |
    #: epoch, ...}`` (component kind ``scheduler``; see ``mtlframe.schedulers``); None: a constant rate
    scheduler: Component | None = None


class CompileConfig(_Strict):
    """``torch.compile`` options for ``trainer.compile`` (see ``torch.compile``)."""

    #: ``torch.compile``'s ``mode``
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    #: ``torch.compile``'s ``dynamic`` (``None``: detect dynamic shapes)
    dynamic: bool | None = None
    #: ``torch.compile``'s ``fullgraph`` (``true``: a graph break is an error)
    fullgraph: bool = False
    #: ``torch.compile``'s ``backend``
    backend: str = "inductor"


#: ``trainer.precision`` values PyTorch Lightning 2 accepts (numbers may be written bare: ``16``)
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "32", "16", "bf16", "64")


#: ``trainer.strategy`` values mtlframe trains with (Lightning 2.6's names): every process holds the
#: whole model and Lightning's DDP averages the gradients, which is what mtlframe's combiners, metrics
#: sync, sparse tables and resume are built and tested on (``tests/test_multinode.py``)
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_false", "ddp_find_unused_parameters_true", "ddp_fork",
              "ddp_fork_find_unused_parameters_false", "ddp_fork_find_unused_parameters_true", "ddp_notebook",
              "ddp_notebook_find_unused_parameters_false", "ddp_notebook_find_unused_parameters_true",
              "single_device")
_FSDP = ("FSDP shards every parameter, gradient and optimizer state across the processes, which mtlframe does "
         "not support: on CPU Lightning 2.6 refuses it (\"The strategy `fsdp` requires a GPU accelerator\") and so "
         "does torch (\"FSDP needs a non-CPU accelerator device\"); on a GPU the gradient-level combiners (pcgrad, "
         "cagrad, ...) and gradient clipping would work on each process's shard instead of the whole gradient, and "
         "sparse embedding tables have no sharded form. Embedding tables too big for one device are sharded by the "
         "mtlframe-torchrec encoder under `strategy: ddp` (docs/torchrec.md)")
_DEEPSPEED = ("DeepSpeed is not supported: its ZeRO stages partition the optimizer state and gradients, which the "
              "gradient-level combiners, sparse tables and mtlframe's resume state do not follow (and the "
              "`deepspeed` package is not a dependency). Use `strategy: ddp`")
_XLA = "TPU/XLA training is not supported by mtlframe (not tested); use `accelerator: cpu | gpu` with `strategy: ddp`"
#: refused ``trainer.strategy`` values (Lightning names them) -> the reason
REFUSED_STRATEGIES: dict[str, str] = {
    **dict.fromkeys(("fsdp", "fsdp_cpu_offload"), _FSDP),
    **dict.fromkeys(("deepspeed", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_2_offload",
                     "deepspeed_stage_3", "deepspeed_stage_3_offload", "deepspeed_stage_3_offload_nvme"), _DEEPSPEED),
    **dict.fromkeys(("ddp_spawn", "ddp_spawn_find_unused_parameters_false", "ddp_spawn_find_unused_parameters_true"),
                    "ddp_spawn pickles the model, the data and every callback into new processes and copies the "
                    "weights back through a queue; mtlframe's run callbacks (checkpoints, status, resume) cannot be "
                    "pickled. Use `strategy: ddp`: Lightning starts the same processes by running the command "
                    "again, with the same result"),
    **dict.fromkeys(("xla", "xla_debug", "single_xla", "single_tpu"), _XLA),
}


def check_strategy(v: str) -> str:
    """``v`` if mtlframe trains with Lightning strategy ``v`` (:data:`STRATEGIES`).

    Raises:
        ValueError: a strategy refused (:data:`REFUSED_STRATEGIES`, with the reason) or unknown to
            Lightning (with the closest name); recipe validation reports it at ``trainer.strategy``.
    """
    if v in STRATEGIES:
        return v
    if v in REFUSED_STRATEGIES:
        raise ValueError(f"strategy {v!r} is refused: {REFUSED_STRATEGIES[v]}.")
    close = difflib.get_close_matches(v, STRATEGIES, n=1)
    raise ValueError(f"strategy {v!r} is not a Lightning strategy mtlframe trains with"
                     + (f"; did you mean {close[0]!r}?" if close else ".")
                     + " Use `ddp` (several processes or machines, see docs/multinode.md) or `auto`.")


class TrainerConfig(_Strict):
    """Lightning ``Trainer`` arguments (passed through; see Lightning's documentation), plus mtlframe's
    own ``nan_loss``, ``compile`` and ``memory_warn_fraction``."""

    #: epochs to train (fewer when early stopping or ``max_steps`` stops first)
    max_epochs: int = Field(10, ge=1)
    #: optimizer steps to train (``-1``: no limit)
    max_steps: int = -1
    #: ``cpu``, ``gpu``, ``cuda``, ``mps`` or ``auto``
    accelerator: str = "auto"
    #: number of devices, a list of device indices, or ``auto``
    devices: Union[int, str, list[int]] = "auto"
    #: Lightning strategy: ``auto`` (DDP on several devices), ``ddp``, ``ddp_fork``/``ddp_notebook``,
    #: their ``_find_unused_parameters_true|false`` forms, or ``single_device``; the others are refused
    #: with the reason (:data:`REFUSED_STRATEGIES`; ``docs/multinode.md``)
    strategy: str = "auto"
    #: machines taking part in multi-node training
    num_nodes: int = Field(1, ge=1)
    #: Lightning precision (``32-true``, ``16-mixed``, ``bf16-mixed``, ...)
    precision: Union[int, str] = "32-true"
    #: clip the gradient norm to this value (``None``: no clipping)
    gradient_clip_val: float | None = None
    #: batches whose gradients are summed before each optimizer step
    accumulate_grad_batches: int = Field(1, ge=1)
    #: training values are logged every this many steps
    log_every_n_steps: int = Field(50, ge=1)
    #: use deterministic torch algorithms (slower; reproducible on GPU)
    deterministic: bool = False
    #: training batches per epoch: a count, or a fraction of the epoch (``None``: all)
    limit_train_batches: Union[int, float, None] = None
    #: validation batches per validation: a count or a fraction (``None``: all)
    limit_val_batches: Union[int, float, None] = None
    #: validate every this many training batches (int) or this fraction of an epoch (float; ``None``: once per epoch)
    val_check_interval: Union[int, float, None] = None
    #: a live progress bar in a terminal (to a file or pipe: one line per epoch with its validation metrics)
    enable_progress_bar: bool = True
    #: a NaN or infinite training loss: ``stop`` the run (an error naming the task and the step) or
    #: ``skip`` the step on every process (counted, logged as ``train/skipped_steps``)
    nan_loss: Literal["stop", "skip"] = "stop"
    #: compile the model's encoders, backbone and towers for training: ``true`` or ``{mode: ...}``
    compile: CompileConfig | None = None
    #: warn when the memory plan (weights + gradients + optimizer state) exceeds this fraction of
    #: the device's memory (GPU memory, or system RAM on CPU); see ``mtlframe.memory_plan``
    memory_warn_fraction: float = Field(0.5, gt=0)

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        return check_strategy(v)

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: Union[int, str]) -> Union[int, str]:
        if str(v) not in PRECISIONS:
            close = difflib.get_close_matches(str(v), PRECISIONS, n=1)
            raise ValueError(f"precision {v!r} is not one Lightning knows"
                             + (f"; did you mean {close[0]!r}?" if close else ".")
                             + f" Use one of: {', '.join(PRECISIONS)}.")
        return v

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_flag(cls, v: Any) -> Any:
        if v is True:
            return {}
        if v is False or v is None:
            return None
        if not isinstance(v, (dict, CompileConfig)):  # pydantic reports a ValueError, not a TypeError
            raise ValueError(  # noqa: TRY004
                f"compile is true, false or a mapping of {', '.join(CompileConfig.model_fields)} "
                "(`trainer.compile: true` or `trainer.compile: {mode: max-autotune}`)")
        return v


class CheckpointConfig(_Strict):
    """Which checkpoint is ``checkpoints/best.ckpt`` (the one ``evaluate``, ``predict`` and the test split use)."""

    #: ``auto`` (``val/score``, the mean of the tasks' primary validation metrics, negated where lower is
    #: better), a logged value (``val/like/auc``) or a task name (its primary validation metric)
    monitor: str = "auto"
    #: ``min`` or ``max`` (``auto``: from the monitored metric's direction)
    mode: Literal["auto", "min", "max"] = "auto"
    #: checkpoints kept: the k best, or ``-1`` for all (0 is refused)
    save_top_k: int = Field(1, ge=-1)
    #: also keep ``best-<task>.ckpt``, the best by each task's primary validation metric
    per_task: bool = False

    @field_validator("save_top_k")
    @classmethod
    def _keeps_one(cls, v: int) -> int:
        if v == 0:
            raise ValueError("save_top_k 0 would keep no checkpoint, and evaluate and predict need "
                             "checkpoints/best.ckpt: write 1 (the default), k > 1 to keep the k best, or -1 to keep all")
        return v


class EarlyStoppingConfig(_Strict):
    """Stop training when the monitored validation value stops improving (``None``: off); see
    ``docs/recipes.md``."""

    #: ``auto`` / ``val/score``, a logged ``val/`` value, a task name (its primary metric), ``all`` (every
    #: task stopped improving) or ``any`` (one task stopped improving)
    monitor: str = "auto"
    #: ``min`` or ``max`` (``auto``: from the metric's direction; must stay ``auto`` with ``all`` / ``any``)
    mode: Literal["auto", "min", "max"] = "auto"
    #: validations in a row without improvement before stopping
    patience: int = Field(3, ge=1)
    #: the smallest change that counts as an improvement
    min_delta: float = Field(0.0, ge=0.0)


class LoggerConfig(_Strict):
    """Where training values are logged (besides ``metrics.json`` and the run folder)."""

    #: ``csv`` (in the run folder), ``tensorboard``, ``wandb`` (offline unless you are logged in) or ``none``
    name: Literal["csv", "tensorboard", "wandb", "none"] = "csv"
    #: wandb project (``None``: ``mtlframe``)
    project: str | None = None
    #: wandb offline mode (``None``: offline unless logged in)
    offline: bool | None = None


class MetricsGroupConfig(_Strict):
    """The groups of the grouped metrics (``gauc``, ``ndcg@K``, ``recall@K``, ``hitrate@K``).

    Written ``metrics_group: user_id`` or ``metrics_group: {column: user_id, gauc_weight: clicks}``.
    ``column``: a column of the dataset (any column, feature or not); its values travel with the
    validation and test batches only. ``gauc_weight``: a group's weight in the GAUC average,
    ``impressions`` (its rows) or ``clicks`` (its positive rows)."""

    column: str = Field(min_length=1)
    gauc_weight: Literal["impressions", "clicks"] = "impressions"


class RankingConfig(_Strict):
    """The ranking half of a recipe: which features describe the user and which the item, the
    cutoffs of full-ranking evaluation and how ``mtlframe recommend`` orders items.

    ``user_features`` / ``item_features``: model features of each side; the first of each is the
    user (item) id feature. A ``retrieval`` task's user tower reads the user side, its item tower
    the item side; ``recommend`` pairs a user's row with each item's row by the same split.
    ``rank_by``: ``{task: weight}``; items are ordered by ``prod_t p_t ** w_t`` (task predictions).
    """

    user_features: list[str] = Field(min_length=1)
    item_features: list[str] = Field(min_length=1)
    #: cutoffs K of the full-ranking metrics (``ndcg@K``, ...) when a task lists none
    k: list[int] = [10, 20]
    #: recommend: the final order, a product of task predictions raised to these weights
    rank_by: dict[str, float] = {}
    #: recommend: how many retrieval candidates are re-ranked by ``rank_by``
    candidates: int = Field(200, ge=1)
    #: recommend: users the model has never seen get the most popular items, or an error
    unknown_users: Literal["popularity", "error"] = "popularity"
    #: recommend: leave out items the user has interacted with
    exclude_seen: bool = True

    @field_validator("k")
    @classmethod
    def _cutoffs(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError(f"k lists the cutoffs of the full-ranking metrics, each >= 1 (e.g. [10, 20]); got {v}")
        return v

    @model_validator(mode="after")
    def _sides(self) -> "RankingConfig":
        both = [f for f in self.user_features if f in self.item_features]
        if both:
            raise ValueError(f"{', '.join(map(repr, both))} {'is' if len(both) == 1 else 'are'} on both the user and "
                             "the item side; each feature belongs to one side (features of neither side, e.g. "
                             "context, are left out of both)")
        return self


class TaskGradientsTrack(_Strict):
    """``track.task_gradients``: log the cosine of every pair of task gradients on the shared
    parameters every ``every_n_steps`` optimizer steps (``train/grad_cos/<a>~<b>``;
    :class:`mtlframe.explain.relations.TaskGradientCosine`)."""

    #: optimizer steps between two measurements (each costs one extra forward and one backward per task)
    every_n_steps: int = Field(100, ge=1)


class TrackConfig(_Strict):
    """``track:``: extra measurements logged during training (off unless listed)."""

    task_gradients: TaskGradientsTrack | None = None


class TuneParam(_Strict):
    """One searched recipe key (``tune.space.<dotted key>``; see ``docs/tune.md``).

    ``float`` / ``int``: a value in ``[low, high]`` (``log``: sampled uniformly in log space;
    ``step``: on a grid from ``low``); ``categorical``: one of ``choices`` (any YAML values,
    mappings included, e.g. whole ``model.backbone`` entries)."""

    #: how the value is sampled: a real number, a whole number, or one of ``choices``
    type: Literal["float", "int", "categorical"]
    #: float / int: the lowest value sampled
    low: float | None = None
    #: float / int: the highest value sampled (included)
    high: float | None = None
    #: float / int: sample uniformly in log space (needs ``low > 0``)
    log: bool = False
    #: float / int: sample on a grid ``low, low + step, ...``
    step: float | None = None
    #: categorical: the values to choose from (any YAML values, whole components included)
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _range(self) -> "TuneParam":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty list of choices")
            if {"low", "high", "log", "step"} & self.model_fields_set:
                raise ValueError("a categorical parameter takes only choices (not low / high / log / step)")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes low and high, not choices (or write type: categorical)")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs low and high")
        if self.type == "int":
            for k in ("low", "high", "step"):
                v = getattr(self, k)
                if v is not None and v != int(v):
                    raise ValueError(f"an int parameter needs whole numbers; {k} is {v}")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got {self.low}")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step must be > 0, got {self.step}")
        if self.log and self.step is not None and not (self.type == "int" and self.step == 1):
            raise ValueError("log: true and step exclude each other (Optuna samples a log range continuously)")
        return self


class TuneConfig(_Strict):
    """``mtlframe tune``'s search (the ``tune:`` section; see ``docs/tune.md``). ``metric``: the
    validation value optimised, ``auto`` = ``checkpoint.monitor``; ``direction``: ``auto`` follows
    the metric. ``space``: ``{dotted recipe key: TuneParam}``. ``pruner``: ``median`` (Optuna's
    ``MedianPruner``) or ``none``; ``startup_trials``: trials sampled at random before TPE models
    the results and before the pruner prunes; ``warmup_epochs``: validation epochs a trial always
    runs before it can be pruned."""

    metric: str = "auto"
    direction: Literal["auto", "minimize", "maximize"] = "auto"
    space: dict[str, TuneParam] = Field(min_length=1)
    pruner: Literal["median", "none"] = "median"
    startup_trials: int = Field(5, ge=0)
    warmup_epochs: int = Field(1, ge=0)


class RecipeConfig(_Strict):
    """The validated recipe. Component entries stay plain dicts; they are checked against the
    registered components' constructor signatures by :func:`validate`."""

    #: seeds the split, the initialization and the batch order
    seed: int = 2026
    data: DataConfig
    tasks: dict[str, TaskConfig] = Field(min_length=1)
    model: ModelConfig
    #: a combiner component: how the task losses become one update
    combiner: Component = {"name": "static"}
    optimizer: OptimizerConfig = OptimizerConfig()
    trainer: TrainerConfig = TrainerConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    early_stopping: EarlyStoppingConfig | None = None
    logger: LoggerConfig = LoggerConfig()
    #: the column whose values define the groups of the grouped metrics (gauc, ndcg@K, ...)
    metrics_group: MetricsGroupConfig | None = None
    #: user and item sides, full-ranking cutoffs and the order of ``recommend``
    ranking: RankingConfig | None = None
    #: measurements logged during training (``track.task_gradients``)
    track: TrackConfig = TrackConfig()
    #: ``mtlframe tune``'s search space and objective (ignored by ``train``)
    tune: TuneConfig | None = None

    @field_validator("metrics_group", mode="before")
    @classmethod
    def _group_column(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"column": v}
        if v is not None and not isinstance(v, (dict, MetricsGroupConfig)):  # pydantic reports a ValueError
            raise ValueError(
                "metrics_group is a column name or a mapping {column, gauc_weight} "
                "(`metrics_group: user_id` or `metrics_group: {column: user_id, gauc_weight: clicks}`)")
        return v

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, v: dict[str, TaskConfig]) -> dict[str, TaskConfig]:
        for name in v:
            if not name or "/" in name:
                raise ValueError(f"task name '{name}' must be non-empty and contain no '/'")
        return v


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _loc_to_path(loc: tuple) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out = f"{out}.{p}" if out else str(p)
    return out


def _model_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys at ``loc`` of the fixed schema (for 'unknown key' messages)."""
    current: Any = model
    skip_key = False
    for p in loc:
        if isinstance(p, int) or current is None:
            continue
        if skip_key:  # the key of a dict[str, Model] field (a task name)
            skip_key = False
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(p)
            if field is None:
                return []
            ann = field.annotation
            args = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                current = ann
            elif typing.get_origin(ann) is dict and args:
                current, skip_key = args[-1], True
            elif args:
                current = args[0]
            else:
                current = None
        else:
            current = None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


#: names other frameworks (RecBole, FuxiCTR, torch-rechub, Keras, Lightning) give to a setting ->
#: where mtlframe keeps it. ``<task>`` stands for any task name; ``*.x`` is parameter ``x`` of the
#: component at hand (suggested only where that component has it).
KEY_ALIASES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("learning_rate", "lr_rate", "learningrate", "base_lr", "init_lr"), ("optimizer.lr",)),
    **dict.fromkeys(("l2", "l2_reg", "l2_weight", "reg_weight", "embedding_regularizer", "net_regularizer",
                     "weight_decay_rate", "embedding_reg", "l2_reg_embedding", "l2_reg_dnn"),
                    ("optimizer.weight_decay",)),
    **dict.fromkeys(("optim", "optimizer_name", "optimizer_type", "learner"), ("optimizer.name",)),
    **dict.fromkeys(("epochs", "epoch", "num_epochs", "n_epochs", "n_epoch", "max_epoch", "max_epochs",
                     "num_epoch", "train_epochs"), ("trainer.max_epochs",)),
    **dict.fromkeys(("batch", "bs", "batchsize", "batch_size", "train_batch_size", "training_batch_size"),
                    ("data.batch_size",)),
    **dict.fromkeys(("eval_batch_size", "valid_batch_size", "test_batch_size", "val_batch_size"),
                    ("data.eval_batch_size",)),
    **dict.fromkeys(("loss_weight", "loss_weights", "task_weight", "task_weights", "weight"),
                    ("tasks.<task>.weight",)),
    **dict.fromkeys(("label_col", "label_column", "label_name", "target", "target_column", "label"),
                    ("tasks.<task>.label",)),
    **dict.fromkeys(("task_type",), ("tasks.<task>.type",)),
    **dict.fromkeys(("metric", "eval_metric", "eval_metrics", "valid_metric", "metrics"), ("tasks.<task>.metrics",)),
    **dict.fromkeys(("gpus", "gpu", "gpu_id", "gpu_ids", "n_gpu", "num_gpus", "device", "device_ids"),
                    ("trainer.devices",)),
    **dict.fromkeys(("use_gpu", "accelerator"), ("trainer.accelerator",)),
    **dict.fromkeys(("patience", "stopping_step", "early_stop_patience", "earlystop_patience",
                     "early_stopping_patience"), ("early_stopping.patience",)),
    **dict.fromkeys(("grad_clip", "clip_grad_norm", "max_grad_norm", "gradient_clip", "clip_norm",
                     "gradient_clip_val"), ("trainer.gradient_clip_val",)),
    **dict.fromkeys(("fp16", "amp", "mixed_precision", "precision"), ("trainer.precision",)),
    **dict.fromkeys(("random_seed", "random_state", "rand_seed", "seed"), ("seed",)),
    **dict.fromkeys(("val_ratio", "valid_ratio", "val_size", "valid_size"), ("data.split.val",)),
    **dict.fromkeys(("test_ratio", "test_size"), ("data.split.test",)),
    **dict.fromkeys(("embed_dim", "embedding_dim", "embedding_size", "emb_dim", "emb_size", "embed_size"), ("*.dim",)),
    **dict.fromkeys(("n_experts", "n_expert", "expert_num", "num_expert", "experts", "nb_experts"), ("*.num_experts",)),
    **dict.fromkeys(("dropout_prob", "dropout_rate", "net_dropout", "drop_rate", "hidden_dropout"), ("*.dropout",)),
    **dict.fromkeys(("hidden_units", "hidden_size", "hidden_layers", "hidden_dims", "mlp_hidden_size",
                     "dnn_hidden_units", "mlp_dims", "dims"), ("*.hidden",)),
    **dict.fromkeys(("expert_hidden_units", "expert_dims", "expert_params"), ("*.expert_hidden",)),
    **dict.fromkeys(("tower_hidden_units", "tower_dims", "tower_params"), ("*.tower_hidden",)),
    **dict.fromkeys(("activation_fn", "act", "hidden_activations", "net_activation"), ("*.activation",)),
    **dict.fromkeys(("use_bn", "batch_norm", "batchnorm", "bn"), ("*.batch_norm",)),
    **dict.fromkeys(("monitor", "monitor_metric"), ("checkpoint.monitor", "early_stopping.monitor")),
}


def _schema_homes(model: type[BaseModel] = None, prefix: str = "",  # type: ignore[assignment]
                  out: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """``key -> [dotted path of every place the fixed schema has it]`` (``tasks.<task>.weight``)."""
    model = RecipeConfig if model is None else model
    out = {} if out is None else out
    for name, fld in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        out.setdefault(name, []).append(path)
        ann = fld.annotation
        subs = [a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if subs:
            _schema_homes(subs[-1], f"{path}.<task>" if typing.get_origin(ann) is dict else path, out)
    return out


@functools.cache
def _schema_index() -> dict[str, list[str]]:
    return _schema_homes()


def _same_place(home_parent: str, where: str) -> bool:
    """Whether a schema parent (``tasks.<task>``) is the recipe location ``where`` (``tasks.ctr``)."""
    pattern = re.escape(home_parent).replace(re.escape("<task>"), r"[^.\[]+")
    return re.fullmatch(pattern, where) is not None


def key_hint(key: str, where: str, valid: list[str]) -> str:
    """The hint for an unknown ``key`` written at ``where`` (the dotted parent, ``""`` for the top),
    where ``valid`` are the keys allowed there.

    In order: another framework's name for a setting (:data:`KEY_ALIASES`: ``learning_rate`` ->
    ``optimizer.lr``), a key of the fixed schema written at the wrong level (``lr`` at the top ->
    ``optimizer.lr``), else the closest valid key (``num_expert`` -> ``num_experts``).

    Returns:
        ``" Did you mean 'x'?"``, ``" 'lr' belongs under optimizer: optimizer.lr."`` or ``""``.
    """
    norm = str(key).strip().lower().replace("-", "_")
    here = [v for v in valid if v != key]

    def placed(targets: list[str]) -> str:
        local = [t.rpartition(".")[2] for t in targets
                 if t.rpartition(".")[2] in here and _same_place(t.rpartition(".")[0], where)]
        if local:
            return f" Did you mean '{local[0]}'?"
        away = [t for t in targets if not _same_place(t.rpartition(".")[0], where)]
        if not away:
            return ""
        parents = " or ".join(sorted({t.rpartition(".")[0] or "the top level" for t in away}))
        per_task = " (one per task)" if any("<task>" in t for t in away) else ""
        leaf = away[0].rpartition(".")[2]
        if leaf != key:
            return f" mtlframe calls '{key}' {' or '.join(away)}{per_task}: write {leaf} under {parents}."
        return f" '{key}' belongs under {parents}: write {' or '.join(away)}{per_task}."

    aliases = KEY_ALIASES.get(norm, ())
    params = [a[2:] for a in aliases if a.startswith("*.")]
    if any(p in here for p in params):
        return f" Did you mean '{next(p for p in params if p in here)}'?"
    hint = placed([a for a in aliases if not a.startswith("*.")])
    if hint:
        return hint
    hint = placed(_schema_index().get(key, []) if key != "name" else [])
    if hint:
        return hint
    near = closest(str(key), here, n=1)
    if near:
        return f" Did you mean '{near[0]}'?"
    if params:
        return f" mtlframe components call it '{params[0]}' (set it on a component that has it)."
    return ""


def _pydantic_problems(exc: ValidationError, root: type[BaseModel] | None,
                       valid: list[str] | None = None, prefix: str = "",
                       component: str = "") -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = _loc_to_path(loc)
        path = f"{prefix}.{path}" if prefix and path else (prefix or path)
        if err["type"] == "extra_forbidden":
            keys = valid if valid is not None else (_model_fields(root, loc[:-1]) if root else [])
            hint = key_hint(str(loc[-1]), path.rpartition(".")[0] if "." in path else "", keys)
            of = f" for {component}" if component else ""
            problems.append((path, f"unknown key '{loc[-1]}'{of}.{hint} Valid keys: {', '.join(keys) or 'none'}."))
        elif err["type"] == "missing":
            problems.append((path, "required key is missing."))
        elif err["type"] == "literal_error" and isinstance(err.get("input"), str):
            choices = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
            near = closest(err["input"], choices, n=1)
            problems.append((path, f"{err['msg']} (got {err['input']!r})."
                             + (f" Did you mean '{near[0]}'?" if near else "")))
        elif err["type"] == "value_error" and err.get("ctx", {}).get("error") is not None:
            problems.append((path, str(err["ctx"]["error"])))  # our own validator's message, as written
        else:
            got = err.get("input")
            got_s = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
            problems.append((path, f"{err['msg']} (got {got_s})."))
    return problems


def _signature_model(factory: Any, injected: tuple[str, ...]) -> tuple[type[BaseModel], list[str]]:
    from mtlframe.validation import settable_parameters

    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable annotations: accept any value
        hints = {}
    fields: dict[str, Any] = {}
    for param in settable_parameters(factory, injected):
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), default)
    model = create_model(f"{getattr(factory, '__name__', 'Component')}Args",
                         __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields)
    return model, list(fields)


def check_component(kind: str, spec: Any, path: str, source: str | None,
                    problems: list[tuple[str, str]], checked: list | None = None) -> None:
    """Check one ``{name: ..., **args}`` entry against the registry and the constructor signature.

    When it passes and ``checked`` is given, a :class:`mtlframe.validation.Checked` record is
    appended for the component's own value checks (:func:`mtlframe.validation.check_arguments`).
    """
    from mtlframe.registry import get_registry

    if not isinstance(spec, dict):
        problems.append((path, f"must be a mapping like {{name: ...}}, got {type(spec).__name__}."))
        return
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        problems.append((f"{path}.name", f"required: the name of a registered {kind}."))
        return
    try:
        component = get_registry().get(kind, name, where=f"recipe {source or '<recipe>'}, key {path}.name")
        factory = component.load()
    except MTLFrameError as exc:
        problems.append((f"{path}.name", str(exc)))
        return
    if kind == "metric":
        return
    injected = tuple(getattr(factory, "injected", ()))
    model, valid = _signature_model(factory, injected)
    args = {k: v for k, v in spec.items() if k != "name"}
    bad_injected = [k for k in args if k in injected]
    for k in bad_injected:
        problems.append((f"{path}.{k}", f"'{k}' is filled in by mtlframe and must not be written in a recipe."))
        args.pop(k)
    probe_spec = spec
    try:
        parsed = model.model_validate(args)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, None, valid=valid, prefix=path, component=f"{kind} '{name}'"))
        # the keys that passed still get the component's own checks (the others at their defaults),
        # so a recipe's problems are reported at once rather than one round of fixes at a time
        bad = {err["loc"][0] for err in exc.errors() if err["loc"]}
        try:
            parsed = model.model_validate({k: v for k, v in args.items() if k not in bad})
        except ValidationError:
            return
        probe_spec = {k: v for k, v in spec.items() if k not in bad}
    if checked is not None and not bad_injected:
        from mtlframe.validation import Checked

        checked.append(Checked(kind, path, probe_spec, factory, {k: getattr(parsed, k) for k in valid}))


#: an extra check of a whole recipe mapping: ``data -> [(dotted path, message)]``
RecipeCheck = typing.Callable[[dict], list[tuple[str, str]]]


def validate(data: dict, source: str | None = None, lines: dict[str, int | str] | None = None,
             checks: typing.Sequence[RecipeCheck] = ()) -> RecipeConfig:
    """Validate a recipe mapping; return the typed config. ``checks`` add their problems to the
    same error (``mtlframe tune`` and ``recipe validate`` pass the search-space check, which
    validates the recipe at every searched value and so cannot live in this module).

    Raises:
        RecipeError: listing every problem found.
    """
    from mtlframe.validation import check_arguments

    problems: list[tuple[str, str]] = []
    checked: list = []
    cfg: RecipeConfig | None = None
    try:
        cfg = RecipeConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(exc, RecipeConfig))
    # components are checked even when the fixed part has problems, to report everything at once
    data_d = data.get("data") if isinstance(data.get("data"), dict) else {}
    model_d = data.get("model") if isinstance(data.get("model"), dict) else {}
    if "dataset" in data_d:
        check_component("dataset", data_d["dataset"], "data.dataset", source, problems, checked)
    if "sampler" in data_d:
        check_component("sampler", data_d["sampler"], "data.sampler", source, problems, checked)
    for i, enc in enumerate(model_d.get("encoders") or [] if isinstance(model_d.get("encoders"), list) else []):
        check_component("encoder", enc, f"model.encoders[{i}]", source, problems, checked)
    _check_repeated_features(model_d.get("encoders"), problems)
    if model_d.get("backbone") is not None:  # None: a saved recipe whose tasks are all retrieval tasks
        check_component("backbone", model_d["backbone"], "model.backbone", source, problems, checked)
    check_component("tower", model_d.get("tower", {"name": "mlp"}), "model.tower", source, problems, checked)
    towers = model_d.get("towers") or {}
    if isinstance(towers, dict):
        tasks_d = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}
        for t, spec in towers.items():
            if t not in tasks_d:
                near = closest(str(t), tasks_d)
                problems.append((f"model.towers.{t}", f"no task named '{t}'"
                                 + near_hint(near) + f" Tasks: {', '.join(tasks_d)}."))
            check_component("tower", spec, f"model.towers.{t}", source, problems, checked)
    check_component("combiner", data.get("combiner", {"name": "static"}), "combiner", source, problems, checked)
    _check_scheduler(data.get("optimizer"), source, problems, checked)
    _check_metrics(data, source, problems)
    _check_ranking(data, problems)
    _check_stream(data, problems)
    for check in checks:  # e.g. every searched key and value, as trials will meet them
        problems.extend(check(data))
    # the components' own value checks (constructors, validate_args) on the entries that passed
    check_arguments(data, checked, problems)
    if problems:
        raise RecipeError(problems, source, lines)
    return cfg  # type: ignore[return-value]


def _check_scheduler(optimizer: Any, source: str | None, problems: list[tuple[str, str]], checked: list) -> None:
    """``optimizer.scheduler``: a registered schedule with its arguments, and an ``interval`` it supports."""
    spec = optimizer.get("scheduler") if isinstance(optimizer, dict) else None
    if spec is None:
        return
    if not isinstance(spec, dict):
        problems.append(("optimizer.scheduler", f"must be a mapping like {{name: cosine, interval: step}}, got "
                                                f"{type(spec).__name__}."))
        return
    before = len(problems)
    check_component("scheduler", {k: v for k, v in spec.items() if k != "interval"}, "optimizer.scheduler", source,
                    problems, checked)
    interval = spec.get("interval")
    if interval is None or len(problems) > before:
        return
    from mtlframe.registry import get_registry

    allowed = tuple(getattr(get_registry().get("scheduler", spec["name"]).load(), "intervals", ("step", "epoch")))
    if interval not in allowed:
        problems.append(("optimizer.scheduler.interval", f"'{interval}' is not an interval of scheduler "
                                                         f"'{spec['name']}'; use {' or '.join(allowed)}."))


def _check_ranking(data: dict, problems: list[tuple[str, str]]) -> None:
    """Retrieval tasks and the ``ranking:`` section: the sides name encoder features, a retrieval
    task has the sides and negatives to learn from, ``rank_by`` names tasks, and a backbone is
    given when some task needs one."""
    tasks = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}
    types = {t: v.get("type") for t, v in tasks.items() if isinstance(v, dict)}
    retrieval = [t for t, typ in types.items() if typ == "retrieval"]
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    ranking = data.get("ranking") if isinstance(data.get("ranking"), dict) else None
    others = [t for t, typ in types.items() if typ in TASK_TYPES and typ != "retrieval"]
    if others and model.get("backbone") is None and "backbone" not in model:
        problems.append(("model.backbone", f"task{'s' if len(others) > 1 else ''} {', '.join(map(repr, others))} "
                                           "need a backbone (e.g. `backbone: {name: mmoe}`); only retrieval tasks "
                                           "go without one."))
    for t in retrieval:
        if ranking is None:
            problems.append((f"tasks.{t}.type", f"retrieval task '{t}' scores a user vector against an item vector: "
                                                "add a `ranking:` section naming each side's features, e.g. "
                                                "`ranking: {user_features: [user_id, age], item_features: [item_id, "
                                                "genres]}` (the first of each is the id feature)."))
    # no sampler is the `none` sampler: the same verdict as for the resolved recipe a checkpoint saves
    sampler = data["data"].get("sampler", {"name": "none"}) if isinstance(data.get("data"), dict) else None
    factory = _sampler_factory(sampler)
    if (retrieval and factory is not None and getattr(factory, "side", "data") != "model"
            and not getattr(factory, "resamples", True)):
        problems.append(("data.sampler", f"retrieval task{'s' if len(retrieval) > 1 else ''} "
                                         f"{', '.join(map(repr, retrieval))} learn{'' if len(retrieval) > 1 else 's'} "
                                         f"from negatives, and sampler '{sampler['name']}' gives none: use a "
                                         "model-side sampler (`sampler: {name: in-batch, item_feature: item_id}` "
                                         "or `mixed`: a sampled softmax) or a data-side one (`uniform-negatives`, "
                                         "`popularity-negatives`: pointwise, sampled rows labelled 0)."))
    if ranking is None:
        return
    encoded = [f for enc in (model.get("encoders") if isinstance(model.get("encoders"), list) else [])
               if isinstance(enc, dict) for f in (enc.get("features") or []) if isinstance(f, str)]
    for side in ("user_features", "item_features"):
        feats = ranking.get(side)
        for j, f in enumerate(feats if isinstance(feats, list) else []):
            if isinstance(f, str) and f not in encoded:
                problems.append((f"ranking.{side}[{j}]", f"'{f}' is not a feature of the model's encoders"
                                 + near_hint(closest(f, encoded), ".")
                                 + f" Encoded features: {', '.join(encoded) or 'none'}."))
    problems += _id_feature_problems(ranking, model)
    hashed = (data.get("data") or {}).get("hash_buckets") if isinstance(data.get("data"), dict) else None
    for side, who in (("user_features", "user"), ("item_features", "item")):
        feats = ranking.get(side)
        first = feats[0] if isinstance(feats, list) and feats else None
        if isinstance(hashed, dict) and isinstance(first, str) and first in hashed:
            problems.append((f"data.hash_buckets.{first}", f"'{first}' is the ranking's {who} id feature "
                             f"(ranking.{side}[0]): full ranking and recommend tell {who}s apart by their codes, and "
                             f"hashed {who}s sharing a bucket would be one {who} (an unseen {who} no longer maps to "
                             "the out-of-vocabulary code). Give it a vocabulary (data.max_vocab caps its size)."))
    rank_by = ranking.get("rank_by")
    problems += rank_by_problems(rank_by if isinstance(rank_by, dict) else {}, types)
    problems += _sampler_side_problems(sampler, factory, ranking, retrieval, data)


def _check_stream(data: dict, problems: list[tuple[str, str]]) -> None:
    """``data.stream``: what a stream of Parquet batches cannot do is refused at its key, with the
    reason (``docs/streaming.md``): another dataset than ``parquet``, a ``data.split`` (the split is
    by directory), a ``ranking`` section, a training sampler, sequence features, grouped metrics,
    a ``median`` fill, and a feature that is a task's label column."""
    data_d = data.get("data") if isinstance(data.get("data"), dict) else {}
    if not isinstance(data_d.get("stream"), dict):
        return
    dataset = data_d.get("dataset") if isinstance(data_d.get("dataset"), dict) else {}
    if dataset.get("name") != "parquet":
        problems.append(("data.dataset.name", f"data.stream reads directories of Parquet files; the dataset must be "
                                              f"`{{name: parquet, path: DIR}}`, not '{dataset.get('name')}'."))
    split = data_d.get("split") if isinstance(data_d.get("split"), dict) else {}
    changed = sorted(k for k, v in split.items() if k in SplitConfig.model_fields
                     and v != SplitConfig.model_fields[k].default)
    if changed:
        problems.append(("data.split", f"with data.stream the split is by directory (data.dataset.path trains, "
                                       f"data.stream.val / data.stream.test evaluate); a row split "
                                       f"({', '.join(changed)}) needs the whole table in memory. Remove data.split."))
    if data.get("ranking") is not None:
        problems.append(("ranking", "full-ranking evaluation needs every item and every user's rows in memory, "
                                    "which data.stream does not hold; remove the ranking section (and retrieval "
                                    "tasks) or train in memory."))
    sampler = data_d.get("sampler")
    if isinstance(sampler, dict) and sampler.get("name", "none") != "none":
        problems.append(("data.sampler", f"sampler '{sampler.get('name')}' draws rows from the whole training table, "
                                         "which data.stream does not hold; remove it or train in memory."))
    if data_d.get("sequences"):
        problems.append(("data.sequences", "sequence features are not streamed (a history needs each user's earlier "
                                           "rows); remove them or train in memory."))
    declared = dataset.get("features") if isinstance(dataset.get("features"), dict) else {}
    for col, typ in declared.items():
        if typ == "sequence":
            problems.append((f"data.dataset.features.{col}", f"'{col}' is a sequence feature, which data.stream "
                                                             "does not support yet; drop it or train in memory."))
    if data.get("metrics_group") is not None:
        problems.append(("metrics_group", "grouped metrics (gauc, ndcg@K, ...) need each group's rows together, "
                                          "which evaluation batches streamed over processes do not give; remove "
                                          "metrics_group and the grouped metrics, or evaluate in memory."))
    fill = data_d.get("fill_missing")
    for col, policy in (fill.items() if isinstance(fill, dict) else [("", fill)]):
        if policy == "median":
            problems.append((f"data.fill_missing{'.' + col if col else ''}",
                             "median needs every value of the column in memory, which the prepare pass of "
                             "data.stream does not hold; use mean, zero or a number."))
    tasks = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}
    labels = {t.get("label"): name for name, t in tasks.items() if isinstance(t, dict)}
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    for i, enc in enumerate(model.get("encoders") if isinstance(model.get("encoders"), list) else []):
        for j, col in enumerate(enc.get("features") or [] if isinstance(enc, dict) else []):
            if isinstance(col, str) and col in labels:
                problems.append((f"model.encoders[{i}].features[{j}]",
                                 f"feature '{col}' is the label column of task '{labels[col]}' (label leakage: the "
                                 "model would read the answer). Remove it from the encoder's features."))


def _id_feature_problems(ranking: dict, model: dict) -> list[tuple[str, str]]:
    """The first feature of each side identifies users (items): it must be read by an encoder of
    categorical features (found before any data is read, as ``train`` would find it after)."""
    from mtlframe.registry import get_registry

    problems = []
    encoders = model.get("encoders") if isinstance(model.get("encoders"), list) else []
    for side in ("user_features", "item_features"):
        feats = ranking.get(side)
        if not (isinstance(feats, list) and feats and isinstance(feats[0], str)):
            continue
        for enc in encoders:
            if not (isinstance(enc, dict) and feats[0] in (enc.get("features") or [])
                    and isinstance(enc.get("name"), str)):
                continue
            try:
                accepts = getattr(get_registry().get("encoder", enc["name"]).load(), "accepts", frozenset())
            except MTLFrameError:
                break  # reported at the encoder's name
            if accepts and "categorical" not in accepts:
                problems.append((f"ranking.{side}[0]", f"the first {side.split('_')[0]} feature is the id feature and "
                                                       f"must be categorical; '{feats[0]}' is read by encoder "
                                                       f"'{enc['name']}' ({', '.join(sorted(accepts))}). Put the id "
                                                       "column first."))
            break
    return problems


def _sampler_factory(sampler: Any) -> Any:
    if not (isinstance(sampler, dict) and isinstance(sampler.get("name"), str)):
        return None
    from mtlframe.registry import get_registry

    try:
        return get_registry().get("sampler", sampler["name"]).load()
    except MTLFrameError:
        return None  # reported at data.sampler.name


def _sampler_side_problems(sampler: Any, factory: Any, ranking: dict, retrieval: list[str],
                           data: dict) -> list[tuple[str, str]]:
    """The sampler's id features must be the ``ranking`` sides' (a sampler that draws users
    instead of items, or keeps the positive's item features on a negative row, trains silently
    wrong); a data-side sampler must label a retrieval task's rows; a history is user side."""
    problems: list[tuple[str, str]] = []
    users = ranking.get("user_features") if isinstance(ranking.get("user_features"), list) else []
    items = ranking.get("item_features") if isinstance(ranking.get("item_features"), list) else []
    seqs = (data.get("data") or {}).get("sequences") if isinstance(data.get("data"), dict) else None
    for j, f in enumerate(items):
        if isinstance(seqs, dict) and f in seqs:
            problems.append((f"ranking.item_features[{j}]", f"'{f}' is a sequence (a behaviour history), which "
                                                            "describes a user, not an item: list it in "
                                                            "ranking.user_features."))
    if factory is None or not isinstance(sampler, dict) or not items:
        return problems
    item_id, user_id = items[0], users[0] if users else None
    if getattr(factory, "side", "data") == "model":
        batch = (data.get("data") or {}).get("batch_size", 1024)
        if retrieval and not getattr(factory, "draws_extra", False) and isinstance(batch, int) and batch < 2:
            problems.append(("data.batch_size", f"sampler '{sampler.get('name')}' takes each row's negatives from "
                                                "the other rows of its batch, and a batch of 1 has none (the loss "
                                                "would be 0): use a batch of at least 2 (hundreds are usual), or "
                                                "the mixed sampler."))
        got = sampler.get("item_feature")
        if isinstance(got, str) and got != item_id:
            problems.append(("data.sampler.item_feature", f"'{got}' is not the item id feature of the ranking "
                                                          f"section ('{item_id}', the first of "
                                                          f"ranking.item_features): the negatives and the logQ "
                                                          f"correction are per item. Set item_feature: {item_id}."))
        return problems
    if not getattr(factory, "resamples", True):
        return problems
    got_items, got_user, task = sampler.get("item_features"), sampler.get("user_feature"), sampler.get("task")
    if isinstance(got_items, list) and got_items:
        if got_items[0] != item_id:
            problems.append(("data.sampler.item_features[0]", f"'{got_items[0]}' is not the item id feature of "
                                                              f"the ranking section ('{item_id}'): put it first."))
        missing = [f for f in items if f not in got_items]
        if missing:
            problems.append(("data.sampler.item_features", f"{', '.join(map(repr, missing))} of "
                                                           "ranking.item_features are missing: a negative row would "
                                                           "keep the positive item's values of them. List every "
                                                           f"item-side feature: {items}."))
    if isinstance(got_user, str) and user_id is not None and got_user != user_id:
        problems.append(("data.sampler.user_feature", f"'{got_user}' is not the user id feature of the ranking "
                                                      f"section ('{user_id}', the first of ranking.user_features)."))
    if retrieval and isinstance(task, str) and task not in retrieval:
        problems.append(("data.sampler.task", f"the sampled negatives go to '{task}', so retrieval task"
                                              f"{'s' if len(retrieval) > 1 else ''} {', '.join(map(repr, retrieval))} "
                                              "would learn from positives only: set task to the retrieval task, or "
                                              "use a model-side sampler (in-batch, mixed)."))
    return problems


#: task types whose prediction is a probability that ``ranking.rank_by`` can fuse (retrieval: the
#: sigmoid of the pair's logit)
FUSABLE_TYPES = ("binary", "retrieval")


def rank_by_problems(rank_by: Mapping[str, Any], task_types: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(dotted path, message)`` of every problem of a ``ranking.rank_by`` mapping.

    A weight must be a finite number >= 0 and name a task whose prediction is a probability:
    binary tasks and retrieval tasks (``sigmoid`` of the pair's logit). A regression prediction
    (a rating) is not a probability and a multiclass one is a distribution, so they are refused
    rather than mapped: fuse on a binary task derived from them (``like``: rating >= 4), and their
    predictions still appear in the output as ``<task>_pred``.
    """
    problems: list[tuple[str, str]] = []
    for name, w in rank_by.items():
        path = f"ranking.rank_by.{name}"
        if name not in task_types:
            problems.append((path, f"no task named '{name}'" + near_hint(closest(str(name), task_types))
                             + f" Tasks: {', '.join(task_types)}."))
            continue
        typ = task_types[name]
        if typ not in TASK_TYPES:  # an invalid type is reported at tasks.<name>.type
            continue
        if typ not in FUSABLE_TYPES:
            problems.append((path, f"task '{name}' is a {typ} task: its prediction is not a probability, so it "
                                   "cannot be a factor of prod_t p_t ** w_t. Fuse binary or retrieval tasks (derive a "
                                   "binary task from it, e.g. like: rating >= 4); its prediction still appears in the "
                                   f"output as {name}_pred."))
        elif isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            problems.append((path, f"the weight of '{name}' must be a finite number >= 0 (an exponent of its "
                                   f"probability), got {w!r}."))
    return problems


def _check_repeated_features(encoders: Any, problems: list[tuple[str, str]]) -> None:
    """A feature column is encoded once: a column listed twice (in one encoder's ``features`` or in
    two encoders) is a problem at the second place, naming the first."""
    first: dict[str, str] = {}
    for i, enc in enumerate(encoders if isinstance(encoders, list) else []):
        feats = enc.get("features") if isinstance(enc, dict) else None
        for j, col in enumerate(feats if isinstance(feats, list) else []):
            if not isinstance(col, str):
                continue
            path = f"model.encoders[{i}].features[{j}]"
            if col in first:
                problems.append((path, f"feature '{col}' is listed twice: here and at {first[col]}. Each column is "
                                       "encoded once; remove one of the two entries."))
            else:
                first[col] = path


def default_task_metrics(task_type: str, ks: Any = None) -> list[str]:
    """A task's metrics when its recipe entry lists none: :data:`~mtlframe.features.DEFAULT_METRICS`;
    for a ``retrieval`` task the full-ranking metrics at every K of ``ranking.k`` (``ks``; default
    ``[10, 20]``), ``ndcg@<first K>`` first (the primary)."""
    if task_type == "retrieval":
        from mtlframe.ranking import default_ranking_metrics

        ok = isinstance(ks, list) and ks and all(isinstance(k, int) and k >= 1 for k in ks)
        return default_ranking_metrics(ks if ok else [10, 20])
    return list(DEFAULT_METRICS[task_type])


def _ranking_ks(data: dict) -> Any:
    ranking = data.get("ranking")
    return ranking.get("k") if isinstance(ranking, dict) else None


def _check_ranking_metrics(tname: str, task: dict, ks: Any, problems: list[tuple[str, str]]) -> None:
    """A retrieval task's metrics are the full-ranking ones (``ndcg@10``, ...)."""
    from mtlframe.ranking import RANKING_METRICS, parse_ranking_metric

    metrics = task.get("metrics") or []
    for i, m in enumerate(metrics if isinstance(metrics, list) else []):
        if not isinstance(m, str) or parse_ranking_metric(m) is not None:
            continue
        _, sep, k = m.rpartition("@")
        k = k if sep and k.isdigit() and int(k) >= 1 else str(default_task_metrics("retrieval", ks)[0].split("@")[1])
        near = closest(m, [f"{b}@{k}" for b in RANKING_METRICS], n=1)
        problems.append((f"tasks.{tname}.metrics[{i}]",
                         f"'{m}' is not a full-ranking metric" + near_hint(near, ".")
                         + f" Retrieval task '{tname}' is evaluated by ranking the whole catalogue for each user: "
                         f"{', '.join(b + '@K' for b in RANKING_METRICS)} (K a positive integer, e.g. ndcg@10; "
                         "see docs/ranking.md). Leave `metrics` out for all of them at each K of ranking.k."))


def _check_metrics(data: dict, source: str | None, problems: list[tuple[str, str]]) -> None:
    from mtlframe.metrics.base import resolve_metric
    from mtlframe.registry import get_registry

    reg = get_registry()
    tasks = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}
    for tname, task in tasks.items():
        if isinstance(task, dict) and task.get("type") == "retrieval":
            _check_ranking_metrics(tname, task, _ranking_ks(data), problems)
            continue
        if not isinstance(task, dict) or task.get("type") not in TASK_TYPES:
            continue
        metrics = task.get("metrics") or []
        for i, m in enumerate(metrics if isinstance(metrics, list) else []):
            if not isinstance(m, str):
                continue
            path = f"tasks.{tname}.metrics[{i}]"
            try:
                _, mdef, _ = resolve_metric(m, where=f"recipe {source or '<recipe>'}, key {path}")
            except MTLFrameError as exc:
                problems.append((path, str(exc)))
                continue
            types = getattr(mdef, "task_types", TASK_TYPES)
            if task["type"] not in types:
                problems.append((path, f"metric '{m}' does not apply to {task['type']} tasks (it applies to "
                                       f"{', '.join(types)}); {task['type']} defaults: "
                                       f"{', '.join(DEFAULT_METRICS[task['type']])}"
                                       + ("; grouped metrics other than ndcg@K need 0/1 labels, ndcg@K takes a regression "
                                          "label as graded relevance."
                                          if getattr(mdef, "grouped", False) and task["type"] == "regression"
                                          else ".")))
            elif getattr(mdef, "grouped", False) and not data.get("metrics_group"):
                problems.append((path, f"metric '{m}' is computed per group (per user) and no group column is "
                                       "set: add `metrics_group: <column>` at the top level of the recipe, e.g. "
                                       "`metrics_group: user_id`."))
    _check_monitors(data, tasks, problems)
    track = data.get("track") if isinstance(data.get("track"), dict) else {}
    if track.get("task_gradients") is not None and len(tasks) < 2:
        problems.append(("track.task_gradients", f"compares the gradients of pairs of tasks and the recipe has "
                                                 f"{len(tasks)} task; remove it, or add a task."))
    trainer = data.get("trainer") if isinstance(data.get("trainer"), dict) else {}
    accumulate = trainer.get("accumulate_grad_batches", 1)
    combiner = data.get("combiner") if isinstance(data.get("combiner"), dict) else {"name": "static"}
    if isinstance(accumulate, int) and accumulate > 1 and isinstance(combiner.get("name"), str):
        try:
            comb = reg.get("combiner", combiner["name"]).load()
        except MTLFrameError:
            return
        if not getattr(comb, "supports_gradient_accumulation", True):
            problems.append(("trainer.accumulate_grad_batches",
                             f"combiner '{combiner['name']}' balances per-step gradients and does not support "
                             "gradient accumulation; set it to 1 or raise data.batch_size instead."))


def _check_monitors(data: dict, tasks: dict, problems: list[tuple[str, str]]) -> None:
    """``checkpoint.monitor`` / ``early_stopping.monitor`` must name a logged value or a task
    (its primary validation metric); ``early_stopping.monitor`` may also be ``all`` or ``any``
    (every task's primary metric, each with its own patience), which take ``mode: auto``."""
    valid = ["auto", "val/score", "train/loss_epoch"]
    names = []
    for tname, task in tasks.items():
        if not isinstance(task, dict) or task.get("type") not in TASK_TYPES:
            continue
        names.append(tname)
        metrics = (task.get("metrics") if isinstance(task.get("metrics"), list)
                   else default_task_metrics(task["type"], _ranking_ks(data)))
        valid += [f"val/{tname}/{m}" for m in metrics] + [f"train/loss/{tname}"]
    for section in ("checkpoint", "early_stopping"):
        block = data.get(section)
        monitor = block.get("monitor") if isinstance(block, dict) else None
        choices = valid + names + (["all", "any"] if section == "early_stopping" else [])
        if section == "early_stopping":  # it decides after each validation, before train/ values are logged
            choices = [c for c in choices if not c.startswith("train/")]
            if isinstance(monitor, str) and monitor.startswith("train/") and monitor in valid:
                problems.append((f"{section}.monitor", f"'{monitor}' is logged at the end of the training epoch, "
                                 "after the validation at which early stopping decides, so it would always see "
                                 "the previous epoch's value; monitor a validation value (val/...), a task, all "
                                 "or any. checkpoint.monitor can take it."))
                continue
        if isinstance(monitor, str) and monitor not in choices:
            near = closest(monitor, choices, n=1)
            hint = (" (a task name monitors its primary validation metric"
                    + ("; all / any: every task's, stopping when all / any of them stopped improving)."
                       if section == "early_stopping" else ")."))
            problems.append((f"{section}.monitor", f"'{monitor}' is not a logged value"
                             + near_hint(near, ".")
                             + f" Choose one of: {', '.join(choices)}{hint}"))
        elif monitor in ("all", "any") and block.get("mode", "auto") != "auto":
            problems.append((f"{section}.mode", f"monitor '{monitor}' watches each task's primary metric in its own "
                                                "direction; remove mode (or write mode: auto)."))


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


@dataclass
class Recipe:
    """A loaded, validated recipe.

    Attributes:
        data: the resolved mapping (after overrides), as saved next to runs and in checkpoints.
        config: the typed view.
        source: the file it came from (for messages).
    """

    data: dict
    config: RecipeConfig
    source: str | None = None
    #: ``dotted key -> line`` in ``source``, for errors found after validation (build time)
    lines: dict[str, int | str] = field(default_factory=dict, repr=False, compare=False)

    def resolved(self) -> dict:
        """The recipe with every default filled in and a relative ``data.dataset.path`` made
        absolute (when it exists), as saved in run folders and checkpoints."""
        out = self.config.model_dump(mode="json")
        dataset = out["data"]["dataset"]
        path = dataset.get("path")
        if isinstance(path, str) and path and not Path(path).is_absolute() and Path(path).exists():
            dataset["path"] = str(Path(path).resolve())
        return out

    def to_yaml(self, resolved: bool = False) -> str:
        return yaml.safe_dump(self.resolved() if resolved else self.data, sort_keys=False)

    def task_metrics(self, task: str) -> list[str]:
        t = self.config.tasks[task]
        return list(t.metrics) if t.metrics else default_task_metrics(
            t.type, self.config.ranking.k if self.config.ranking is not None else None)

    def metrics_group_column(self) -> str | None:
        """The ``metrics_group`` column when some task lists a grouped metric (else ``None``:
        the column is then not carried with the evaluation batches)."""
        from mtlframe.metrics.base import resolve_metric

        group = self.config.metrics_group
        if group is None:
            return None
        for tname, task in self.config.tasks.items():
            if task.type == "retrieval":  # full-ranking metrics: per user by construction, no group column
                continue
            if any(getattr(resolve_metric(m)[1], "grouped", False) for m in self.task_metrics(tname)):
                return group.column
        return None


def load_recipe(path: str | Path, overrides: list[str] | None = None,
                checks: typing.Sequence[RecipeCheck] = ()) -> Recipe:
    """Read, override and validate a recipe file (``checks``: see :func:`validate`).

    Raises:
        RecipeError: the file is missing, not YAML, or invalid (all problems listed at once).
    """
    p = Path(path)
    if file_problem(p) == "does not exist":
        raise RecipeError([("", f"file not found ({p.resolve()}); pass the path of a YAML recipe, "
                                "e.g. recipes/quickstart.yaml")], str(p))
    text, problem = read_text_file(p)   # a folder, a binary file (a checkpoint?), not UTF-8
    if problem:
        raise RecipeError([("", f"{problem}; pass the path of a YAML recipe, e.g. recipes/quickstart.yaml")],
                          str(p))
    data, lines = parse_yaml(text, str(p))
    if overrides:
        data = apply_overrides(data, overrides)
        lines = override_lines(lines, overrides)
    return recipe_from_dict(data, str(p), lines, checks)


def override_lines(lines: dict[str, int | str], overrides: list[str],
                   via: str = "command-line override") -> dict[str, int | str]:
    """Point errors under an overridden key at the override (``command-line override
    model.backbone.num_experts=8``, ``--grid combiner.name=pcgrad``), not at the file's old value."""
    out = dict(lines)
    for item in overrides:
        key = item.partition("=")[0].strip()
        if not key:
            continue
        canon = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in _split_path(key)).lstrip(".")
        for k in [k for k in out if k == canon or k.startswith((canon + ".", canon + "["))]:
            del out[k]
        out[canon] = f"{via} {item.strip()}"
    return out


def recipe_from_dict(data: dict, source: str | None = None, lines: dict[str, int | str] | None = None,
                     checks: typing.Sequence[RecipeCheck] = ()) -> Recipe:
    """Validate an in-memory recipe mapping (a checkpoint's, or one built in Python; ``checks``:
    see :func:`validate`)."""
    cfg = validate(data, source, lines, checks)
    return Recipe(copy.deepcopy(data), cfg, source, dict(lines or {}))
