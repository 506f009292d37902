"""Top-K recommendations per user from a checkpoint: what ``mtlframe recommend`` does, callable from Python.

Example::

    from mtlframe.recommend import recommend
    result = recommend("runs/ml/checkpoints/best.ckpt", "users.csv", k=20, output="recs.csv")
    result.users_per_second

The order of a user's list:

1. **Candidates.** With a retrieval task, its two-tower score ranks the catalogue and the top
   ``max(ranking.candidates, k)`` items not excluded go on; with no retrieval task, or a catalogue of at most
   ``candidates`` items, every catalogue item is a candidate.
2. **Fusion.** Every task scores every (user, candidate) pair through the full model
   (:meth:`MultiTaskModel.compose` pairs the user's row with the item's row) and the candidates are
   re-ranked by ``ranking.rank_by``: ``score = sum_t w_t * log p_t`` (the log of
   ``prod_t p_t ** w_t``), :func:`fuse`.
3. **Top K** by that score, ties broken by the lower catalogue position (the item's code, so the
   more frequent item in training), :func:`top_k_scored`. The same checkpoint, data and users give the
   same file, byte for byte.

Items the user has seen (any row of theirs in the training, validation or test split) are never
recommended when ``ranking.exclude_seen`` is true (the default). Users not in the data follow
``ranking.unknown_users``: ``popularity`` (the most frequent training items, ``source`` =
``popularity``) or ``error``. See ``docs/ranking.md`` (section *Recommend*).
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlframe.backbones.base import TaskInputs
from mtlframe.errors import CheckpointError, DataError, MTLFrameError
from mtlframe.ranking.evaluate import CSR
from mtlframe.recipe import FUSABLE_TYPES, rank_by_problems

#: ``log p`` of a probability below this counts as ``log(1e-12)``: a zero probability ranks last, never NaN
LOG_FLOOR = math.log(1e-12)


def log_probability(task_type: str, output: torch.Tensor) -> torch.Tensor:
    """``log p`` of a task's raw output (logits), floored at :data:`LOG_FLOOR`; shape unchanged.

    Binary and retrieval outputs are logits: ``log p = logsigmoid(logit)`` (exact, no ``log(0)``).

    Raises:
        ValueError: a task type that has no probability (see :func:`rank_by_problems`).
    """
    if task_type not in FUSABLE_TYPES:
        raise ValueError(f"a {task_type} prediction is not a probability; rank_by fuses {', '.join(FUSABLE_TYPES)} tasks")
    return torch.nn.functional.logsigmoid(output.float()).clamp_min(LOG_FLOOR)


def fuse(outputs: Mapping[str, torch.Tensor], weights: Mapping[str, float],
         task_types: Mapping[str, str]) -> torch.Tensor:
    """The ``rank_by`` score of (user, item) pairs: ``sum_t w_t * log p_t`` = ``log prod_t p_t ** w_t``.

    Args:
        outputs: ``{task: logits [...]}`` (same shape for every task, e.g. ``[U, C]``).
        weights: ``{task: w_t}`` (``ranking.rank_by``), ``w_t >= 0``.
        task_types: ``{task: type}``.

    Returns the score, float32 of the outputs' shape; higher ranks first. Ranking by it is the same
    as ranking by ``prod_t p_t ** w_t`` (the log is increasing).

    Raises:
        ValueError: ``weights`` is empty or names a task missing from ``outputs`` or without a
            probability.
    """
    if not weights:
        raise ValueError("rank_by is empty: name at least one task")
    total = None
    for task, w in weights.items():
        if task not in outputs:
            raise ValueError(f"rank_by names task '{task}', which has no output")
        part = float(w) * log_probability(task_types[task], outputs[task])
        total = part if total is None else total + part
    return total


def top_k_scored(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`mtlframe.ranking.evaluate.top_k` (the ``k`` best columns per row, ties by the lower
    column, excluded columns never) with the scores and a validity mask.

    Args:
        scores: ``[U, C]`` float scores (higher is better).
        k: how many per row, ``>= 1``.
        exclude: ``[U, C]`` bool, True where a column must not be returned (seen items).

    Returns:
        ``(values [U, k], index [U, k], valid [U, k])``: ``valid`` is False past the end of a row
        with fewer than ``k`` columns left (index ``-1``, value ``-inf`` there).

    Raises:
        MTLFrameError: a score of an allowed column is NaN (the model diverged).
    """
    from mtlframe.ranking.evaluate import top_k

    index = top_k(scores, k, exclude)
    valid = index >= 0
    values = torch.gather(scores.float(), 1, index.clamp_min(0)).masked_fill(~valid, float("-inf"))
    return values, index, valid


