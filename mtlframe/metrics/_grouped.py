"""The torchmetrics classes behind :mod:`mtlframe.metrics.grouped` (imported when a metric is built).

Group-wise ranking metrics: GAUC, NDCG@K, Recall@K and HitRate@K, computed per group of rows
(per user: the recipe's ``metrics_group`` column) and averaged over the groups.

GAUC is from Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018;
NDCG from Järvelin & Kekäläinen, "Cumulated gain-based evaluation of IR techniques", ACM TOIS 2002.

* ``gauc``: each group's exact ROC AUC (ties count one half: average ranks), averaged with
  weights = the group's rows (``impressions``, the paper's choice) or its positive rows
  (``clicks``; ``metrics_group.gauc_weight``). Groups whose labels are all one class have no AUC
  and are skipped. Binary tasks only.
* ``ndcg@K``: per group, rank the rows by score; DCG@K = sum over the top K of
  ``relevance / log2(rank + 1)`` (linear gain: the label itself, so a regression label such as a
  1-5 rating is graded relevance), divided by the DCG@K of the ideal order. Binary and regression
  tasks; relevance labels must be non-negative.
* ``recall@K``: per group, the share of its relevant rows (label > 0) ranked in the top K.
* ``hitrate@K``: per group, 1 when at least one relevant row is ranked in the top K, else 0.

Shared rules:

* Groups with no relevant row (all labels 0) are skipped by every metric (their NDCG, recall
  and hit rate are undefined), as RecBole does; torchmetrics' ``Retrieval*`` metrics count them
  as 0 by default (``empty_target_action="neg"``), which moves the value with the share of
  all-negative users rather than with the ranking. The result is NaN when no group qualifies.
  After :meth:`GroupedMetric.compute`, ``metric.group_counts`` (a
  :class:`~mtlframe.metrics.base.GroupCounts`) holds the groups seen and the groups skipped;
  training logs them as ``<split>/<task>/<metric>_groups`` and ``<split>/<task>/<metric>_skipped_groups``
  and writes them to ``metrics.json`` (``groups``).
* Tied scores are handled exactly, as the expectation over a random order of the tied rows:
  average ranks for GAUC, the tie-averaged DCG of scikit-learn's ``ndcg_score`` (and
  torchmetrics' ``retrieval_normalized_dcg``) for NDCG, and the expected recall and hit rate when
  a tie straddles the cutoff K.
* The computation is vectorized: one sort of all rows by (group, score) and segment sums, no
  loop over groups (torchmetrics' ``Retrieval*`` metrics loop over groups in Python).
* Like the exact ``auc``, the metrics keep every evaluated row's score, label and group id
  (list states concatenated across processes under DDP, so the value equals a single-process
  evaluation whichever process saw a group's rows).
"""
from __future__ import annotations

import torch
import torchmetrics
from torchmetrics.utilities.data import dim_zero_cat

from mtlframe.errors import DataError
from mtlframe.metrics.base import GAUC_WEIGHTS, GroupCounts


class _Ranked:
    """Rows sorted by (group, score descending), with their tie blocks.

    A *block* is a run of rows of one group with equal scores. Attributes (all 1-D, float64
    unless noted): ``group [n]`` dense group id (int64) of each sorted row, ``target [n]``,
    ``pos [n]`` 0-based position in its group, ``size [G]`` rows per group, and per block
    ``block_group [nb]`` (int64), ``block_start [nb]`` (position of its first row in the group),
    ``block_size [nb]``, ``block_target [nb]`` (sum of its labels), ``block_relevant [nb]``
    (rows with label > 0).
    """

    def __init__(self, preds: torch.Tensor, target: torch.Tensor, indexes: torch.Tensor) -> None:
        order = torch.argsort(preds, descending=True, stable=True)
        order = order[torch.argsort(indexes[order], stable=True)]
        g, s = indexes[order], preds[order]
        self.target = target[order].double()
        n = g.numel()
        new_group = torch.ones(n, dtype=torch.bool, device=g.device)
        new_group[1:] = g[1:] != g[:-1]
        self.group = torch.cumsum(new_group, 0) - 1
        starts = torch.nonzero(new_group).squeeze(1)
        self.num_groups = starts.numel()
        ends = torch.cat([starts[1:], torch.tensor([n], device=g.device)])
        self.size = (ends - starts).double()
        self.pos = (torch.arange(n, device=g.device) - starts[self.group]).double()
        new_block = new_group.clone()
        new_block[1:] |= s[1:] != s[:-1]
        self.block = torch.cumsum(new_block, 0) - 1
        bstarts = torch.nonzero(new_block).squeeze(1)
        bends = torch.cat([bstarts[1:], torch.tensor([n], device=g.device)])
        self.block_group = self.group[bstarts]
        self.block_start = self.pos[bstarts]
        self.block_size = (bends - bstarts).double()
        self.block_target = self.block_sum(self.target)
        self.block_relevant = self.block_sum((self.target > 0).double())
        self.relevant = self.group_sum_blocks(self.block_relevant)

    def block_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Per-row ``values [n]`` summed per block ``[nb]``."""
        return torch.zeros(self.block_size.numel(), dtype=torch.float64, device=values.device).index_add_(
            0, self.block, values.double())

    def group_sum_blocks(self, values: torch.Tensor) -> torch.Tensor:
        """Per-block ``values [nb]`` summed per group ``[G]``."""
        return torch.zeros(self.num_groups, dtype=torch.float64, device=values.device).index_add_(
            0, self.block_group, values)

    def in_top(self, k: int) -> torch.Tensor:
        """Rows of each block ranked in the group's top ``k`` ``[nb]`` (0 .. block size)."""
        return torch.minimum(torch.clamp(k - self.block_start, min=0), self.block_size)


