"""``RecDataModule``: dataset -> split -> preprocessor (fit on train) -> columnar tensors -> batches."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch

from mtlframe.batching import ColumnBatches, Columns, take
from mtlframe.datasets.base import RecDataset, Table
from mtlframe.errors import DataError, RecipeError, closest, near_hint
from mtlframe.features import GROUP_KEY, FeatureInfo, TaskSpec, label_key, mask_key
from mtlframe.history import History, build_history, split_ranks
from mtlframe.preprocess import TIME_GAP, LabelSpec, Preprocessor, SequenceSpec, collision_text
from mtlframe.process_memory import pin_mmap_threshold, release_freed_memory
from mtlframe.recipe import Recipe

SPLITS = ("train", "val", "test")
#: batch key of each training row's encoded item code ``[B]`` (int64), with a model-side sampler
ITEM_KEY = "id/item"


def _timestamps(table: Table, name: str, history: str | None = None) -> np.ndarray:
    """The timestamp column of ``table`` for split ``name`` (or for the history ``history``,
    ``data.sequences.<history>``).

    Raises:
        DataError: no timestamp column, or missing timestamps (rows named).
    """
    who, fix = (f"the history data.sequences.{history}", "or drop the history") if history else (
        f"the {name} split", "or use data.split.name: random")
    if not table.timestamp:
        raise DataError(f"{table.source}: " + (f"{who} needs a timestamp column, and this dataset has none; declare "
                                               f"`timestamp:` in data.dataset, {fix}." if history else
                                               f"data.split.name '{name}' needs a timestamp column, and this dataset "
                                               f"has none; use data.split.name: {_no_order_split(name)}."))
    stamps = table.frame[table.timestamp]
    if stamps.isna().any():  # NaN / NaT would sort last: silently into the test split
        pos = np.flatnonzero(stamps.isna().to_numpy())
        raise DataError(f"{table.source}: timestamp column '{table.timestamp}' has {len(pos)} missing value(s) "
                        f"(rows {', '.join(str(int(p) + 1) for p in pos[:5])}{' ...' if len(pos) > 5 else ''}); "
                        f"{who} cannot place those rows. Fill or drop them, {fix}.")
    return stamps.to_numpy()


def _no_order_split(name: str) -> str:
    """The split to suggest instead of ``name`` when the data lacks its column: ``kfold`` for a
    fold split (cross-validation stays cross-validation), else ``random``."""
    return "kfold" if name.endswith("kfold") else "random"


def _user_codes(table: Table, name: str, history: str | None = None) -> np.ndarray:
    """Dense user codes ``[N]`` (int64, order of first appearance) for the per-user split ``name``
    (or for the history ``history``, ``data.sequences.<history>``).

    Raises:
        DataError: no user column, or missing user ids (rows named).
    """
    who, fix = (f"the history data.sequences.{history}", "or drop the history") if history else (
        f"the {name} split", "or use data.split.name: random")
    if not table.user or table.user not in table.frame.columns:
        raise DataError(f"{table.source}: " + (f"{who} needs each row's user, and this dataset declares no user "
                                               f"column; declare `user:` in data.dataset, {fix}." if history else
                                               f"data.split.name '{name}' splits each user's rows and needs a user "
                                               "column, and this dataset declares none; declare `user:` in "
                                               + ("data.dataset, name the column to group by in data.split.group "
                                                  "(mtlframe cv: --group COL), or use data.split.name: kfold."
                                                  if name == "group-kfold" else
                                                  "data.dataset, or use data.split.name: random.")))
    codes = pd.factorize(table.frame[table.user])[0].astype(np.int64)
    if (codes < 0).any():
        pos = np.flatnonzero(codes < 0)
        raise DataError(f"{table.source}: user column '{table.user}' has {len(pos)} missing value(s) "
                        f"(rows {', '.join(str(int(p) + 1) for p in pos[:5])}{' ...' if len(pos) > 5 else ''}); "
                        f"{who} cannot place those rows. Fill or drop them, {fix}.")
    return codes


def user_split_sizes(rows: np.ndarray, val: float, test: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user (train, val, test) row counts of the ``user-random`` split, RecBole's rounding.

    RecBole ``Dataset._calcu_split_ids`` with ratios ``[1 - val - test, val, test]`` (normalized to
    sum 1): val and test get ``floor(ratio * n)`` rows, train the rest; then, while train keeps more
    than one row, test and then val get one row if ``0 < ratio * n < 1``. E.g. 8:1:1 gives
    n=1 -> (1, 0, 0), 2 -> (1, 0, 1), 3 -> (1, 1, 1), 9 -> (7, 1, 1), 10 -> (8, 1, 1), 20 -> (16, 2, 2).

    Args:
        rows: rows per user ``[U]`` (int).
        val, test: fractions of each user's rows.

    Returns:
        ``(n_train, n_val, n_test)``, each int64 ``[U]``.
    """
    tot = rows.astype(np.float64)
    total = (1.0 - val - test) + val + test
    r_val, r_test = val / total, test / total
    n_val = (r_val * tot).astype(np.int64)
    n_test = (r_test * tot).astype(np.int64)
    n_train = rows.astype(np.int64) - n_val - n_test
    for part, ratio in ((n_test, r_test), (n_val, r_val)):  # RecBole adds to the last part first
        bump = (n_train > 1) & (ratio * tot > 0) & (ratio * tot < 1)
        part += bump
        n_train -= bump
    return n_train, n_val, n_test