def popularity_order(counts: torch.Tensor) -> torch.Tensor:
    """Catalogue positions by training frequency, most frequent first; ties by the lower position.

    Args:
        counts: ``[I]`` training rows per catalogue item.

    Returns ``[I]`` int64 positions.
    """
    return torch.sort(counts.to(torch.float64), descending=True, stable=True).indices


# ------------------------------------------------------------------------------------------------
# Scoring users against the catalogue (the model part; pure tensors in, tensors out)
# ------------------------------------------------------------------------------------------------


@dataclass
class Ranked:
    """The top-K of a batch of users (catalogue positions; see :func:`rank_users`)."""

    scores: torch.Tensor          # [Ub, k] float32, the rank_by score (-inf where not valid)
    positions: torch.Tensor       # [Ub, k] int64 catalogue positions (-1 where not valid)
    valid: torch.Tensor           # [Ub, k] bool: False past the end of a short list
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)  # {task: [Ub, k] or [Ub, k, C]} raw outputs


def take_rows(x: torch.Tensor | TaskInputs, index: torch.Tensor) -> torch.Tensor | TaskInputs:
    """Rows ``index`` of encodings ``x`` (``[N, D]`` or :class:`TaskInputs`)."""
    if isinstance(x, TaskInputs):
        return TaskInputs(x.shared[index], {t: v[index] for t, v in x.tasks.items()})
    return x[index]


def cat_rows(parts: Sequence[torch.Tensor | TaskInputs]) -> torch.Tensor | TaskInputs:
    """Row-wise concatenation of encodings (``[N_i, D]`` or :class:`TaskInputs`)."""
    if isinstance(parts[0], TaskInputs):
        return TaskInputs(torch.cat([p.shared for p in parts]),
                          {t: torch.cat([p.tasks[t] for p in parts]) for t in parts[0].tasks})
    return torch.cat(list(parts))


def encode_rows(model, columns: Mapping[str, torch.Tensor], chunk: int = 65536) -> torch.Tensor | TaskInputs:
    """``model.encode`` of model-ready columns ``[N]``, ``chunk`` rows at a time: ``[N, D]`` (or
    :class:`TaskInputs`)."""
    from mtlframe.batching import num_rows, take

    n = num_rows(columns)
    device = next(iter(columns.values())).device
    return cat_rows([model.encode(take(columns, torch.arange(i, min(i + chunk, n), device=device)))
                     for i in range(0, max(n, 1), chunk)])


def _pair_outputs(model, x_users: torch.Tensor | TaskInputs, x_items: torch.Tensor | TaskInputs,
                  positions: torch.Tensor, pair_batch: int) -> dict[str, torch.Tensor]:
    """Every task's raw output for the (user ``u``, item ``positions[u, j]``) pairs: ``{task: [Ub, N, ...]}``.

    The user's encoding is paired with each item's by :meth:`MultiTaskModel.compose` (the item-side
    columns from the item's row), then the backbone, towers and retrieval heads run on the pairs,
    ``pair_batch`` at a time."""
    n_users, n = positions.shape
    flat_items = positions.reshape(-1).clamp_min(0)
    flat_users = torch.arange(n_users, device=positions.device).repeat_interleave(n)
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(flat_items), pair_batch):
        sl = slice(start, start + pair_batch)
        x = model.compose(take_rows(x_users, flat_users[sl]), take_rows(x_items, flat_items[sl]))
        for task, out in model.forward_from(x).items():
            parts.setdefault(task, []).append(out.float())
    return {t: torch.cat(v).reshape(n_users, n, *v[0].shape[1:]) for t, v in parts.items()}


