"""Full-ranking evaluation: every evaluation user against the whole catalogue.

For each user with at least one positive item in the evaluated split, every catalogue item is
scored; items the user has seen (training items; training and validation items when testing) are
excluded; the top ``K`` of the rest are taken with :func:`torch.topk` in batches of users (no
Python loop per user) and compared with the user's positives. Definitions are RecBole's
(``recbole/evaluator/metrics.py``, RecBole 1.x; Zhao et al., "RecBole: Towards a Unified,
Comprehensive and Efficient Framework for Recommendation Algorithms", CIKM 2021) where they
overlap; ``docs/ranking.md`` writes them out as formulas.

With ``R(u)`` the user's distinct positive items in the split (``|R(u)| >= 1``), ``L(u)`` the
ranked list (``|L(u)| = min(K, allowed items)``), ``hit_i = 1`` when the ``i``-th item of ``L(u)``
is in ``R(u)``:

* ``recall@K = sum_i hit_i / |R(u)|``
* ``precision@K = sum_i hit_i / K`` (K, also for a list shorter than K: RecBole's denominator)
* ``hit@K = 1`` if any ``hit_i`` (RecBole ``Hit``)
* ``mrr@K = 1 / rank`` of the first hit, 0 without a hit
* ``ndcg@K = sum_i hit_i / log2(i + 1)`` over the ideal ``sum_{i <= min(|R(u)|, K)} 1 / log2(i + 1)``
* ``popularity@K = mean over L(u) of the item's training-row count`` (raw counts, RecBole's
  ``AveragePopularity``; users whose list is empty are left out of this mean)
* ``coverage@K = |union_u L(u)| / catalogue size`` (RecBole's ``ItemCoverage``; the catalogue
  is the items with a training row)

Each per-user value is averaged over the users with ``|R(u)| >= 1`` (users without a positive in
the split are not evaluated, as in RecBole). Ties: among equal scores, the item at the lower
catalogue position ranks first (:func:`top_k`), so results do not depend on the device or on
``torch.topk``'s internal order.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mtlframe.errors import MTLFrameError

#: full-ranking metric names, written ``name@K`` in a retrieval task's ``metrics``
RANKING_METRICS: tuple[str, ...] = ("recall", "ndcg", "hit", "mrr", "precision", "coverage", "popularity")
#: direction of each metric (``popularity``: lower is better, as RecBole's ``AveragePopularity``)
HIGHER_IS_BETTER: dict[str, bool] = {**dict.fromkeys(RANKING_METRICS, True), "popularity": False}
#: metrics averaged per user, in the order of the accumulator's columns
_PER_USER = ("recall", "ndcg", "hit", "mrr", "precision", "popularity")


def higher_is_better(name: str) -> bool:
    """Direction of a full-ranking metric name (``"popularity@10"`` -> ``False``)."""
    parsed = parse_ranking_metric(name)
    return HIGHER_IS_BETTER[parsed[0]] if parsed else True


def default_ranking_metrics(ks: Sequence[int]) -> list[str]:
    """The default metric list of a retrieval task: ``ndcg@K, recall@K, hit@K, mrr@K,
    precision@K, coverage@K, popularity@K`` for the first ``K``, then the others for every
    further ``K``; primary (first) = ``ndcg@<first K>``."""
    order = ("ndcg", "recall", "hit", "mrr", "precision", "coverage", "popularity")
    return [f"{m}@{k}" for k in ks for m in order]


def parse_ranking_metric(name: str) -> tuple[str, int] | None:
    """``"ndcg@10" -> ("ndcg", 10)``; ``None`` when ``name`` is not a full-ranking metric name."""
    base, sep, k = name.rpartition("@")
    if not sep or base not in RANKING_METRICS or not k.isdigit() or int(k) < 1:
        return None
    return base, int(k)


@dataclass
class CSR:
    """Sets of column ids per row, compressed (e.g. a user's positive or excluded catalogue positions).

    Attributes:
        indptr: int64 ``[R + 1]``; row ``r`` holds ``indices[indptr[r]:indptr[r + 1]]``.
        indices: int64 ``[nnz]``, sorted and distinct within a row.
    """

    indptr: torch.Tensor
    indices: torch.Tensor

    @classmethod
    def from_pairs(cls, rows: torch.Tensor, cols: torch.Tensor, n_rows: int) -> CSR:
        """The sets of ``(row, col)`` pairs ``[N]`` (duplicates kept once), ``n_rows`` rows."""
        rows, cols = rows.long().reshape(-1), cols.long().reshape(-1)
        if rows.numel():
            pairs = torch.unique(torch.stack([rows, cols]), dim=1)  # sorted by row, then column
            rows, cols = pairs[0], pairs[1]
        counts = torch.bincount(rows, minlength=n_rows)
        indptr = torch.zeros(n_rows + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(counts, 0)
        return cls(indptr, cols.clone())

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def lengths(self) -> torch.Tensor:
        """Set sizes ``[R]`` (int64)."""
        return self.indptr[1:] - self.indptr[:-1]

    def select(self, rows: torch.Tensor) -> CSR:
        """The CSR of ``rows`` ``[R']`` (int64 row ids), in that order."""
        rows = rows.long()
        lengths = self.lengths()[rows]
        indptr = torch.zeros(len(rows) + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(lengths, 0)
        starts = torch.repeat_interleave(self.indptr[rows], lengths)
        offset = torch.arange(int(indptr[-1])) - torch.repeat_interleave(indptr[:-1], lengths)
        return CSR(indptr, self.indices[starts + offset])

    def dense(self, start: int, end: int, n_cols: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Rows ``start:end`` as a bool mask ``[end - start, n_cols]``."""
        lengths = self.lengths()[start:end]
        out = torch.zeros(end - start, n_cols, dtype=torch.bool, device=device)
        rows = torch.repeat_interleave(torch.arange(end - start), lengths)
        cols = self.indices[self.indptr[start]:self.indptr[end]]
        out[rows.to(out.device), cols.to(out.device)] = True
        return out


def top_k(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """The ``k`` best columns of each row, best first, with a deterministic tie rule.

    Among equal scores the lower column (catalogue position) ranks first, whatever order
    :func:`torch.topk` returns them in. Excluded columns never appear; a row with fewer than ``k``
    allowed columns gets all of them, followed by ``-1``. Vectorized over rows (no Python loop
    per row); memory: a few ``[U, I]`` bool masks besides ``scores``.

    Args:
        scores: ``[U, I]`` float scores (higher is better). Not modified.
        k: list length (>= 1).
        exclude: optional bool ``[U, I]``; ``True`` = never recommended.

    Returns:
        int64 ``[U, k]`` column indices, ``-1`` where a row has fewer than ``k`` allowed columns.

    Raises:
        MTLFrameError: a score of an allowed column is NaN (the model diverged).
    """
    n_users, n_items = scores.shape
    s = scores.float()
    if exclude is not None:
        s = s.masked_fill(exclude, -math.inf)
    allowed = ~exclude if exclude is not None else None
    nan = torch.isnan(s)
    if bool(nan.any()):
        raise MTLFrameError(f"{int(nan.any(1).sum())} user(s) have NaN scores for {int(nan.sum())} item(s) in all: the "
                            "model diverged; try a lower optimizer.lr.")
    kk = min(k, n_items)
    out = torch.full((n_users, k), -1, dtype=torch.long, device=scores.device)
    if kk == 0 or n_users == 0:
        return out
    if kk == n_items:  # every column is in the list: the exact pass over all rows
        out[:, :kk] = _ties_resolved(s, allowed, k, kk)[:, :kk]
        return out
    # fast path: one topk of kk + 1; a row whose kk-th and (kk+1)-th scores differ has exactly
    # these kk columns, ordered here by (score desc, column asc); only rows tied across the
    # boundary (or with fewer than kk allowed columns: -inf == -inf) take the exact pass
    values, cols = torch.topk(s, kk + 1, dim=1, sorted=True)
    boundary = values[:, kk - 1] == values[:, kk]
    vals, cols = values[:, :kk], cols[:, :kk]
    by_col = torch.sort(cols, dim=1).indices                     # columns ascending ...
    vals, cols = torch.gather(vals, 1, by_col), torch.gather(cols, 1, by_col)
    by_score = torch.sort(vals, dim=1, descending=True, stable=True).indices  # ... then scores, stable
    out[:, :kk] = torch.gather(cols, 1, by_score)
    tied_rows = torch.nonzero(boundary).flatten()
    if len(tied_rows):
        out[tied_rows] = _ties_resolved(s[tied_rows], None if allowed is None else allowed[tied_rows], k, kk)
    return out


def _ties_resolved(s: torch.Tensor, allowed: torch.Tensor | None, k: int, kk: int) -> torch.Tensor:
    """:func:`top_k` of rows ``s [U', I]`` (excluded columns already ``-inf``) where ties may cross
    the ``kk``-th place: the lowest columns among the tied ones fill the free places."""
    n_users = s.shape[0]
    out = torch.full((n_users, k), -1, dtype=torch.long, device=s.device)
    threshold = torch.topk(s, kk, dim=1, sorted=True).values[:, -1:]  # the kk-th best score of each row
    take = s > threshold
    tied = s == threshold
    if allowed is not None:
        tied &= allowed  # a -inf threshold (fewer than kk allowed items) must not admit excluded ones
    need = kk - take.sum(1)
    # rows whose ties at the threshold exceed the free places keep the lowest columns among them
    over = torch.nonzero(tied.sum(1) > need).flatten()
    if len(over):
        sub = tied[over]
        sub &= torch.cumsum(sub, 1, dtype=torch.int32) <= need[over, None]
        tied[over] = sub
    take |= tied
    rows, cols = torch.nonzero(take, as_tuple=True)  # row-major: columns ascending within a row
    per_row = take.sum(1)
    first = torch.cumsum(per_row, 0) - per_row
    slot = torch.arange(len(rows), device=s.device) - first[rows]
    out[rows, slot] = cols
    ranked = torch.full((n_users, k), -math.inf, device=s.device)
    ranked[rows, slot] = s[rows, cols]
    # stable: equal scores keep ascending columns; empty slots (-inf, at the end) stay last
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
    return torch.gather(out, 1, order)


class RankingAccumulator:
    """Per-user sums and counts of the full-ranking metrics, and the coverage bitmap.

    The whole state is one float64 tensor of fixed size (:meth:`state`), so processes combine
    theirs with a single all-reduce (sum) before :meth:`compute`.

    Args:
        ks: cutoffs.
        n_items: catalogue size ``I``.
        popularity: float ``[I]``, training rows of each catalogue item.
        device: where the state lives.
    """

    def __init__(self, ks: Sequence[int], n_items: int, popularity: torch.Tensor,
                 device: torch.device | str | None = None) -> None:
        self.ks = list(ks)
        self.n_items = n_items
        self.popularity = popularity.to(device=device, dtype=torch.float64)
        self.sums = torch.zeros(len(self.ks), len(_PER_USER), dtype=torch.float64, device=device)
        self.counts = torch.zeros_like(self.sums)
        self.covered = torch.zeros(len(self.ks), n_items, dtype=torch.bool, device=device)
        #: users whose scores of allowed items held NaN or an infinity (their lists are not trusted)
        self.nonfinite = torch.zeros(1, dtype=torch.float64, device=device)
        k_max = max(self.ks)
        ranks = torch.arange(1, k_max + 1, dtype=torch.float64, device=device)
        self.discount = 1.0 / torch.log2(ranks + 1.0)  # [K]: 1 / log2(i + 1), i = 1..K
        self.ideal = torch.cumsum(self.discount, 0)     # [K]: ideal DCG of min(|R(u)|, K) hits

    def update(self, ranked: torch.Tensor, positives: torch.Tensor, n_positives: torch.Tensor) -> None:
        """Add a batch of users.

        Args:
            ranked: int64 ``[Ub, Kmax]`` catalogue positions from :func:`top_k` (``-1`` = empty slot).
            positives: bool ``[Ub, I]``, the users' positive items.
            n_positives: ``[Ub]``, ``|R(u)|`` (>= 1; may count positives that are also excluded,
                which can then never be hit, as in RecBole).
        """
        valid = ranked >= 0
        pos = ranked.clamp(min=0)
        hits = (torch.gather(positives, 1, pos) & valid).double()
        pops = self.popularity[pos] * valid
        npos = n_positives.to(torch.float64)
        users = float(len(ranked))
        for j, k in enumerate(self.ks):
            h, v = hits[:, :k], valid[:, :k]
            n_hit = h.sum(1)
            any_hit = n_hit > 0
            first = h.argmax(1)  # index of the first hit (0 when none; masked by any_hit)
            listed = v.sum(1)
            ideal = self.ideal[(npos.clamp(max=k) - 1).long()]
            values = (n_hit / npos,
                      (h * self.discount[:k]).sum(1) / ideal,
                      any_hit.double(),
                      torch.where(any_hit, 1.0 / (first.double() + 1.0), torch.zeros_like(n_hit)),
                      n_hit / k,
                      torch.where(listed > 0, pops[:, :k].sum(1) / listed.clamp(min=1), torch.zeros_like(n_hit)))
            self.sums[j] += torch.stack([x.sum() for x in values])
            self.counts[j] += torch.tensor([users] * 5 + [float((listed > 0).sum())], dtype=torch.float64,
                                           device=self.counts.device)
            self.covered[j, ranked[:, :k][v]] = True

    def state(self) -> torch.Tensor:
        """The whole state as one float64 vector (sums, counts, coverage bitmap) for an all-reduce."""
        return torch.cat([self.sums.flatten(), self.counts.flatten(), self.nonfinite, self.covered.double().flatten()])

    def load_state(self, state: torch.Tensor) -> None:
        """Set the state from a (reduced) :meth:`state` vector; bitmap entries > 0 are covered."""
        a = self.sums.numel()
        self.sums = state[:a].reshape(self.sums.shape).clone()
        self.counts = state[a:2 * a].reshape(self.counts.shape).clone()
        self.nonfinite = state[2 * a:2 * a + 1].clone()
        self.covered = (state[2 * a + 1:] > 0).reshape(self.covered.shape)

    def compute(self) -> dict[str, float]:
        """``{"<metric>@<K>": value}`` for every metric and cutoff; NaN when no user was evaluated
        or when some user's scores were NaN or infinite (a diverged model)."""
        out: dict[str, float] = {}
        if float(self.nonfinite) > 0:
            return {f"{m}@{k}": float("nan") for k in self.ks for m in RANKING_METRICS}
        for j, k in enumerate(self.ks):
            for i, name in enumerate(_PER_USER):
                c = float(self.counts[j, i])
                out[f"{name}@{k}"] = float(self.sums[j, i]) / c if c else float("nan")
            users = float(self.counts[j, 0])
            out[f"coverage@{k}"] = (float(self.covered[j].sum()) / self.n_items
                                    if users and self.n_items else float("nan"))
        return out


def full_ranking(score_fn: Callable[[torch.Tensor], torch.Tensor], users: torch.Tensor, positives: CSR,
                 exclude: CSR, n_items: int, ks: Sequence[int], metrics: Sequence[str] | None = None,
                 popularity: torch.Tensor | None = None, user_batch: int = 1024,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 device: torch.device | str | None = None, unreachable: torch.Tensor | None = None
                 ) -> dict[str, float]:
    """Full-ranking metrics of ``users`` against a catalogue of ``n_items`` items.

    Args:
        score_fn: ``users[batch]`` (int64 ``[Ub]``, whatever ids the caller put in ``users``)
            -> float ``[Ub, I]`` scores over catalogue positions (higher = better).
        users: int64 ``[U]``, the evaluation users (any ids ``score_fn`` understands).
        positives: CSR with ``U`` rows: each user's positive catalogue positions in the split.
            Users with none are not evaluated (nor scored).
        exclude: CSR with ``U`` rows: catalogue positions never recommended to the user
            (training items; training and validation items for test).
        n_items: catalogue size ``I``.
        ks: cutoffs, e.g. ``[10, 20]``.
        metrics: names to return (``ndcg@10``, ...); ``None`` = every metric at every K.
        popularity: float ``[I]`` training rows per catalogue item (``popularity@K``); zeros if ``None``.
        user_batch: users scored at once (memory: a few ``[user_batch, I]`` tensors).
        reduce: applied to the accumulator's fixed-size state vector before computing (e.g. a
            DDP all-reduce sum, each process having evaluated its own shard of users).
        device: where scores and masks live (default: that of the first score batch).
        unreachable: int64 ``[U]``, positives of each user outside the catalogue (items without a
            training row): counted in ``|R(u)|``, never hit (RecBole ranks every item; such items
            are practically never in its top K either).

    Returns:
        ``{metric@K: value}`` (float; NaN when no user has a positive, and every value NaN when a
        score of an allowed item is NaN or infinite: a diverged model).

    Raises:
        MTLFrameError: an unknown metric name, a ``K`` not in ``ks``, or a score batch of the
            wrong shape.
    """
    ks = sorted({int(k) for k in ks})
    wanted = list(metrics) if metrics is not None else [f"{m}@{k}" for k in ks for m in RANKING_METRICS]
    for name in wanted:
        parsed = parse_ranking_metric(name)
        if parsed is None or parsed[1] not in ks:
            raise MTLFrameError(f"'{name}' is not a full-ranking metric at the cutoffs {ks}: use "
                                f"{', '.join(RANKING_METRICS)} written name@K with K in ranking.k.")
    if positives.n_rows != len(users) or exclude.n_rows != len(users):
        raise MTLFrameError(f"full_ranking: {len(users)} users but {positives.n_rows} positive and "
                            f"{exclude.n_rows} exclusion rows; build both per evaluated user.")
    n_pos = positives.lengths() + (0 if unreachable is None else unreachable.long().cpu())
    keep = torch.nonzero(n_pos > 0).flatten()
    positives, exclude, users, n_pos = positives.select(keep), exclude.select(keep), users[keep], n_pos[keep]
    if popularity is None:
        popularity = torch.zeros(n_items)
    acc = None
    for start in range(0, len(users), user_batch):
        end = min(start + user_batch, len(users))
        scores = score_fn(users[start:end])
        if tuple(scores.shape) != (end - start, n_items):
            raise MTLFrameError(f"full_ranking: the score function returned shape {tuple(scores.shape)} for "
                                f"{end - start} users; expected ({end - start}, {n_items}).")
        dev = scores.device if device is None else torch.device(device)
        if acc is None:
            acc = RankingAccumulator(ks, n_items, popularity, device=dev)
        scores, excluded = scores.to(dev), exclude.dense(start, end, n_items, dev)
        bad = ~torch.isfinite(scores) & ~excluded
        if bool(bad.any()):  # counted (all values NaN), never raised: other processes wait in the reduce
            acc.nonfinite += float(bad.any(1).sum())
            scores = scores.masked_fill(bad, -math.inf)
        ranked = top_k(scores, max(ks), excluded)
        acc.update(ranked, positives.dense(start, end, n_items, dev), n_pos[start:end].to(dev))
    if acc is None:
        acc = RankingAccumulator(ks, n_items, popularity, device=device)
    if reduce is not None:
        acc.load_state(reduce(acc.state()))
    values = acc.compute()
    return {name: values[name] for name in wanted}