def _fold_of(table: Table, name: str, folds: int, fold: int, seed: int, group: str | None) -> np.ndarray:
    """Each row's fold ``[N]`` (int64, 1..folds) for ``kfold`` / ``group-kfold`` / ``predefined``."""
    n = len(table.frame)
    rng = np.random.default_rng(seed)
    out = np.zeros(n, dtype=np.int64)
    if name == "kfold":
        for k, part in enumerate(np.array_split(rng.permutation(n), folds), start=1):
            out[part] = k
        return out
    if name == "group-kfold":
        codes = _group_codes(table, group)
        sizes = np.bincount(codes) if n else np.zeros(0, np.int64)
        # the largest groups first (seeded order among equal sizes), each into the fold with the
        # fewest rows so far (scikit-learn's GroupKFold balancing, with a seeded tie order)
        order = rng.permutation(len(sizes))
        order = order[np.argsort(-sizes[order], kind="stable")]
        load = np.zeros(folds, dtype=np.int64)
        fold_of_group = np.zeros(len(sizes), dtype=np.int64)
        for g in order:
            k = int(np.argmin(load))
            fold_of_group[g] = k + 1
            load[k] += sizes[g]
        return fold_of_group[codes]
    # predefined
    if not table.folds:
        raise DataError(f"{table.source}: this dataset has no predefined folds (data.split.name: predefined); "
                        "use data.split.name: kfold (or group-kfold / time-kfold).")
    if fold not in table.folds:
        raise DataError(f"{table.source}: data.split.fold {fold} is not one of the dataset's predefined folds "
                        f"({', '.join(map(str, sorted(table.folds)))}).")
    for k, rows in table.folds.items():
        out[rows] = k
    return out


def _group_codes(table: Table, group: str | None) -> np.ndarray:
    """Dense codes ``[N]`` of the ``group-kfold`` column (the dataset's user column by default).

    Raises:
        DataError: the column is absent, or has missing values (rows named).
    """
    if group is None:
        return _user_codes(table, "group-kfold")
    if group not in table.frame.columns:
        near = closest(group, list(map(str, table.frame.columns)))
        raise DataError(f"{table.source}: data.split.group '{group}' is not a column" + near_hint(near, ".")
                        + f" Columns: {', '.join(map(str, table.frame.columns))}.")
    codes = pd.factorize(table.frame[group])[0].astype(np.int64)
    if (codes < 0).any():
        pos = np.flatnonzero(codes < 0)
        raise DataError(f"{table.source}: group column '{group}' (data.split.group) has {len(pos)} missing value(s) "
                        f"(rows {', '.join(str(int(p) + 1) for p in pos[:5])}{' ...' if len(pos) > 5 else ''}); "
                        "group-kfold cannot place those rows. Fill or drop them, or group by another column.")
    return codes