def rank_users(model, task_types: Mapping[str, str], x_users: torch.Tensor | TaskInputs,
               x_items: torch.Tensor | TaskInputs, exclude: torch.Tensor | None, k: int,
               rank_by: Mapping[str, float], candidates: int, retrieval: str | None = None,
               item_vectors: torch.Tensor | None = None, pair_batch: int = 65536) -> Ranked:
    """The top ``k`` catalogue items of a batch of users, by ``rank_by`` over the full model.

    Args:
        model: a :class:`~mtlframe.model.MultiTaskModel` in eval mode (``compose``, ``retrieval``).
        task_types: ``{task: type}`` of every task of the model.
        x_users: encodings (:meth:`MultiTaskModel.encode`) of one representative row per user, ``[Ub, D]``.
        x_items: encodings of the catalogue, ``[I, D]`` (row ``j`` = position ``j``).
        exclude: ``[Ub, I]`` bool, True for items never to return (seen), or ``None``.
        k: list length.
        rank_by: ``{task: weight}`` (see :func:`fuse`).
        candidates: how many items the retrieval task passes to the fusion (``ranking.candidates``).
        retrieval: the retrieval task choosing the candidates; ``None``: every item is scored.
        item_vectors: ``[I, d]`` that task's item vectors (computed once per catalogue).
        pair_batch: (user, item) pairs per forward pass.

    Returns :class:`Ranked`. Each pair's outputs are those of the model's forward pass on the
    user's row with the item's features (what ``mtlframe predict`` gives for that row).
    """
    xu = x_users.shared if isinstance(x_users, TaskInputs) else x_users
    n_users, n_items = len(xu), len(x_items.shared if isinstance(x_items, TaskInputs) else x_items)
    if retrieval is not None and n_items > candidates:
        tower = model.retrieval[retrieval]
        first = tower.scores(tower.user_vectors(x_users), item_vectors)          # [Ub, I]
        _, cand, cvalid = top_k_scored(first, candidates, exclude)                     # [Ub, N]
    else:
        cand = torch.arange(n_items, device=xu.device).expand(n_users, n_items)
        cvalid = torch.ones_like(cand, dtype=torch.bool) if exclude is None else ~exclude
    outputs = _pair_outputs(model, x_users, x_items, cand, pair_batch)
    fused = fuse(outputs, rank_by, task_types)
    scores, idx, valid = top_k_scored(fused, k, ~cvalid)
    safe = idx.clamp_min(0)
    positions = torch.gather(cand, 1, safe).masked_fill(~valid, -1)
    picked = {}
    for task, out in outputs.items():
        index = safe if out.dim() == 2 else safe.unsqueeze(-1).expand(-1, -1, out.shape[-1])
        picked[task] = torch.gather(out, 1, index)
    return Ranked(scores, positions, valid, picked)


# ------------------------------------------------------------------------------------------------
# The command: a checkpoint, a users file -> top-K per user
# ------------------------------------------------------------------------------------------------

#: what ``ranking.unknown_users`` accepts
UNKNOWN_USERS = ("popularity", "error")


@dataclass
class RecommendResult:
    """What :func:`recommend` returns (the CLI prints it as a summary table).

    Attributes:
        output: the file written.
        frame: the rows written (``user, rank, item, score, source, <task>_pred...``).
        users: distinct users asked for.
        model_users: users ranked by the model (known: at least one row in the data).
        empty_history: of those, users with no training row (scored from a validation / test row,
            their id taking the out-of-vocabulary embedding).
        popularity_users: unknown users given the most popular items (``ranking.unknown_users: popularity``).
        short_lists: users who got fewer than ``k`` items (they have seen nearly the whole catalogue).
        catalogue: items in the catalogue.
        distinct_items: distinct items recommended.
        seconds: wall time of the ranking (data loading excluded).
        retrieval: the retrieval task that chose the candidates (``None``: every item scored).
        candidates: candidates per user passed to the fusion.
        rank_by: the fusion weights used.
        repeated: rows of the users file whose id was listed before (each user is ranked once).
    """

    output: Path | None
    frame: Any
    users: int
    model_users: int
    empty_history: int
    popularity_users: int
    short_lists: int
    catalogue: int
    distinct_items: int
    seconds: float
    retrieval: str | None
    candidates: int
    rank_by: dict[str, float] = field(default_factory=dict)
    repeated: int = 0

    @property
    def users_per_second(self) -> float:
        return self.users / self.seconds if self.seconds > 0 else float("inf")

    def summary(self) -> list[tuple[str, str]]:
        """``(what, value)`` rows of the summary table."""
        first = (f"{self.retrieval} top {self.candidates}" if self.retrieval else f"all {self.catalogue} items")
        return [("users", f"{self.users:,}" + (f" ({self.repeated:,} repeated rows dropped)" if self.repeated else "")),
                ("ranked by the model", f"{self.model_users:,}"),
                ("  with no training row", f"{self.empty_history:,}"),
                ("unknown: most popular items", f"{self.popularity_users:,}"),
                ("fewer than k items left", f"{self.short_lists:,}"),
                ("candidates", first),
                ("rank_by", ", ".join(f"{t}^{w:g}" for t, w in self.rank_by.items())),
                ("rows written", f"{len(self.frame):,}"),
                ("distinct items / catalogue", f"{self.distinct_items:,} / {self.catalogue:,}"),
                ("time", f"{self.seconds:.2f} s ({self.users_per_second:,.0f} users/s)")]


