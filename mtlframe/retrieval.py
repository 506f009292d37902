"""Two-tower retrieval: the ``retrieval`` task type.

A retrieval task scores a user against an item with two towers over the shared encoders'
outputs (Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
Recommendations", RecSys 2019; Covington et al., "Deep Neural Networks for YouTube
Recommendations", RecSys 2016):

* the **user tower** reads the encodings of ``ranking.user_features`` and gives ``u [B, d]``;
* the **item tower** reads the encodings of ``ranking.item_features`` and gives ``v [B, d]``;
* the score is ``s(u, v) = sim(u, v) / temperature`` with ``sim`` the inner product (``dot``) or
  the cosine (inner product of L2-normalized vectors).

Why a task type and not a backbone: a backbone mixes every feature into each task's
representation (an MMoE gate reads user and item features together), while a two-tower score
must keep the user side apart from the item side so that the whole catalogue can be encoded
once and scored against any user by one matrix product. As a task, retrieval sits beside any
backbone: the encoders' tables (``user_id``, ``item_id``, genres, ...) are shared by the retrieval
task and by the ranking tasks (``like``, ``rating``) that the backbone serves, so one model
retrieves and ranks.

Training (see :func:`sampled_softmax_rows`): with a model-side sampler (``in-batch``, ``mixed``)
the loss of a positive row is the sampled softmax over its own item and the negatives, with the
logQ correction; with a data-side sampler (``uniform-negatives``, ``popularity-negatives``) it is
the binary cross-entropy of the row's score against its label (sampled rows are 0).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtlframe.backbones.base import TaskInputs
from mtlframe.errors import RecipeError


def encoder_columns(encoders: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    """``{feature: columns of x}``: where each feature's encoding sits in the concatenated encoder
    output ``x [B, D]`` (:meth:`~mtlframe.model.MultiTaskModel.encode`).

    An encoder that reports ``feature_slices()`` (``{feature: (start, stop)}`` within its own
    output) places each feature; an encoder of a single feature owns all its columns. An encoder
    that mixes several features into shared columns (``numeric`` with ``dim``) maps each of them
    to all of its columns, so they can only all belong to one side (:func:`side_columns` checks).
    """
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for enc in encoders:
        width = int(enc.output_dim)
        feats = list(getattr(enc, "features", None) or [])
        slices = getattr(enc, "feature_slices", lambda: None)()
        for f in feats:
            if slices is not None and f in slices:
                lo, hi = slices[f]
                out[f] = torch.arange(offset + lo, offset + hi)
            else:
                out[f] = torch.arange(offset, offset + width)
        offset += width
    return out


def side_columns(encoders: Sequence[nn.Module], user_features: Sequence[str], item_features: Sequence[str],
                 source: str | None = None, lines: Mapping[str, int | str] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The sorted columns of ``x`` that belong to the user side and to the item side.

    Raises:
        RecipeError: a side names a feature no encoder encodes, or an encoder mixes a user-side
            and an item-side feature into shared columns (``ranking.user_features`` /
            ``ranking.item_features``).
    """
    where = encoder_columns(encoders)
    problems = []
    sides = []
    for key, feats in (("ranking.user_features", user_features), ("ranking.item_features", item_features)):
        cols = []
        for j, f in enumerate(feats):
            if f not in where:
                problems.append((f"{key}[{j}]", f"'{f}' is not a feature of the model's encoders "
                                                f"(encoded: {', '.join(where)})."))
            else:
                cols.append(where[f])
        sides.append(torch.unique(torch.cat(cols)) if cols else torch.zeros(0, dtype=torch.long))
    if not problems:
        user, item = sides
        shared = set(user.tolist()) & set(item.tolist())
        if shared:
            mixed = [f for f in item_features if set(where[f].tolist()) & shared]
            problems.append(("ranking.item_features",
                             f"{', '.join(map(repr, mixed))} share encoder columns with user-side features (an "
                             "encoder that mixes its features, such as `numeric` with `dim`, cannot be split into "
                             "a user and an item part): give each side's features their own encoder."))
    if problems:
        raise RecipeError(problems, source, lines)
    return sides[0], sides[1]