def split_indices(table: Table, name: str, val: float, test: float, seed: int,
                  cold_items: float = 0.1, *, folds: int = 5, fold: int = 1,
                  group: str | None = None) -> dict[str, np.ndarray]:
    """Row indices of the train / val / test splits.

    * ``random``: a seeded permutation; the first ``test`` fraction is test, then ``val``.
    * ``user-random`` (RecBole's default ``RS: [0.8, 0.1, 0.1]``, ``group_by: user``, ``order: RO``):
      a seeded shuffle of all rows; each user's rows, in shuffled order, go train first, then val,
      then test, in the sizes of :func:`user_split_sizes` (RecBole's per-user rounding).
    * ``leave-last-out`` (RecBole's ``LS: valid_and_test`` with ``order: TO``): per user by
      ``table.timestamp``, the last row is test, the one before it validation, the rest training;
      a user with 2 rows gives train + test, with 1 row train only. Equal timestamps: the row later
      in the file counts as later. ``val`` / ``test`` are not used.
    * ``time``: rows sorted by ``table.timestamp`` (stable); the latest ``test`` fraction is test,
      the ``val`` fraction before it validation.
    * ``cold-start``: a seeded ``cold_items`` fraction of the items (``table.item``) and all their
      rows form the test split; validation is a random ``val`` fraction of the remaining rows.

    Fold splits (cross-validation; ``fold`` is 1-based, ``test`` is not used; run every fold
    with ``mtlframe cv``). Over ``fold = 1..folds`` the test parts partition the rows:

    * ``kfold``: a seeded permutation cut into ``folds`` parts of sizes differing by at most one;
      part ``fold`` is test, a ``val`` fraction of the rest (in permutation order) validation.
    * ``group-kfold``: every row of one ``group`` value (default ``table.user``) in the same fold:
      groups, largest first (seeded order among equal sizes), each go to the fold with the fewest
      rows so far (scikit-learn's ``GroupKFold``); validation is a seeded ``val`` fraction of the
      training groups, so no group is split between any two parts.
    * ``time-kfold``: expanding window (scikit-learn's ``TimeSeriesSplit``): rows sorted by
      ``table.timestamp`` (stable) are cut into ``folds + 1`` blocks; fold ``i`` trains on blocks
      ``1..i`` (the latest ``val`` fraction of them is validation) and tests on block ``i + 1``,
      so it never tests on rows earlier than its training rows. Block 1 is never a test part.
    * ``predefined``: the dataset's own folds (``table.folds``, e.g. MovieLens-100K's u1..u5):
      fold ``fold``'s test rows; validation is a seeded ``val`` fraction of the rest (``uK.base``).

    Returns:
        ``{"train", "val", "test"}`` -> sorted int64 row indices (``time``, ``time-kfold``: in time order).

    Raises:
        DataError: ``time`` / ``leave-last-out`` / ``time-kfold`` without a timestamp column or with
            missing timestamps (rows named); ``user-random`` / ``leave-last-out`` / ``group-kfold``
            without a user (or ``group``) column or with missing ids (rows named); ``cold-start``
            without an item column; ``predefined`` on a dataset without folds, or a ``fold`` it
            does not have; ``fold`` outside ``1..folds``.
    """
    n = len(table.frame)
    rng = np.random.default_rng(seed)
    if name in ("kfold", "group-kfold", "time-kfold") and not 1 <= fold <= folds:
        raise DataError(f"data.split.fold {fold} is outside 1..{folds} (data.split.folds).")
    if name == "time-kfold":
        order = np.argsort(_timestamps(table, name), kind="stable")
        blocks = np.array_split(order, folds + 1)
        if n < folds + 1:
            raise DataError(f"{table.source}: data.split.folds {folds} with time-kfold cuts the rows into "
                            f"{folds + 1} time blocks, and the dataset has only {n} rows, so some folds would "
                            f"train or test on no rows; use data.split.folds of at most {max(n - 1, 1)}.")
        seen = np.concatenate(blocks[:fold])
        n_val = int(round(len(seen) * val))
        return {"train": seen[:len(seen) - n_val], "val": seen[len(seen) - n_val:], "test": blocks[fold]}
    if name in ("kfold", "group-kfold", "predefined"):
        if name != "predefined" and n:  # every fold must test on some rows
            count = n if name == "kfold" else int(_group_codes(table, group).max()) + 1
            if folds > count:
                what = "rows" if name == "kfold" else f"values of the group column '{group or table.user}'"
                raise DataError(f"{table.source}: data.split.folds {folds} is more than the dataset's {count} {what}, "
                                f"so some folds would test on no rows; use data.split.folds of at most {count}.")
        where = _fold_of(table, name, folds, fold, seed, group)
        is_test = where == fold
        if name == "group-kfold":  # validation: whole training groups
            codes = _group_codes(table, group)
            train_groups = np.unique(codes[~is_test])
            picked = rng.permutation(train_groups)[:int(round(len(train_groups) * val))]
            is_val = ~is_test & np.isin(codes, picked)
        else:
            if name == "kfold":  # the training rows in the order of the fold permutation
                perm = np.random.default_rng(seed).permutation(n)
                rest = perm[~is_test[perm]]
            else:
                rest = rng.permutation(np.flatnonzero(~is_test))
            is_val = np.zeros(n, dtype=bool)
            is_val[rest[:int(round(len(rest) * val))]] = True
        return {"train": np.flatnonzero(~is_test & ~is_val), "val": np.flatnonzero(is_val),
                "test": np.flatnonzero(is_test)}
    if name == "random":
        perm = rng.permutation(n)
        n_test, n_val = int(round(n * test)), int(round(n * val))
        return {"test": np.sort(perm[:n_test]), "val": np.sort(perm[n_test:n_test + n_val]),
                "train": np.sort(perm[n_test + n_val:])}
    if name in ("user-random", "leave-last-out"):
        codes = _user_codes(table, name)
        if name == "user-random":
            perm = rng.permutation(n)
            order = perm[np.argsort(codes[perm], kind="stable")]  # grouped by user, shuffled within
        else:  # by user, then time, then file position (ties: the later row is the later event)
            order = np.lexsort((np.arange(n), _timestamps(table, name), codes))
        user = codes[order]
        rows = np.bincount(user, minlength=int(codes.max()) + 1 if n else 0)
        start = np.cumsum(rows) - rows
        rank = np.arange(n) - start[user]  # 0-based position of each row within its user
        if name == "user-random":
            n_train, n_val, _ = user_split_sizes(rows, val, test)
        else:
            n_test = np.minimum(rows - 1, 1).clip(min=0)
            n_val = np.minimum(rows - 1 - n_test, 1).clip(min=0)
            n_train = rows - n_val - n_test
        cut1, cut2 = n_train[user], (n_train + n_val)[user]
        return {"train": np.sort(order[rank < cut1]), "val": np.sort(order[(rank >= cut1) & (rank < cut2)]),
                "test": np.sort(order[rank >= cut2])}
    if name == "time":
        order = np.argsort(_timestamps(table, name), kind="stable")
        n_test, n_val = int(round(n * test)), int(round(n * val))
        n_train = n - n_test - n_val
        return {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    if name == "cold-start":
        if not table.item:
            raise DataError(f"{table.source}: data.split.name 'cold-start' needs an item column, and this dataset "
                            "declares none; use data.split.name: random.")
        items = table.frame[table.item].to_numpy()
        uniq = np.unique(items)
        cold = rng.choice(uniq, size=max(1, int(round(len(uniq) * cold_items))), replace=False)
        is_cold = np.isin(items, cold)
        rest = np.flatnonzero(~is_cold)
        perm = rng.permutation(rest)
        n_val = int(round(len(rest) * val))
        return {"test": np.flatnonzero(is_cold), "val": np.sort(perm[:n_val]), "train": np.sort(perm[n_val:])}
    raise DataError(f"unknown split '{name}'")


def preprocess_summary(pre: Preprocessor, reports: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per numeric column filled or clipped and per task with ``missing_label`` rows,
    with the counts per split (``reports``: :attr:`Preprocessor.reports`)."""
    lines = []

    def counts(kind: str, key: str) -> tuple[int, str]:
        order = [*(k for k in SPLITS if k in reports), *(k for k in reports if k not in SPLITS)]
        per = {split: reports[split].get(kind, {}).get(key, 0) for split in order}
        per = {k: v for k, v in per.items() if v}
        return sum(per.values()), ", ".join(f"{k} {v}" for k, v in per.items())

    for col, value in pre.fill.items():
        n, where = counts("filled", col)
        if n:
            policy = pre.fill_missing.get(col)
            lines.append(f"numeric feature '{col}': {n} missing value(s) ({where}) filled with {value:g} "
                         f"(data.fill_missing: {policy})")
    lines += [collision_text(col, rep) for col, rep in pre.hash_report.items()]
    for col, (low, high) in pre.clip.items():
        n, where = counts("clipped", col)
        if n:
            lines.append(f"numeric feature '{col}': {n} value(s) ({where}) clipped to [{low:g}, {high:g}] (data.clip)")
    for col, spec in pre.sequences.items():
        per = {k: r.get("truncated", {}).get(col, {}) for k, r in reports.items()}
        rows = sum(p.get("rows", 0) for p in per.values())
        cut = sum(p.get("truncated", 0) for p in per.values())
        if cut:
            lines.append(truncation_line(col, cut, rows, spec.max_len))
    for lab in pre.labels:
        n, where = counts("masked_labels", lab.task)
        if n:
            lines.append(f"task '{lab.task}': {n} row(s) ({where}) with label {lab.missing_text} "
                         "(missing_label) masked")
    return lines


def truncation_line(col: str, truncated: int, rows: int, max_len: int) -> str:
    """``"feature 'f': 12.3% of rows (1234 of 10000) truncated to the 50 most recent"``."""
    return (f"feature '{col}': {truncated / max(rows, 1):.1%} of rows ({truncated} of {rows}) truncated to the "
            f"{max_len} most recent (data.sequences.{col}.max_len)")


def _print_rank_zero(line: str) -> None:
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        print(line, flush=True)


class RecDataModule(pl.LightningDataModule):
    """Lightning data module of a recipe.

    ``prepare_data`` (one process per machine) lets the dataset download; ``setup`` (every
    process) loads, splits, fits the preprocessor on the training split only and materializes
    every split as columnar tensors. :meth:`attach_encoders` then lets each encoder featurize its
    raw columns once and keeps only the batch keys the model reads.

    Memory: splits are row indices into the loaded table (no copied frames); each used feature and
    label column is deleted from ``table.frame`` as soon as it is transformed (the frame keeps the
    user, item, timestamp and unused columns), and once the encoders have featurized a split its
    preprocessed feature columns are dropped from ``splits`` (labels and masks stay), unless a
    resampling sampler needs them every epoch. So the data is held about once, in model-ready
    form (``columns``): each encoder input column is freed as soon as the encoder has copied it
    into its output, so setup holds the data plus about one column.

    Grouped metrics: when a task lists one (``gauc``, ``ndcg@K``, ...), ``setup`` maps the recipe's
    ``metrics_group`` column to int64 ids per evaluation split (``groups``) and
    :meth:`attach_encoders` adds them to the validation and test columns under
    :data:`~mtlframe.features.GROUP_KEY`; the training columns never hold them.

    Args:
        recipe: the validated recipe.
        dataset: the dataset loader built from ``recipe.data.dataset``.

    Raises:
        RecipeError: (in ``setup``) a feature, label or ``metrics_group`` column the dataset lacks.
    """

    def __init__(self, recipe: Recipe, dataset: RecDataset) -> None:
        super().__init__()
        self.recipe = recipe
        self.cfg = recipe.config.data
        self.dataset = dataset
        self.table: Table | None = None
        self.preprocessor: Preprocessor | None = None
        self.splits: dict[str, dict[str, Any]] = {}
        self.columns: dict[str, Columns] = {}
        self.sampler = None
        self.encoders: list[torch.nn.Module] = []
        self.tasks: list[TaskSpec] = []
        self._sampled: tuple[int, Columns] | None = None
        #: ``(epoch, batches)`` where the next training dataloader starts (0-based epoch, batches of it
        #: already trained); set when a run resumes from a checkpoint (``mtlframe train --resume``)
        self.resume_position: tuple[int, int] | None = None
        #: ``metrics_group`` ids ``[N]`` of the evaluation splits (see :data:`~mtlframe.features.GROUP_KEY`)
        self.groups: dict[str, torch.Tensor] = {}
        #: ``{split: {"user": [N], "item": [N]}}`` encoded user and item codes of every row (int64),
        #: with a ``ranking`` section (its first user and item feature); set by :meth:`attach_encoders`
        self.ids: dict[str, dict[str, torch.Tensor]] = {}
        #: the item catalogue (one model-ready row per training item), with a ``ranking`` section
        self.catalogue = None

    # -- Lightning hooks -------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.dataset.prepare()

    def setup(self, stage: str | None = None) -> None:
        if self.preprocessor is not None:
            return
        pin_mmap_threshold()
        group_col = self.recipe.metrics_group_column()
        extra = getattr(self.dataset, "extra_columns", None)  # datasets that load only declared columns
        wanted = [group_col] if group_col is not None else []
        if self.cfg.split.group is not None:  # group-kfold's column, named at data.split.group if absent
            wanted.append(self.cfg.split.group)
        for name, seq in self.cfg.sequences.items():  # histories' sources, side-field columns
            wanted += [c for c in (seq.of, *seq.fields) if c and c != TIME_GAP]
        if isinstance(extra, list):
            extra += [c for c in dict.fromkeys(wanted) if c not in extra]
        table = self.dataset.load()
        self.table = table
        self._declare_sequences(table)
        features, labels = self._resolve_columns(table)
        seed = self.recipe.config.seed
        s = self.cfg.split
        self._check_fold_split(table)
        idx = split_indices(table, s.name, s.val, s.test, seed, s.cold_items, folds=s.folds, fold=s.fold,
                            group=s.group)
        if len(table.frame) == 0:
            raise DataError(f"{table.source}: the dataset has no data rows (a header only, or every row "
                            "filtered out); point data.dataset at a file with rows.")
        if len(idx["train"]) == 0:
            raise DataError(f"{table.source}: the training split is empty ({len(table.frame)} rows); "
                            "lower data.split.val / data.split.test.")
        self.split_index = idx
        group_col = self.recipe.metrics_group_column()
        if group_col is not None:  # evaluation splits only: training batches do not carry it
            values = table.frame[group_col].to_numpy()
            self.groups = {k: torch.from_numpy(pd.factorize(values[idx[k]])[0].astype(np.int64))
                           for k in ("val", "test")}
            del values
        # columns that no encoder or task reads (other labels, unused features) go first
        specs = self._sequence_specs(table, features)
        sources = {c for name, spec in specs.items() if spec.of for c in (spec.of, *spec.fields) if c != TIME_GAP}
        needed = {*features, *(lab.column for lab in labels), table.user, table.item, table.timestamp, *sources,
                  *(g for spec in specs.values() for g in spec.fields if g != TIME_GAP)}
        for col in [c for c in table.frame.columns if c not in needed]:
            del table.frame[col]
        if table.user and table.user in table.frame.columns:
            user = table.frame[table.user].to_numpy()
            users = {k: user[v] for k, v in idx.items()}
        pre = Preprocessor(features, labels, sequences=specs, **self.cfg.preprocessor_options(features))
        #: ``feature -> History`` of every row, for the sequence features built from the log
        self.histories = self._build_histories(table, specs, idx)
        pre.fit(table.frame, table.source, rows=idx["train"], histories=self.histories)
        self.preprocessor = pre
        # column by column, each deleted from the frame once transformed (the frame and the
        # model-ready columns are never both held in full); user, item and time columns and the
        # sources of the histories stay
        keep = {table.user, table.item, table.timestamp, *sources}
        release = [c for c in [*features, *(lab.column for lab in labels)] if c not in keep]
        self.splits = pre.transform_splits(table.frame, idx, table.source, release=release, histories=self.histories)
        self.histories = {}
        self._funnel_targets(table.source)
        for line in preprocess_summary(pre, pre.reports):
            _print_rank_zero(line)
        if table.user and table.user in table.frame.columns:
            for k in self.splits:
                if "user" not in self.splits[k]:
                    self.splits[k]["__user__"] = users[k]
        release_freed_memory()

    def _check_fold_split(self, table: Table) -> None:
        """Fold-split keys that need the data: ``data.split.group`` is a column, and ``predefined``
        is used on a dataset that has folds, with a ``fold`` among them.

        Raises:
            RecipeError: at ``data.split.group`` / ``data.split.name`` / ``data.split.fold``.
        """
        s, name_ds = self.cfg.split, self.cfg.dataset.get("name")
        problems = []
        if s.name == "group-kfold" and s.group is not None and s.group not in table.frame.columns:
            cols = list(map(str, table.frame.columns))
            problems.append(("data.split.group", f"dataset '{name_ds}' has no column '{s.group}' to group the folds by"
                             + near_hint(closest(s.group, cols), ".") + f" Columns: {', '.join(cols)}."))
        if s.name == "predefined" and not table.folds:
            problems.append(("data.split.name", f"dataset '{name_ds}' has no predefined folds (movielens-100k has "
                             "u1..u5); use kfold, group-kfold or time-kfold."))
        elif s.name == "predefined" and s.fold not in table.folds:
            problems.append(("data.split.fold", f"dataset '{name_ds}' has predefined folds "
                             f"{', '.join(map(str, sorted(table.folds)))}; fold {s.fold} is not one of them."))
        if problems:
            raise RecipeError(problems, self.recipe.source, self.recipe.lines)

    def _funnel_targets(self, source: str) -> None:
        """Under a funnel backbone (ESMM, ESCM2, AITM), each stage's labels become its entire-space
        target, the AND of the stages up to it (:mod:`mtlframe.backbones.funnel`)."""
        from mtlframe.backbones.funnel import FunnelBackbone, apply_funnel_labels
        from mtlframe.registry import get_registry

        spec = self.recipe.config.model.backbone
        if spec is None:  # every task is a retrieval task
            return
        factory = get_registry().get("backbone", spec["name"]).load()
        if not (isinstance(factory, type) and issubclass(factory, FunnelBackbone)):
            return
        tasks = self.recipe.config.tasks
        stages, strict = factory.label_funnel(spec, list(tasks), {t: c.type for t, c in tasks.items()})
        #: ``{split: [rows with a funnel stage 1 and an earlier stage 0, per stage]}``
        self.funnel_violations = apply_funnel_labels(self.splits, stages, {t: c.label for t, c in tasks.items()},
                                                     strict, spec["name"], source)

    # -- sequences -------------------------------------------------------------------------------
    def _declare_sequences(self, table: Table) -> None:
        """Check ``data.sequences`` against the table and add each history built from the log
        (``of``) to ``table.features`` as a ``sequence`` column.

        Raises:
            RecipeError: a sequence that is neither a ``sequence`` column of the dataset nor a
                history; a history whose name is already a column, whose ``of`` or side field is
                not a column, or whose dataset has no user or timestamp column; ``time_gap`` on a
                dataset column (each at its ``data.sequences.<name>`` path).
        """
        problems: list[tuple[str, str]] = []
        cols = list(map(str, table.frame.columns))
        name_ds = self.cfg.dataset.get("name")
        features = dict(table.features)
        for name, seq in self.cfg.sequences.items():
            path = f"data.sequences.{name}"
            if seq.of is None:
                typ = table.features.get(name)
                if typ is None:
                    near = closest(name, [c for c, t in table.features.items() if t == "sequence"] or cols)
                    problems.append((path, f"dataset '{name_ds}' has no sequence column '{name}'" + near_hint(near, ".")
                                     + " Declare the column `sequence` in data.dataset.features, or build it from the "
                                     f"log: {name}: {{of: <item column>}}."))
                elif typ != "sequence":
                    problems.append((path, f"column '{name}' is {typ}, not sequence; declare it `sequence` in "
                                     "data.dataset.features (a '|'-separated id list per row, oldest first)."))
                for j, g in enumerate(seq.fields):
                    if g == TIME_GAP:
                        problems.append((f"{path}.fields[{j}]", f"'{TIME_GAP}' is a field of a history built from the "
                                         f"log ({name}: {{of: ...}}); for a dataset column give a column of "
                                         "'|'-separated numbers."))
                    elif g not in cols:
                        problems.append((f"{path}.fields[{j}]", f"dataset '{name_ds}' has no column '{g}'"
                                         + near_hint(closest(g, cols), ".") + " A side field of a sequence column is a "
                                         "column of '|'-separated numbers, one per id."))
                continue
            if name in cols or name in table.features:
                problems.append((path, f"'{name}' is already a column of dataset '{name_ds}'; give the history a new "
                                 f"name (e.g. hist_{seq.of})."))
                continue
            if seq.of not in cols:
                problems.append((f"{path}.of", f"dataset '{name_ds}' has no column '{seq.of}' to build the history of"
                                 + near_hint(closest(seq.of, cols), ".") + f" Columns: {', '.join(cols)}."))
            for j, g in enumerate(seq.fields):
                if g != TIME_GAP and g not in cols:
                    problems.append((f"{path}.fields[{j}]", f"dataset '{name_ds}' has no column '{g}'"
                                     + near_hint(closest(g, cols), ".") + f" A side field of a history is a numeric "
                                     f"column of the log, or '{TIME_GAP}'."))
            for what, col in (("user", table.user), ("timestamp", table.timestamp)):
                if not col or col not in cols:
                    problems.append((f"{path}.of", f"a history is built per user in time order and dataset "
                                     f"'{name_ds}' declares no {what} column; declare `{what}:` in data.dataset."))
            features[name] = "sequence"
        if problems:
            raise RecipeError(problems, self.recipe.source, self.recipe.lines)
        table.features = features

    def _sequence_specs(self, table: Table, features: Mapping[str, str]) -> dict[str, SequenceSpec]:
        """``SequenceSpec`` of every sequence feature the model reads (defaults where the recipe
        has no ``data.sequences`` entry).

        Raises:
            RecipeError: ``share_with`` is not a categorical feature of the model's encoders.
        """
        specs, problems = {}, []
        categorical = [c for c, t in features.items() if t == "categorical"]
        for col in [c for c, t in features.items() if t == "sequence"]:
            seq = self.cfg.sequences.get(col)
            if seq is None:
                specs[col] = SequenceSpec()
                continue
            if seq.share_with is not None and seq.share_with not in categorical:
                problems.append((f"data.sequences.{col}.share_with", (
                    f"'{seq.share_with}' is not a categorical feature of the model's encoders"
                    + near_hint(closest(seq.share_with, categorical), ".")
                    + f" Categorical features: {', '.join(categorical) or 'none'}. The history shares that "
                    "feature's codes and embedding table, so an encoder must read it.")))
            if seq.of and seq.share_with and seq.of != seq.share_with and seq.of in categorical:
                problems.append((f"data.sequences.{col}.share_with", (
                    f"the history holds values of '{seq.of}' (data.sequences.{col}.of) but would be looked up in "
                    f"'{seq.share_with}''s codes and table: set share_with: {seq.of}.")))
            specs[col] = SequenceSpec(max_len=seq.max_len, share_with=seq.share_with, fields=tuple(seq.fields),
                                      of=seq.of, user=table.user if seq.of else None,
                                      timestamp=table.timestamp if seq.of else None)
        if problems:
            raise RecipeError(problems, self.recipe.source, self.recipe.lines)
        return specs

    def _build_histories(self, table: Table, specs: Mapping[str, SequenceSpec],
                         idx: Mapping[str, np.ndarray]) -> dict[str, History]:
        """The leak-free history of every row (:func:`mtlframe.history.build_history`) for each
        sequence feature built from the log: a row sees the same user's strictly earlier rows of
        its own or an earlier split (train < val < test)."""
        built = {c: s for c, s in specs.items() if s.of}
        if not built:
            return {}
        ranks = split_ranks(idx, len(table.frame))
        out = {}
        for col, spec in built.items():
            users = _user_codes(table, "", history=col)
            times = _timestamps(table, "", history=col)
            out[col] = build_history(users, times, spec.max_len, ranks)
        return out

    # -- model-facing information ------------------------------------------------------------------
    def _resolve_columns(self, table: Table) -> tuple[dict[str, str], list[LabelSpec]]:
        """Check recipe columns against the table; return the used features and label specs."""
        problems: list[tuple[str, str]] = []
        used: dict[str, str] = {}
        for i, enc in enumerate(self.recipe.data["model"]["encoders"]):
            for j, col in enumerate(enc.get("features") or []):
                if col not in table.features:
                    near = closest(col, table.features)
                    problems.append((f"model.encoders[{i}].features[{j}]",
                                     f"dataset '{self.cfg.dataset['name']}' has no feature column '{col}'"
                                     + near_hint(near, ".")
                                     + f" Features: {', '.join(f'{c} ({t})' for c, t in table.features.items())}."))
                else:
                    used[col] = table.features[col]
        labels = []
        for tname, task in self.recipe.config.tasks.items():
            if task.label not in table.frame.columns:
                near = closest(task.label, table.labels or table.frame.columns)
                problems.append((f"tasks.{tname}.label",
                                 f"dataset '{self.cfg.dataset['name']}' has no label column '{task.label}'"
                                 + near_hint(near, ".")
                                 + f" Labels: {', '.join(table.labels)}."))
                continue
            # a retrieval task's label marks positive interactions: 0/1 like a binary label
            labels.append(LabelSpec(tname, task.label, "binary" if task.type == "retrieval" else task.type,
                                    task.missing_label))
        problems += self._leakage(table, labels)
        problems += self.cfg.feature_key_problems(used)  # fill_missing, clip, min_count, max_vocab, hash_buckets
        group_col = self.recipe.metrics_group_column()
        if group_col is not None and group_col not in table.frame.columns:
            near = closest(group_col, table.frame.columns)
            problems.append(("metrics_group",
                             f"dataset '{self.cfg.dataset['name']}' has no column '{group_col}' to group the "
                             "grouped metrics (gauc, ndcg@K, ...) by" + near_hint(near, ".")
                             + f" Columns: {', '.join(map(str, table.frame.columns))}. Set metrics_group to the "
                             "column that identifies a user (or session)."))
        if problems:
            raise RecipeError(problems, self.recipe.source, self.recipe.lines)
        return used, labels

    def _leakage(self, table: Table, labels: Sequence[LabelSpec]) -> list[tuple[str, str]]:
        """Features that are a task's label column, or hold exactly its values under another name
        (label leakage), as ``(recipe key of the feature, message)`` problems.

        Only pairs that can be equal are compared (both numeric, or both non-numeric), first on
        the first rows, then in full (vectorized; missing values equal missing values).
        """
        problems: list[tuple[str, str]] = []
        frame = table.frame
        by_column: dict[str, list[str]] = {}
        for lab in labels:
            by_column.setdefault(lab.column, []).append(lab.task)
        for i, enc in enumerate(self.recipe.data["model"]["encoders"]):
            for j, col in enumerate(enc.get("features") or []):
                if col not in frame.columns:
                    continue
                for label_col, tasks in by_column.items():
                    if col == label_col:
                        why = "is the label column"
                    elif _same_values(frame[col], frame[label_col]):
                        why = f"holds exactly the values of the label column '{label_col}'"
                    else:
                        continue
                    problems.append((f"model.encoders[{i}].features[{j}]", (
                        f"feature '{col}' {why} of task{'s' if len(tasks) > 1 else ''} "
                        f"{', '.join(repr(t) for t in tasks)} (label leakage: the model would read the answer). "
                        f"Remove '{col}' from the encoder's features, or drop that column from the data.")))
        return problems

    def feature_info(self) -> dict[str, FeatureInfo]:
        if self.preprocessor is None:
            raise RuntimeError("RecDataModule.setup() must run before feature_info()")
        return self.preprocessor.feature_info()

    def task_specs(self) -> list[TaskSpec]:
        """Resolved tasks (weights, metrics, classes) in recipe order."""
        pre = self.preprocessor
        out = []
        for tname, task in self.recipe.config.tasks.items():
            classes = tuple(pre.classes.get(tname, ())) if pre else ()
            out.append(TaskSpec(tname, task.type, task.label, task.weight, tuple(self.recipe.task_metrics(tname)),
                                num_classes=len(classes) if task.type == "multiclass" else 1, classes=classes))
        return out

    def label_priors(self) -> dict[str, float]:
        """Per single-output task, the training split's base value: label mean (regression) or
        log-odds of the positive rate (binary)."""
        out = {}
        for t in self.task_specs():
            if t.type in ("multiclass", "retrieval"):
                continue
            y = self.splits["train"][label_key(t.name)]
            total, count = 0.0, 0
            for lo in range(0, len(y), 1 << 20):  # masked sums of row blocks: small temporaries
                part = y[lo:lo + (1 << 20)]
                finite = torch.isfinite(part)
                count += int(finite.sum())
                total += float(torch.where(finite, part, 0).sum(dtype=torch.float64))
            if count == 0:
                continue
            m = total / count
            if t.type == "binary":
                m = min(max(m, 1e-4), 1 - 1e-4)
                m = float(np.log(m / (1 - m)))
            out[t.name] = m
        release_freed_memory(collect=False)
        return out

    def attach_encoders(self, encoders: Sequence[torch.nn.Module], tasks: Sequence[TaskSpec], sampler=None) -> None:
        """Featurize every split with the encoders and keep only the keys the model reads."""
        self.sampler = sampler
        self.encoders, self.tasks = list(encoders), list(tasks)
        self._ranking_ids()
        if sampler is not None:
            sampler.prepare(self.splits)
        # with a resampling sampler, masks stay so that sampled rows (partly unlabelled) concatenate
        keep_masks = sampler is not None and sampler.resamples
        self.columns = {}
        for k in list(self.splits):
            if keep_masks:  # the sampler reads the preprocessed columns every epoch: keep them
                self.columns[k] = materialize(encoders, tasks, self.splits[k], keep_masks=k == "train")
            else:  # the encoders' outputs replace the preprocessed feature columns, freed as read
                self.columns[k] = materialize(encoders, tasks, self.splits[k], consume=True)
                self.splits[k] = {c: v for c, v in self.splits[k].items() if c.startswith(("label/", "mask/", "__"))}
            if k in self.groups:
                self.columns[k][GROUP_KEY] = self.groups[k]
        if self.ids:
            from mtlframe.catalogue import Catalogue

            ranking = self.recipe.config.ranking
            item = ranking.item_features[0]
            self.catalogue = Catalogue.from_training(ranking.user_features[0], item, self.ids["train"]["item"],
                                                     self.columns["train"], self.feature_info()[item].cardinality)
            if getattr(sampler, "side", "data") == "model":  # in-batch negatives need each row's item
                self.columns["train"][ITEM_KEY] = self.ids["train"]["item"]
        for enc in encoders:  # what the encoders did to the data (e.g. empty texts), once, all splits
            for line in getattr(enc, "data_notes", lambda: [])():
                _print_rank_zero(line)
        release_freed_memory()

    def _ranking_ids(self) -> None:
        """With a ``ranking`` section, keep each split's encoded user and item codes (:attr:`ids`).

        Raises:
            RecipeError: the first user or item feature is not a categorical feature.
        """
        ranking = self.recipe.config.ranking
        if ranking is None:
            return
        from mtlframe.batching import id_codes

        info = self.feature_info()
        problems = []
        for key, feats in (("ranking.user_features", ranking.user_features),
                           ("ranking.item_features", ranking.item_features)):
            f = feats[0]
            if f in info and info[f].type != "categorical":
                problems.append((f"{key}[0]", f"the first {key.split('.')[1].split('_')[0]} feature is the id "
                                              f"feature and must be categorical; '{f}' is {info[f].type}. Put the "
                                              "id column first."))
        if problems:
            raise RecipeError(problems, self.recipe.source, self.recipe.lines)
        self.ids = {k: {"user": id_codes(cols[ranking.user_features[0]]),
                        "item": id_codes(cols[ranking.item_features[0]])}
                    for k, cols in self.splits.items() if ranking.user_features[0] in cols}

    def ranking_split(self, split: str, task: str):
        """The full-ranking data (:class:`~mtlframe.ranking.data.RankingSplit`) of evaluation split
        ``split`` for retrieval task ``task``: its users, their positives and the items excluded
        for them; built on first use and kept. ``None`` without a catalogue or without that split."""
        if self.catalogue is None or split not in self.ids or split not in self.columns:
            return None
        cache = self.__dict__.setdefault("_ranking_splits", {})
        if (split, task) not in cache:
            from mtlframe.ranking.data import build_ranking_split

            table = self.table
            times = None
            if table is not None and table.timestamp and table.timestamp in table.frame.columns:
                times = table.frame[table.timestamp].to_numpy()[self.split_index[split]]
            cache[split, task] = build_ranking_split(self.ids, self.columns[split], self.catalogue, split, task,
                                                     times)
        return cache[split, task]

    # -- dataloaders -------------------------------------------------------------------------
    def _dist(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def eval_batches_per_process(self, split: str, batch_size: int, world: int) -> list[int]:
        """Batches of evaluation split ``split`` that each of ``world`` processes runs at
        ``batch_size`` (its rows dealt out one by one, as :class:`ColumnBatches` deals them). A
        component whose forward pass is a collective (sharded tables) needs them all equal."""
        rows = len(self.split_index.get(split, ()))
        return [-(-len(range(r, rows, world)) // batch_size) for r in range(world)]

    def _pin(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return bool(trainer is not None and getattr(trainer.accelerator, "__class__", type).__name__ == "CUDAAccelerator")

    def _train_columns(self, epoch: int) -> Columns:
        """This epoch's training columns: the sampler's kept rows plus its featurized new rows."""
        if self._sampled is None or self._sampled[0] != epoch:
            g = torch.Generator().manual_seed(self.recipe.config.seed * 1000 + epoch)
            base = self.columns["train"]
            sample = self.sampler.sample(self.splits["train"], g)
            parts = [base if sample.keep is None else take(base, sample.keep)]
            if sample.extra:
                parts.append(materialize(self.encoders, self.tasks, sample.extra, keep_masks=True))
            self._sampled = (epoch, concat_columns(parts))
        return self._sampled[1]

    def train_dataloader(self) -> ColumnBatches:
        rank, world = self._dist()
        resamples = self.sampler is not None and self.sampler.resamples
        source = self._train_columns if resamples else self.columns["train"]
        loader = ColumnBatches(source, self.cfg.batch_size, shuffle=True, seed=self.recipe.config.seed,
                               rank=rank, world_size=world, drop_uneven=world > 1, pin_memory=self._pin())
        if self.resume_position is not None:  # the epoch's permutation and sample, its trained batches left out
            loader.resume_at(*self.resume_position)
            self.resume_position = None
        return loader

    def _eval(self, split: str) -> ColumnBatches:
        rank, world = self._dist()
        return ColumnBatches(self.columns[split], self.cfg.eval_batch_size or max(self.cfg.batch_size, 4096),
                             rank=rank, world_size=world, pin_memory=self._pin())

    def val_dataloader(self) -> ColumnBatches:
        return self._eval("val")

    def test_dataloader(self) -> ColumnBatches:
        return self._eval("test")


class _ConsumedColumns(Mapping):
    """The columns of one split while :func:`materialize` consumes them: ``release(key)`` (see
    :func:`mtlframe.encoders.base.release_column`) deletes a column from the underlying dict when
    no later encoder reads it, and returns its memory to the OS."""

    def __init__(self, columns: dict[str, Any]) -> None:
        self.columns = columns
        self.releasable: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        return self.columns[key]

    def __iter__(self):
        return iter(self.columns)

    def __len__(self) -> int:
        return len(self.columns)

    def release(self, key: str) -> None:
        if key in self.releasable and key in self.columns:
            self.releasable.discard(key)
            value = self.columns.pop(key)
            big = getattr(value, "nbytes", 0) >= 1 << 20
            del value
            if big:
                release_freed_memory(collect=False)


def _same_values(a: pd.Series, b: pd.Series, head: int = 256) -> bool:
    """Whether two columns of one frame hold the same values row by row (missing = missing), for a
    label column ``b`` with at least two distinct values. Numbers compare as numbers (``1`` equals
    ``1.0``); a number never equals a string. Cheap for unequal columns: dtypes, then the first
    ``head`` rows, before the full comparison."""
    numeric = pd.api.types.is_numeric_dtype(a) or pd.api.types.is_bool_dtype(a)
    if numeric != (pd.api.types.is_numeric_dtype(b) or pd.api.types.is_bool_dtype(b)):
        return False

    def equal(x: pd.Series, y: pd.Series) -> bool:
        if numeric:
            return np.array_equal(x.to_numpy(np.float64, na_value=np.nan), y.to_numpy(np.float64, na_value=np.nan),
                                  equal_nan=True)
        xs, ys = x.astype(object).to_numpy(), y.astype(object).to_numpy()
        missing_x, missing_y = pd.isna(xs), pd.isna(ys)
        return bool(np.array_equal(missing_x, missing_y) and (xs[~missing_x] == ys[~missing_y]).all())

    if not equal(a.iloc[:head], b.iloc[:head]) or not equal(a, b):
        return False
    return b.nunique(dropna=True) >= 2  # a constant label: a constant feature is no leak worth naming


def materialize(encoders: Sequence[torch.nn.Module], tasks: Sequence[TaskSpec],
                columns: Mapping[str, Any], keep_masks: bool = False, consume: bool = False) -> Columns:
    """Featurize preprocessed columns with each encoder; return only the tensors the model reads.

    A task's mask is dropped when every label of the split is present (the module then skips
    masking for it, saving work on the hot path), unless ``keep_masks``.

    With ``consume`` (``columns`` is then a dict the caller gives up), each encoder's input
    feature columns are deleted from ``columns`` once no later encoder reads them: as the encoder
    releases them (:func:`~mtlframe.encoders.base.release_column`), else when it returns. The
    encoders' outputs are returned as they made them (the built-in stacking encoders give
    feature-major ``[N, F]`` views, which batches gather row by row); without ``consume`` every
    output is made contiguous.
    """
    out: Columns = {}
    src = _ConsumedColumns(columns) if consume else columns
    later: list[set[str] | None] = [None] * len(encoders)  # features some later encoder reads
    reads: set[str] | None = set()
    for i in range(len(encoders) - 1, -1, -1):
        later[i] = None if reads is None else set(reads)
        enc = encoders[i]
        feats = getattr(enc, "features", None)
        reads = None if reads is None or feats is None else reads | set(feats) | set(getattr(enc, "input_keys", []))
    for i, enc in enumerate(encoders):
        own = set(getattr(enc, "features", None) or []) - set(getattr(enc, "input_keys", []))
        mine = set() if later[i] is None else own - later[i]
        if consume:
            src.releasable = mine
        out.update(enc.featurize(src))
        for key in getattr(enc, "input_keys", []):
            if key not in out:
                value = columns[key]
                out[key] = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        if consume:
            for key in list(src.releasable):
                src.release(key)
            src.releasable = set()
    for t in tasks:
        if label_key(t.name) in columns:
            out[label_key(t.name)] = columns[label_key(t.name)]
            mask = columns[mask_key(t.name)]
            if keep_masks or not bool(mask.all()):
                out[mask_key(t.name)] = mask
    if consume:
        return out
    return {k: v.contiguous() for k, v in out.items()}


def concat_columns(parts: Sequence[Columns]) -> Columns:
    """Row-wise concatenation of column dicts with the same keys (text widths padded with 0)."""
    if len(parts) == 1:
        return parts[0]
    out: Columns = {}
    for key in parts[0]:
        tensors = [p[key] for p in parts]
        if tensors[0].ndim == 2 and len({t.shape[1] for t in tensors}) > 1:
            width = max(t.shape[1] for t in tensors)
            tensors = [torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors]
        out[key] = torch.cat(tensors)
    return out