def _id_keys(values: Any) -> np.ndarray:
    """Canonical string keys of raw ids (``3``, ``3.0`` and ``"3"`` are the same id), as the
    preprocessor's vocabularies key them; missing values give ``None``."""
    import pandas as pd

    from mtlframe.preprocess import _as_str

    s = _as_str(values if isinstance(values, pd.Series) else pd.Series(np.asarray(values)))
    return s.astype(object).where(s.notna(), None).to_numpy()


def _read_users(users: Any, column: str):
    """``(raw ids in order, without repeats, their keys, repeats dropped)`` of a users file or frame.

    Raises:
        DataError: no rows, no ``column`` (closest names), or empty ids (rows named).
    """
    import pandas as pd

    from mtlframe.errors import closest, near_hint
    from mtlframe.run import read_table

    source = str(users) if not isinstance(users, pd.DataFrame) else "the users frame"
    frame = users if isinstance(users, pd.DataFrame) else read_table(users)
    if column not in frame.columns:
        raise DataError(f"{source} has no column '{column}' (the recipe's user id feature, the first of "
                        f"ranking.user_features)" + near_hint(closest(column, [str(c) for c in frame.columns]))
                        + f" Columns: {', '.join(map(str, frame.columns))}.")
    if len(frame) == 0:
        raise DataError(f"{source} has a header and no data rows: no users to recommend for; pass one user id a row.")
    keys = _id_keys(frame[column].reset_index(drop=True))
    missing = np.flatnonzero(pd.isna(keys))
    if len(missing):
        rows = ", ".join(str(int(i) + 2) for i in missing[:5])   # +2: 1-based, after the header
        raise DataError(f"{source}: column '{column}' is empty on {len(missing)} row(s) (file lines {rows}"
                        f"{' ...' if len(missing) > 5 else ''}); every row needs a user id.")
    _, first = np.unique(keys.astype(str), return_index=True)
    first = np.sort(first)
    return frame[column].to_numpy()[first], keys[first], len(keys) - len(first)


def _prediction(task_type: str, out: torch.Tensor, classes: Sequence[str]) -> np.ndarray:
    """A task's ``<task>_pred`` values from raw outputs ``[N]`` / ``[N, C]``, as ``mtlframe predict``
    gives them (:func:`~mtlframe.tasks.to_prediction`): the probability (binary; retrieval: the
    sigmoid of the pair's logit), the value (regression) or the most probable class (multiclass)."""
    from mtlframe.tasks import to_prediction

    values = to_prediction(task_type, out)
    if task_type == "multiclass":
        return np.asarray(classes, dtype=object)[values.argmax(-1).numpy()] if len(out) else np.zeros(0, dtype=object)
    return values.numpy()


def _progress(total: int, enabled: bool | None):
    """A rich progress bar over ``total`` users on stderr (shown on a terminal, or when asked)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if enabled is None:
        enabled = console.is_terminal
    return Progress(TextColumn("recommend"), BarColumn(), MofNCompleteColumn(), TextColumn("users"),
                    TimeRemainingColumn(), console=console, disable=not enabled, transient=True)


def default_rank_by(task_types: Mapping[str, str]) -> dict[str, float]:
    """``ranking.rank_by`` when the recipe gives none: the first retrieval task, else the first
    binary task, with weight 1 (``{}`` when the model has neither)."""
    for typ in ("retrieval", "binary"):
        for task, t in task_types.items():
            if t == typ:
                return {task: 1.0}
    return {}


def _user_rows(dm, keys: np.ndarray, user_feature: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Per requested user key: ``(split number or -1, row in that split, {split: row keys})``.

    A user's representative row is their **latest** row: the largest timestamp among their rows
    of every split (ties: the later split, then the later row), or without a timestamp column
    their last row of the latest split that holds them (``-1``: not in the data). So user-side
    features that change over time (a behaviour history) are the most recent the data holds.
    Row keys come from the raw user column
    the loaded table keeps (the dataset's ``user`` column), else from the id feature's vocabulary
    (then a user absent from the training vocabulary cannot be found in the other splits)."""
    import pandas as pd

    vocab = dm.preprocessor.vocab.get(user_feature)
    row_keys: dict[str, np.ndarray] = {}
    frame = dm.table.frame
    raw_all = _id_keys(frame[user_feature].reset_index(drop=True)) if user_feature in frame.columns else None
    for split in ("train", "val", "test"):
        if raw_all is not None:
            row_keys[split] = raw_all[dm.split_index[split]]
        else:  # through the vocabulary: code 0 (out of vocabulary) has no key
            codes = dm.ids[split]["user"].numpy().astype(np.int64)
            names = np.concatenate([[None], _id_keys(np.asarray(vocab))]).astype(object)
            row_keys[split] = names[codes]
    where_split = np.full(len(keys), -1)
    where_row = np.zeros(len(keys), dtype=np.int64)
    index = pd.Index(keys.astype(str))
    stamp = dm.table.timestamp if dm.table.timestamp in frame.columns else None
    users, splits, rows, times = [], [], [], []
    for s, split in enumerate(("train", "val", "test")):
        rk = row_keys[split]
        ok = np.array([k is not None for k in rk], dtype=bool)
        pos = index.get_indexer(rk[ok].astype(str))
        hit = pos >= 0
        users.append(pos[hit])
        splits.append(np.full(int(hit.sum()), s))
        rows.append(np.flatnonzero(ok)[hit])
        if stamp is not None:
            ts = frame[stamp].to_numpy()[dm.split_index[split]]
            times.append(np.asarray(ts[rows[-1]], dtype=np.float64))
    users_a, splits_a, rows_a = np.concatenate(users), np.concatenate(splits), np.concatenate(rows)
    time_a = np.concatenate(times) if stamp is not None else np.zeros(len(users_a))
    order = np.lexsort((rows_a, splits_a, time_a, users_a))      # per user, the latest row last
    last = np.r_[users_a[order][1:] != users_a[order][:-1], True] if len(order) else np.zeros(0, dtype=bool)
    pick = order[last]
    where_split[users_a[pick]] = splits_a[pick]
    where_row[users_a[pick]] = rows_a[pick]
    return where_split, where_row, row_keys