def _mean(values: torch.Tensor, valid: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the ``valid`` groups' ``values [G]`` (weighted by ``weights [G]``); NaN when none is valid."""
    if not bool(valid.any()):
        return torch.tensor(float("nan"))
    w = torch.ones_like(values) if weights is None else weights
    w = torch.where(valid, w, torch.zeros_like(w))
    v = torch.where(valid, values, torch.zeros_like(values))
    return ((v * w).sum() / w.sum()).float()


def _lchoose(n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


class GroupedMetric(torchmetrics.Metric):
    """Base of the group-wise metrics: keeps every row's score, label and group id.

    ``update(preds, target, indexes)``: ``preds [B]`` scores (probabilities or regression
    predictions), ``target [B]`` labels, ``indexes [B]`` int64 group ids (rows with a negative id,
    a missing group value, are left out). :meth:`compute` sorts all rows once (:class:`_Ranked`)
    and returns the (weighted) mean of the groups with a defined value (:meth:`_per_group`); NaN
    when nothing was seen. ``group_counts`` then holds the groups seen and skipped (``None`` before
    the first compute and after :meth:`reset`).

    Raises:
        ValueError: ``update`` with tensors of different shapes or not 1-D.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("indexes", default=[], dist_reduce_fx="cat")
        self.group_counts: GroupCounts | None = None

    def reset(self) -> None:
        super().reset()
        self.group_counts = None

    def update(self, preds: torch.Tensor, target: torch.Tensor, indexes: torch.Tensor) -> None:
        if preds.ndim != 1 or preds.shape != target.shape or preds.shape != indexes.shape:
            raise ValueError(f"{type(self).__name__}.update takes 1-D preds, target and indexes of one shape, "
                             f"got {tuple(preds.shape)}, {tuple(target.shape)}, {tuple(indexes.shape)}")
        # kept as given (float32 scores: 16 bytes a row with the labels and ids); rows of a
        # missing group are dropped at compute, so evaluation steps never wait on the device
        self.preds.append(preds.detach())
        self.target.append(target.detach().float())
        self.indexes.append(indexes.long())

    def compute(self) -> torch.Tensor:
        self.group_counts = GroupCounts(0, 0)
        if isinstance(self.preds, list) and not self.preds:
            return torch.tensor(float("nan"))
        preds, target, indexes = (dim_zero_cat(x) for x in (self.preds, self.target, self.indexes))
        keep = indexes >= 0
        if not bool(keep.any()):
            return torch.tensor(float("nan"))
        values, valid, weights = self._per_group(_Ranked(preds[keep].double(), target[keep], indexes[keep]))
        self.group_counts = GroupCounts(valid.numel(), int((~valid).sum()))
        return _mean(values, valid, weights)

    def _per_group(self, r: _Ranked) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:  # pragma: no cover
        """``(values [G], valid [G] bool, weights [G] or None)``: each group's value, whether it is
        defined (the others are skipped) and its weight in the mean (``None``: equal weights)."""
        raise NotImplementedError


class GroupAUC(GroupedMetric):
    """GAUC: per-group exact ROC AUC, averaged with impression or click weights (Zhou et al., KDD 2018).

    ``update(preds [B], target [B] of 0/1, indexes [B])``. A group's AUC is the Mann-Whitney
    statistic with average ranks for tied scores; groups with a single class are skipped.

    Args:
        weight: ``impressions`` (rows of the group) or ``clicks`` (its positive rows).

    Raises:
        ValueError: an unknown ``weight``.
    """

    def __init__(self, weight: str = "impressions") -> None:
        super().__init__()
        if weight not in GAUC_WEIGHTS:
            raise ValueError(f"gauc weight must be one of {', '.join(GAUC_WEIGHTS)}, got {weight!r}")
        self.weight = weight

    def _per_group(self, r: _Ranked) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        # ascending average rank of a block: size - (mean 0-based descending position)
        mean_pos = r.block_start + (r.block_size - 1) / 2
        block_rank = r.size[r.block_group] - mean_pos
        rank_sum = r.group_sum_blocks(block_rank * r.block_relevant)     # sum of ranks of positives
        pos = r.relevant
        neg = r.size - pos
        valid = (pos > 0) & (neg > 0)
        auc = (rank_sum - pos * (pos + 1) / 2) / torch.clamp(pos * neg, min=1)
        return auc, valid, (r.size if self.weight == "impressions" else pos)


class _TopK(GroupedMetric):
    """A grouped metric of each group's top ``k`` rows.

    Args:
        k: the cutoff: the top ``k`` rows of each group count.
        task: the task's name, for error messages.

    Raises:
        ValueError: ``k`` is not a positive integer.
    """

    def __init__(self, k: int, task: str = "") -> None:
        super().__init__()
        self.task = task
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"{type(self).__name__}: the cutoff k must be a positive integer, got {k!r}")
        self.k = k

    def _discount(self, pos: torch.Tensor) -> torch.Tensor:
        return torch.where(pos < self.k, 1.0 / torch.log2(pos + 2.0), torch.zeros_like(pos))


class GroupNDCG(_TopK):
    """NDCG@K per group, averaged over groups with a relevant row (Järvelin & Kekäläinen, 2002).

    ``update(preds [B], target [B] >= 0 relevance, indexes [B])``. Linear gain, discount
    ``1 / log2(rank + 1)``, ties averaged (as scikit-learn's ``ndcg_score``).

    Args:
        k: the cutoff: the top ``k`` rows of each group count.
        task: the task's name, for error messages.

    Raises:
        ValueError: ``k < 1``.
        DataError: at compute, a negative relevance label.
    """

    def _per_group(self, r: _Ranked) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if bool((r.target < 0).any()):
            raise DataError(f"ndcg@{self.k} of task '{self.task}' takes non-negative relevance labels (a graded "
                            f"relevance such as a rating, or 0/1); the labels go down to {float(r.target.min())}. "
                            f"Shift the label to be >= 0, or drop ndcg@{self.k} from tasks.{self.task}.metrics.")
        # each row of a tie block gets the block's mean gain times the mean discount of its positions
        disc_sum = r.block_sum(self._discount(r.pos))
        dcg = r.group_sum_blocks(r.block_target * disc_sum / r.block_size)
        # ideal order: labels descending within each group (groups stay in the same order)
        ideal = torch.sort(r.target, descending=True, stable=True)
        order = torch.argsort(r.group[ideal.indices], stable=True)
        gains = ideal.values[order]
        idcg = torch.zeros(r.num_groups, dtype=torch.float64, device=gains.device).index_add_(
            0, r.group, gains * self._discount(r.pos))
        valid = idcg > 0
        return dcg / torch.where(valid, idcg, torch.ones_like(idcg)), valid, None


class GroupRecall(_TopK):
    """Recall@K per group (relevant rows in the top K / relevant rows), averaged over groups with a
    relevant row. ``update(preds [B], target [B] of 0/1, indexes [B])``; arguments as :class:`_TopK`."""

    def _per_group(self, r: _Ranked) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        # expected relevant rows in the top K: a tie straddling K contributes pro rata
        hits = r.group_sum_blocks(r.block_relevant * r.in_top(self.k) / r.block_size)
        valid = r.relevant > 0
        return hits / torch.clamp(r.relevant, min=1), valid, None


class GroupHitRate(_TopK):
    """HitRate@K per group (1 if a relevant row is in the top K), averaged over groups with a
    relevant row. ``update(preds [B], target [B] of 0/1, indexes [B])``; arguments as :class:`_TopK`."""

    def _per_group(self, r: _Ranked) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        # P(no relevant row in the top K) = product over blocks of C(s - p, m) / C(s, m), where m of
        # the block's s rows (p relevant) fall in the top K, drawn at random among the tied rows
        m = r.in_top(self.k)
        s, p = r.block_size, r.block_relevant
        possible = m <= s - p
        log_miss = torch.where(possible, _lchoose(torch.clamp(s - p, min=0), torch.where(possible, m, 0))
                               - _lchoose(s, m), torch.full_like(s, float("-inf")))
        miss = torch.exp(r.group_sum_blocks(log_miss))
        valid = r.relevant > 0
        return 1.0 - miss, valid, None