class TwoTower(nn.Module):
    """A retrieval task's head: a user tower and an item tower over the shared encodings.

    Args:
        task: the task name (with per-task encoder tables, the task's own input is read).
        user_columns, item_columns: ``[D_u]`` / ``[D_i]`` column indices of ``x`` per side
            (:func:`side_columns`).
        user_tower, item_tower: ``[B, D_u] -> [B, d]`` and ``[B, D_i] -> [B, d]`` modules (the
            recipe's ``model.towers.<task>`` or ``model.tower``, built twice with ``output_dim=d``).
        similarity: ``dot`` or ``cosine``.
        temperature: the scores are divided by it (> 0).

    Shapes: :meth:`user_vectors` / :meth:`item_vectors` map ``x`` (``[B, D]`` or
    :class:`~mtlframe.backbones.base.TaskInputs`) to ``[B, d]`` (unit length under cosine);
    :meth:`scores` maps ``[U, d]`` and ``[I, d]`` to ``[U, I]``; :meth:`pair_logits` gives each
    row's own score ``[B]``.

    Raises:
        ValueError: an unknown similarity or a temperature <= 0.
    """

    def __init__(self, task: str, user_columns: torch.Tensor, item_columns: torch.Tensor, user_tower: nn.Module,
                 item_tower: nn.Module, similarity: str = "cosine", temperature: float = 0.05) -> None:
        super().__init__()
        if similarity not in ("dot", "cosine"):
            raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.task = task
        self.similarity = similarity
        self.temperature = float(temperature)
        self.register_buffer("user_columns", torch.as_tensor(user_columns, dtype=torch.long), persistent=False)
        self.register_buffer("item_columns", torch.as_tensor(item_columns, dtype=torch.long), persistent=False)
        self.user_tower = user_tower
        self.item_tower = item_tower

    def _input(self, x: torch.Tensor | TaskInputs) -> torch.Tensor:
        if isinstance(x, TaskInputs):
            return x.tasks.get(self.task, x.shared)
        return x

    def _finish(self, v: torch.Tensor) -> torch.Tensor:
        return F.normalize(v, dim=-1) if self.similarity == "cosine" else v

    def user_vectors(self, x: torch.Tensor | TaskInputs) -> torch.Tensor:
        """``[B, d]`` user vectors from the user-side columns of ``x``."""
        return self._finish(self.user_tower(self._input(x).index_select(1, self.user_columns)))

    def item_vectors(self, x: torch.Tensor | TaskInputs) -> torch.Tensor:
        """``[B, d]`` item vectors from the item-side columns of ``x``."""
        return self._finish(self.item_tower(self._input(x).index_select(1, self.item_columns)))

    def scores(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``[U, I]`` logits ``sim(u, v) / temperature`` of every user against every item."""
        return (u @ v.transpose(0, 1)) / self.temperature

    def pair_logits(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``[B]`` logit of each row's own (user, item) pair."""
        return (u * v).sum(-1) / self.temperature


def sampled_softmax_rows(u: torch.Tensor, v: torch.Tensor, items: torch.Tensor, temperature: float,
                         log_q: torch.Tensor | None = None, v_extra: torch.Tensor | None = None,
                         extra_items: torch.Tensor | None = None, log_q_extra: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Per-row sampled-softmax loss ``[B]`` of a two-tower model.

    Row ``b``'s positive is its own item ``v_b``; its negatives are the other rows' items (in-batch)
    and the ``M`` extra sampled items. Logits ``[B, B + M] = [u v^T, u v_extra^T] / temperature -
    [log_q, log_q_extra]`` (the logQ correction of Yi et al. 2019: a negative's logit minus the log
    of its sampling probability, applied to every column including the positive's, as in the
    paper's corrected softmax); a column holding the same item as row ``b``'s positive, other than
    ``b`` itself (an "accidental hit"), is removed from row ``b``'s softmax. Loss of row ``b``:
    ``-log softmax(logits_b)[b]``.

    Args:
        u, v: ``[B, d]`` user and item vectors (already normalized under cosine).
        items: ``[B]`` item codes of the rows (to find accidental hits).
        temperature: the logits are divided by it.
        log_q, log_q_extra: ``[B]`` / ``[M]`` log sampling probabilities, or ``None`` (no correction).
        v_extra, extra_items: ``[M, d]`` vectors and ``[M]`` codes of the extra negatives, or ``None``.

    Returns:
        ``[B]`` row losses (every row; the caller masks the rows that are not positives).
    """
    logits = (u @ v.transpose(0, 1)) / temperature                           # (B, B)
    same = items.unsqueeze(1) == items.unsqueeze(0)                            # (B, B)
    hit = same & ~torch.eye(len(items), dtype=torch.bool, device=items.device)
    if log_q is not None:
        logits = logits - log_q.to(logits.dtype).unsqueeze(0)
    logits = logits.masked_fill(hit, float("-inf"))
    if v_extra is not None and v_extra.shape[0] > 0:
        extra = (u @ v_extra.transpose(0, 1)) / temperature                  # (B, M)
        if log_q_extra is not None:
            extra = extra - log_q_extra.to(extra.dtype).unsqueeze(0)
        if extra_items is not None:
            extra = extra.masked_fill(items.unsqueeze(1) == extra_items.unsqueeze(0), float("-inf"))
        logits = torch.cat([logits, extra], dim=1)                           # (B, B + M)
    target = torch.arange(len(items), device=logits.device)
    return F.cross_entropy(logits, target, reduction="none")                 # (B,)


class NoBackbone(nn.Module):
    """The backbone of a model whose every task is a retrieval task: no task representation
    (``forward`` returns ``{}``), no parameters, outputs passed through."""

    accepts_task_inputs = True
    output_dims: dict[str, int] = {}

    def forward(self, x: torch.Tensor, task_inputs: Mapping[str, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
        return {}

    def shared_parameters(self):
        return iter(())

    def couple(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return outputs

    def auxiliary_loss_sums(self, batch: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]) -> dict:
        return {}