def _seen(dm, keys: np.ndarray, row_keys: Mapping[str, np.ndarray], cat, n_users: int) -> CSR:
    """The catalogue positions of the items each requested user has a row with, in any split
    (training, validation, test): what a recommender in production never shows again. Items
    without a training row are not in the catalogue and need no exclusion."""
    import pandas as pd

    index = pd.Index(keys.astype(str))
    users, cols = [], []
    for split, rk in row_keys.items():
        ok = np.array([k is not None for k in rk], dtype=bool)
        pos = np.full(len(rk), -1)
        pos[ok] = index.get_indexer(rk[ok].astype(str))
        hit = torch.from_numpy(np.flatnonzero(pos >= 0))
        items = dm.ids[split]["item"].long()[hit]
        where = cat.positions(items)
        inside = where >= 0
        users.append(torch.from_numpy(pos[pos >= 0]).long()[inside])
        cols.append(where[inside])
    return CSR.from_pairs(torch.cat(users), torch.cat(cols), n_users)


def user_columns(dm, where_split: np.ndarray, where_row: np.ndarray, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """Model-ready columns ``keys`` of one row per user: row ``i`` is row ``where_row[i]`` of split
    ``("train", "val", "test")[where_split[i]]`` (see :func:`_user_rows`)."""
    from mtlframe.batching import take
    from mtlframe.datamodule import concat_columns

    parts, order = [], []
    for s, split in enumerate(("train", "val", "test")):
        mine = np.flatnonzero(where_split == s)
        if len(mine):
            cols = dm.columns[split]
            parts.append(take({c: cols[c] for c in keys}, torch.from_numpy(where_row[mine])))
            order.append(mine)
    if not parts:
        return {c: dm.catalogue.columns[c][:0] for c in keys}
    out = concat_columns(parts)
    perm = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable"))
    return {c: v[perm] for c, v in out.items()}


def all_users(dm, user_feature: str) -> tuple[np.ndarray, np.ndarray]:
    """``(raw ids, keys)`` of every user of the data, in order of first appearance in the training,
    then validation, then test split (only the training vocabulary when the table keeps no raw
    user column)."""
    import pandas as pd

    frame = dm.table.frame
    if user_feature in frame.columns:
        order = np.concatenate([dm.split_index[s] for s in ("train", "val", "test")])
        raw = frame[user_feature].to_numpy()[order]
        keys = _id_keys(pd.Series(raw))
        _, first = np.unique(keys.astype(str), return_index=True)
        first = np.sort(first)
        return raw[first], keys[first]
    vocab = np.asarray(dm.preprocessor.vocab[user_feature], dtype=object)
    return vocab, _id_keys(vocab)


def catalogue_ids(dm) -> np.ndarray:
    """Raw item id of each catalogue position ``[I]``, as the data holds it (from the table's item
    column when it keeps one, else from the item id feature's vocabulary, as strings)."""
    cat = dm.catalogue
    frame = dm.table.frame
    if cat.item_feature in frame.columns:
        raw = frame[cat.item_feature].to_numpy()[dm.split_index["train"]]
        codes = dm.ids["train"]["item"].numpy()
        uniq, first = np.unique(codes, return_index=True)
        return raw[first[np.searchsorted(uniq, cat.items.numpy())]]
    vocab = np.asarray(dm.preprocessor.vocab[cat.item_feature], dtype=object)
    return vocab[(cat.items.long() - 1).numpy()]


def recommend(checkpoint: str | Path, users: Any, k: int = 20, output: str | Path | None = None, *,
              accelerator: str = "auto", batch_size: int = 256, data_path: str | Path | None = None,
              overrides: list[str] | None = None, progress: bool | None = None) -> RecommendResult:
    """Top-``k`` items per user from a checkpoint whose recipe has a ``ranking:`` section.

    Args:
        checkpoint: an mtlframe checkpoint (``runs/<run>/checkpoints/best.ckpt``).
        users: a CSV / Parquet file (or a pandas DataFrame) with a column named like the recipe's
            user id feature (the first of ``ranking.user_features``); repeated ids count once.
        k: list length per user.
        output: CSV / Parquet file to write (``None``: only returned).
        accelerator: ``auto`` (a GPU when there is one), ``cpu``, ``gpu``/``cuda`` or ``mps``.
        batch_size: users scored together (memory: ``batch_size * candidates`` pairs per step,
            in forward passes of at most 65,536 pairs).
        data_path: where the training data is now (it is loaded again to know the catalogue, each
            user's features and history: it must be the data the checkpoint was trained on).
        overrides: ``data.*`` and ``ranking.*`` overrides of the saved recipe
            (``ranking.unknown_users=error``, ``ranking.rank_by={watch: 1}``).
        progress: show a progress bar (default: on a terminal).

    Returns :class:`RecommendResult`; ``frame`` has one row per (user, rank): ``user`` (as given),
    ``rank`` (1 = best), ``item`` (raw id), ``score`` (the ``rank_by`` score ``sum_t w_t log p_t``;
    for popularity rows the item's training row count), ``source`` (``model`` or ``popularity``) and
    ``<task>_pred`` per task (empty for popularity rows: the model has no features for an unknown user).

    Raises:
        MTLFrameError: ``k < 1``; an override outside ``data.`` / ``ranking.``.
        CheckpointError: the checkpoint's recipe has no ``ranking:`` section.
        RecipeError: ``ranking.rank_by`` names a task that is not binary / retrieval.
        DataError: the users file lacks the id column or has empty ids; unknown users under
            ``ranking.unknown_users: error`` (their number and the first ids named); the data is not
            the training data.
    """
    from dataclasses import replace

    from mtlframe.run import _quiet_lightning, load_checkpoint, resolve_device, write_table

    check_k(k)
    if batch_size < 1:
        raise MTLFrameError(f"--batch-size must be >= 1 (users per step), got {batch_size!r}.")
    _quiet_lightning()
    device = resolve_device(accelerator)
    loaded = load_checkpoint(checkpoint)
    check_ranking(loaded, checkpoint)                          # before the slow data load
    user_feature = loaded.recipe.config.ranking.user_features[0]
    raw_ids, keys, repeats = _read_users(users, user_feature)   # the user's file before the slow data load
    recommender = Recommender(checkpoint, loaded, device=device, data_path=data_path, overrides=overrides)
    source = users if not hasattr(users, "columns") else "the users frame"
    result = recommender.rank(raw_ids, keys, k, batch_size=batch_size, progress=progress, source=source)
    if output is not None:
        write_table(result.frame, output)
    return replace(result, output=Path(output) if output is not None else None, repeated=repeats)


def check_k(k: Any) -> None:
    """Raises :class:`MTLFrameError` unless ``k`` (items per user) is an integer ``>= 1``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise MTLFrameError(f"--k must be an integer >= 1 (items per user), got {k!r}.")


def check_ranking(loaded, checkpoint: str | Path) -> None:
    """Refuse a checkpoint that cannot rank: no ``ranking:`` section, or an encoder reading targets.

    Raises:
        CheckpointError: the checkpoint's recipe has no ``ranking:`` section (or reads targets).
    """
    from mtlframe.model import refuse_target_readers

    if getattr(loaded.recipe.config, "ranking", None) is None:
        raise CheckpointError(f"{checkpoint} was trained from a recipe without a ranking: section, so it has no user "
                              "and item sides to rank the catalogue with; add ranking: {user_features: [...], "
                              "item_features: [...]} to the recipe and retrain (see docs/ranking.md).")
    refuse_target_readers(loaded.encoders, str(checkpoint))


class Recommender:
    """A ranking checkpoint loaded once: its data (users, histories), catalogue and item encodings,
    ready to rank any users with :meth:`rank` (``mtlframe recommend`` ranks a users file with it,
    ``mtlframe serve`` each ``/recommend`` request).

    Args:
        checkpoint: the checkpoint file (named in messages).
        loaded: :func:`~mtlframe.run.load_checkpoint` of it (checked by :func:`check_ranking`).
        device: where the model runs.
        data_path, overrides: as :func:`recommend`.

    Raises:
        RecipeError: ``ranking.rank_by`` names a task that is not binary / retrieval.
        DataError: the data is not the training data.
    """

    def __init__(self, checkpoint: str | Path, loaded, *, device: torch.device,
                 data_path: str | Path | None = None, overrides: list[str] | None = None) -> None:
        from mtlframe.errors import RecipeError
        from mtlframe.run import rebuild_system

        check_ranking(loaded, checkpoint)
        self.checkpoint = checkpoint
        self.device = device
        self.user_feature = loaded.recipe.config.ranking.user_features[0]
        dm, module = rebuild_system(checkpoint, loaded, command="recommend", data_path=data_path,
                                    overrides=overrides, sections=("data", "ranking"))
        self.dm = dm
        recipe = dm.recipe
        self.ranking = recipe.config.ranking
        self.model = module.model.to(device).eval()
        self.task_types = {t.name: t.type for t in loaded.tasks}
        self.classes = {t.name: t.classes for t in loaded.tasks}
        self.rank_by = dict(self.ranking.rank_by or default_rank_by(self.task_types))
        problems = rank_by_problems(self.rank_by, self.task_types) or ([] if self.rank_by else [(
            "ranking.rank_by", "the model has no binary or retrieval task to rank by; add one (rank_by fuses "
                               "probabilities)")])
        if problems:
            raise RecipeError(problems, recipe.source, recipe.lines)
        self.catalogue = dm.catalogue
        self.item_raw = catalogue_ids(dm)
        self.retrieval = next((t for t in self.rank_by if self.task_types[t] == "retrieval"), None) or next(
            (t for t, typ in self.task_types.items() if typ == "retrieval"), None)
        with torch.inference_mode():
            self.x_items = encode_rows(self.model, {c: v.to(device) for c, v in self.catalogue.columns.items()})
            self.item_vectors = (self.model.retrieval[self.retrieval].item_vectors(self.x_items)   # [I, d]
                                 if self.retrieval is not None else None)

    def user_keys(self, raw_ids: Any) -> np.ndarray:
        """Canonical keys of raw user ids (as :meth:`rank` takes them)."""
        return _id_keys(raw_ids)

    def rank(self, raw_ids: np.ndarray, keys: np.ndarray, k: int, *, batch_size: int = 256,
             progress: bool | None = False, source: str = "the users") -> RecommendResult:
        """Top-``k`` per user of distinct users ``raw_ids`` (their keys: :meth:`user_keys`).

        Returns :class:`RecommendResult` (``output`` ``None``; ``frame`` as :func:`recommend`'s).

        Raises:
            DataError: unknown users under ``ranking.unknown_users: error`` (``source`` named).
            CheckpointError: the model gives a non-finite score.
        """
        from mtlframe.batching import take

        checkpoint, device, model, cat = self.checkpoint, self.device, self.model, self.catalogue
        task_types, rank_by = self.task_types, self.rank_by
        n_items = len(cat.items)
        start = time.perf_counter()
        where_split, where_row, row_keys = _user_rows(self.dm, keys, self.user_feature)
        known = np.flatnonzero(where_split >= 0)
        unknown = np.flatnonzero(where_split < 0)
        if len(unknown) and self.ranking.unknown_users == "error":
            shown = ", ".join(map(str, raw_ids[unknown][:10]))
            raise DataError(f"{len(unknown)} of {len(keys)} users in {source} "
                            f"are not in the data {checkpoint} was trained on (no row in any split): {shown}"
                            f"{' ...' if len(unknown) > 10 else ''}. ranking.unknown_users is 'error'; pass "
                            "ranking.unknown_users=popularity to give them the most popular items, or drop them.")
        user_cols = {c: v.to(device) for c, v in user_columns(self.dm, where_split[known], where_row[known],
                                                               list(cat.columns)).items()}   # row i = known[i]
        exclude_seen = bool(self.ranking.exclude_seen)
        if exclude_seen and len(known):
            seen = _seen(self.dm, keys[known], row_keys, cat, len(known))
        candidates = max(int(self.ranking.candidates), k)   # at least k, so that k items can come out
        use_retrieval = self.retrieval if self.retrieval is not None and n_items > candidates else None
        with torch.inference_mode():
            batches = []
            with _progress(len(known), progress) as bar:
                job = bar.add_task("recommend", total=len(known))
                for i in range(0, len(known), batch_size):
                    end = min(i + batch_size, len(known))
                    rows = torch.arange(i, end, device=device)
                    exclude = seen.dense(i, end, n_items, device) if exclude_seen else None
                    ranked = rank_users(model, task_types, model.encode(take(user_cols, rows)), self.x_items,
                                        exclude, k, rank_by, candidates, use_retrieval, self.item_vectors)
                    bad = ~torch.isfinite(ranked.scores) & ranked.valid
                    if bad.any():
                        raise CheckpointError(f"{checkpoint}: the model gives a non-finite score for {int(bad.sum())} "
                                              "recommended pair(s); its weights are not finite: retrain (see the run's "
                                              "train/loss).")
                    batches.append(Ranked(ranked.scores.cpu(), ranked.positions.cpu(), ranked.valid.cpu(),
                                          {t: o.cpu() for t, o in ranked.outputs.items()}))
                    bar.advance(job, len(rows))
        frame, short, distinct = _frame(raw_ids, known, unknown, batches, self.item_raw, cat, k, task_types,
                                        self.classes)
        seconds = time.perf_counter() - start
        # known users without a training row (their latest row may be in val/test either way)
        train_keys = row_keys["train"]
        train_keys = train_keys[np.array([k is not None for k in train_keys], dtype=bool)].astype(str)
        empty = int((~np.isin(keys[known].astype(str), train_keys)).sum())
        return RecommendResult(None, frame, len(keys), len(known), empty, len(unknown), short, n_items, distinct,
                               seconds, use_retrieval, candidates if use_retrieval else n_items, dict(rank_by))


def _frame(raw_ids: np.ndarray, known: np.ndarray, unknown: np.ndarray, batches: Sequence[Ranked],
           item_raw: np.ndarray, cat, k: int, task_types: Mapping[str, str],
           classes: Mapping[str, Sequence[str]]):
    """The output table, users in the order of the users file, ranks 1..k within each."""
    import pandas as pd

    pieces = []
    if batches:
        valid = torch.cat([b.valid for b in batches]).numpy()
        positions = torch.cat([b.positions for b in batches]).numpy()[valid]
        scores = torch.cat([b.scores for b in batches]).numpy()[valid]
        per_user = valid.sum(1)
        model = {"order": np.repeat(known, per_user), "rank": np.concatenate([np.arange(1, n + 1) for n in per_user])
                 if len(per_user) else np.zeros(0, dtype=np.int64),
                 "item": item_raw[positions], "score": scores.astype(np.float32), "source": "model"}
        for t, typ in task_types.items():
            out = torch.cat([b.outputs[t] for b in batches])[torch.from_numpy(valid)]
            model[f"{t}_pred"] = _prediction(typ, out, classes[t])
        pieces.append(pd.DataFrame(model))
        short = int((per_user < min(k, len(item_raw))).sum())
    else:
        short = 0
    if len(unknown):
        popular = popularity_order(cat.counts[cat.items.long()])[:k].numpy()
        counts = cat.counts[cat.items.long()].numpy()
        n = len(popular)
        pop = {"order": np.repeat(unknown, n), "rank": np.tile(np.arange(1, n + 1), len(unknown)),
               "item": np.tile(item_raw[popular], len(unknown)),
               "score": np.tile(counts[popular].astype(np.float32), len(unknown)), "source": "popularity"}
        for t, typ in task_types.items():   # empty cells, of the model rows' type (float32, or class names)
            pop[f"{t}_pred"] = np.full(n * len(unknown), None if typ == "multiclass" else np.nan,
                                       dtype=object if typ == "multiclass" else np.float32)
        pieces.append(pd.DataFrame(pop))
    frame = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame(
        columns=["order", "rank", "item", "score", "source", *(f"{t}_pred" for t in task_types)])
    frame = frame.sort_values(["order", "rank"], kind="stable").reset_index(drop=True)
    frame.insert(0, "user", raw_ids[frame.pop("order").to_numpy(dtype=np.int64)])
    distinct = int(frame.loc[frame["source"] == "model", "item"].nunique())
    return frame, short, distinct
