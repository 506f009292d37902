"""``MultiTaskModule``: the Lightning *system* that trains a :class:`~mtlframe.model.MultiTaskModel`.

It receives built components and holds no model code of its own. Loss-level combiners run under
automatic optimization; a combiner with ``requires_manual_backward = True`` switches the module
to manual optimization and computes the update itself.

Logged keys: ``train/loss`` (every ``log_every_n_steps``; under DDP this process's share),
``train/weight/<task>`` and the combiner's :meth:`~mtlframe.combiners.base.LossCombiner.logged_values`
as ``train/<key>`` (e.g. ``train/log_var/<task>`` of ``uncertainty``) with it; per epoch
``train/loss_epoch``, ``train/loss/<task>`` (mean over every labelled row of the epoch, all
processes), ``train/labelled/<task>`` (labelled rows of the epoch, summed over processes),
``train/aux/<name>`` (the auxiliary loss over every row of the epoch, all processes),
``train/skipped_steps`` (steps skipped for a non-finite loss, when any); with an
``optimizer.scheduler``, ``train/lr/<group>`` every ``log_every_n_steps``: the learning rate the
step trained with, per parameter group (``dense``, ``sparse`` for sparse tables, ``combiner`` for
learned task weights, an encoder's own group such as ``text-lm``);
``{val,test}/<task>/<metric>``, and ``val/score`` (mean over tasks of the primary metric, negated
where lower is better; the default checkpoint monitor).

**Sparse labels and DDP.** Each task's loss is the mean over its labelled rows of the step's
*global* batch: the processes add up their ``[T]`` labelled-row counts and loss sums in one
fixed-size all-reduce per step (the same collective on every process whatever labels its batch
holds), and each process's term is ``its sum / global count * world size``, so DDP's gradient
average is exactly the global masked mean (and one process on the same global batches trains the
same weights). The backbone's auxiliary losses likewise: they come as row sums and row counts
(:meth:`~mtlframe.backbones.base.Backbone.auxiliary_loss_sums`), the counts ride in the same
all-reduce, and each is its sum over the global count times world size. A task labelled on no
process in a step is left out of the combiner; its zero-weighted term still runs through its
tower, so DDP sees a gradient for every parameter. A
step with no label anywhere, or a skipped non-finite step (``nan_loss="skip"``), is skipped on
every process. Epoch means and evaluation label counts are reduced as fixed-size tensors too.

**Host synchronisation.** A training step reads nothing from the device outside logging steps
(``batch_idx % log_every_n_steps == 0``): the non-finite check of ``nan_loss="stop"`` is deferred
to the next logging step, the epoch end or a checkpoint (naming the step that diverged); which
tasks are labelled comes from the batch while it is still on the host
(:meth:`transfer_batch_to_device`). A step reads its reduced statistics on the host only with
``nan_loss="skip"`` (the skip must precede the optimizer) or when a task has no labelled row in
this process's batch (whether another process has one decides if it enters the combiner). Checked
by ``tests/test_host_syncs.py`` (:class:`~mtlframe.host_syncs.HostSyncCounter`).

Undefined metrics are NaN, never a number that looks valid: every metric of a task whose
predictions in the split hold a NaN or an infinity (a diverged model), AUC on a split whose labels
are one class, and any metric of a task without a labelled row in the split. Each case warns once,
naming the task, the split and the reason. ``val/score`` is NaN when any task's primary metric is
NaN, so a diverged or degenerate epoch never beats a healthy one; a task without a labelled row in
the split is left out of the score (the same tasks are left out at every epoch, so scores stay
comparable), and the score is NaN when no task has one.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from mtlframe.backbones.base import TaskInputs
from mtlframe.combiners.base import LossCombiner
from mtlframe.errors import MTLFrameError
from mtlframe.features import GROUP_KEY, TaskSpec, label_key, mask_key
from mtlframe.metrics.base import MetricDef
from mtlframe.model import MultiTaskModel
from mtlframe.optim import build_optimizer, sparse_parameters
from mtlframe.recipe import OptimizerConfig
from mtlframe.tasks import task_loss, to_prediction

STAGES = ("val", "test")
#: what a NaN or infinite training loss does (``trainer.nan_loss``)
NAN_LOSS_POLICIES = ("stop", "skip")


def _parts(names: Sequence[str]) -> str:
    """``a x2, b`` for the auxiliary parts ``[a, a, b]``, for messages."""
    out: list[str] = []
    for name in dict.fromkeys(names):
        k = list(names).count(name)
        out.append(f"'{name}'" + (f" x{k}" if k > 1 else ""))
    return ", ".join(out) or "none"


def _has_list_state(metric: nn.Module) -> bool:
    """Whether a torchmetrics metric keeps rows (``cat`` list states) that are gathered on sync."""
    return any(isinstance(v, list) for v in getattr(metric, "_defaults", {}).values())


class MultiTaskModule(pl.LightningModule):
    """Trains a multi-task model with a loss combiner.

    Args:
        model: the network.
        combiner: how task losses become one update.
        tasks: task specs in recipe order.
        metrics: ``{task: {metric_name: MetricDef}}``; the first metric of a task is its primary.
            Grouped metrics (``MetricDef.grouped``) are updated with the batch's group ids
            (:data:`~mtlframe.features.GROUP_KEY`, in evaluation batches).
        optimizer: optimizer settings.
        gradient_clip_val: gradient-norm clipping (applied by the module under manual optimization).
        nan_loss: ``"stop"``: a NaN or infinite task (or auxiliary) loss raises
            :class:`~mtlframe.errors.MTLFrameError` naming the task(s) and the global step;
            ``"skip"``: the step is skipped (counted in :attr:`skipped_steps`, warned about at the
            end of the epoch). The recipe's ``trainer.nan_loss``.
        checkpoint_state: extra state saved into every checkpoint under ``"mtlframe"`` (the resolved
            recipe, the preprocessor, component providers) so ``predict`` needs nothing else.
    """

    def __init__(self, model: MultiTaskModel, combiner: LossCombiner, tasks: Sequence[TaskSpec],
                 metrics: Mapping[str, Mapping[str, MetricDef]], optimizer: OptimizerConfig,
                 gradient_clip_val: float | None = None, checkpoint_state: Mapping[str, Any] | None = None,
                 nan_loss: str = "stop") -> None:
        super().__init__()
        self.model = model
        self.combiner = combiner
        self.tasks = list(tasks)
        self.metric_defs = {t: dict(m) for t, m in metrics.items()}
        self.optimizer_cfg = optimizer
        self.gradient_clip_val = gradient_clip_val
        self.checkpoint_state = dict(checkpoint_state or {})
        self.automatic_optimization = not combiner.requires_manual_backward
        self.metrics = nn.ModuleDict({
            f"{stage}__{t.name}": nn.ModuleDict({m: d.build(t) for m, d in self.metric_defs[t.name].items()})
            for stage in STAGES for t in self.tasks})
        if nan_loss not in NAN_LOSS_POLICIES:
            raise ValueError(f"nan_loss must be one of {list(NAN_LOSS_POLICIES)}, got {nan_loss!r}")
        self.nan_loss = nan_loss
        #: training steps skipped for a non-finite loss (``nan_loss="skip"``), over the whole fit
        self.skipped_steps = 0
        self._epoch_stats: torch.Tensor | None = None   # (2T + 2P,) counts, loss sums, aux counts, aux sums
        self._epoch_total: torch.Tensor | None = None
        self._epoch_steps = 0
        self._aux_parts: list[str] | None = None   # the auxiliary loss of each part (P)
        self._skipped: list[tuple[int, list[str]]] = []
        self._pending: list[tuple[int, torch.Tensor, list[str]]] = []
        self._contributed = False   # a micro-batch of the current optimizer step was not skipped
        self.last_scores: dict[str, dict[str, dict[str, float]]] = {}
        # per stage, per task: [labelled rows, positive rows (binary), non-finite predictions],
        # accumulated on the device during an evaluation epoch and summed across processes at its end
        self._eval_stats: dict[str, torch.Tensor] = {}
        #: ``{stage: {task: labelled rows}}`` of the last evaluation epoch (all processes together)
        self.last_rows: dict[str, dict[str, int]] = {}
        self._warned: set[tuple[str, ...]] = set()
        #: ``{stage: {task: {metric: {"groups": G, "skipped": S}}}}`` for grouped metrics (gauc, ndcg@K, ...)
        self.last_group_counts: dict[str, dict[str, dict[str, dict[str, int]]]] = {}
        self.set_ranking()
        self.set_scheduler(None)

    def set_scheduler(self, schedule: Any, interval: str = "step", monitor: tuple[str, str] | None = None,
                      where: tuple[str | None, dict] = (None, {})) -> None:
        """Schedule the learning rate of every parameter group with ``schedule`` (a
        :class:`~mtlframe.schedulers.base.LRSchedule`, or ``None``: a constant rate), stepped every
        optimizer step or every epoch (``interval``); a ``needs_monitor`` schedule steps on
        ``monitor`` = ``(logged key, "min" | "max")``. ``where`` = ``(recipe source, lines)`` for
        errors. Under manual optimization (gradient-level combiners) the module steps it itself."""
        self.schedule, self.schedule_interval, self.schedule_monitor = schedule, interval, monitor
        self._schedule_where = where

    # -- device transfer -------------------------------------------------------------------------
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Batches are flat ``{key: tensor}`` dicts (:class:`~mtlframe.batching.ColumnBatches`).

        On CPU they are already in place and pass through untouched (no walk over the
        collection); on CUDA each tensor is copied with ``non_blocking=True``, asynchronous from the
        pinned blocks the data module hands out on that accelerator. Any other batch goes through
        Lightning's default.
        """
        if isinstance(batch, dict) and all(torch.is_tensor(v) for v in batch.values()):
            labelled = self._host_labelled(batch)   # read while the batch is still on the host
            if not all(v.device == device for v in batch.values()):
                non_blocking = device.type == "cuda"
                batch = {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}
            self._batch_labelled = (id(batch), labelled)
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _host_labelled(self, batch: Mapping[str, torch.Tensor]) -> list[bool] | None:
        """Per task, whether this process's batch holds a labelled row (a retrieval task trained
        with model-side negatives: a positive labelled row), read from the batch's host tensors
        with ``.numpy()`` (no device sync: it raises on a device tensor, so a batch already on the
        device gives ``None``: unknown)."""
        out = []
        for t in self.tasks:
            mask = batch.get(mask_key(t.name))
            anchors = t.type == "retrieval" and self.negative_sampler is not None
            target = batch.get(label_key(t.name))
            if target is None:
                return None
            rows = (target == 1) if anchors else None
            if mask is not None:
                rows = mask if rows is None else mask & rows
            if rows is None:
                out.append(target.shape[0] > 0)
            elif rows.device.type != "cpu":
                return None
            else:
                out.append(bool(rows.numpy().any()))
        return out

    # -- forward and losses ----------------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model(batch)

    def task_losses(self, batch: Mapping[str, torch.Tensor],
                    outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Masked mean loss per task over ``batch`` alone; a task with no labelled row is left out.

        This is one process's view (one host sync). Training uses :meth:`task_loss_sums` and
        divides by the labelled count of the global batch instead (see the module docstring).
        """
        sums, counts = self.task_loss_sums(batch, outputs)
        return {t.name: s / c for t, s, c in zip(self.tasks, sums, counts.tolist()) if c > 0}

    def set_ranking(self, catalogue: Any = None, sampler: Any = None, seed: int = 0) -> None:
        """Give the module what retrieval tasks train with: the item catalogue
        (:class:`~mtlframe.catalogue.Catalogue`) and the recipe's sampler; a model-side sampler
        (``side == "model"``: ``in-batch``, ``mixed``) then supplies the negatives of a sampled
        softmax, drawn with a generator seeded by ``seed``."""
        self.catalogue = catalogue
        self.negative_sampler = sampler if getattr(sampler, "side", "data") == "model" else None
        self._negative_generator = torch.Generator().manual_seed(int(seed))

    def set_full_ranking(self, splits: Any = None) -> None:
        """Give the module its retrieval tasks' evaluation data: ``splits(stage, task)`` returns
        the :class:`~mtlframe.ranking.data.RankingSplit` of that split (or ``None``: the task is
        not ranked there). :meth:`_full_ranking` uses it at each evaluation epoch end."""
        self._ranking_splits = splits

    @torch.no_grad()
    def _full_ranking(self, stage: str) -> dict[str, dict[str, float]]:
        """``{task: {metric@K: value}}`` of every retrieval task on ``stage`` (full ranking, see
        :mod:`mtlframe.ranking`). The catalogue's item vectors are computed once; user vectors
        come from each user's first row in the split. Under DDP each process ranks a contiguous
        shard of the users and the fixed-size metric state is summed in one all-reduce per task
        (every process takes part, whatever its shard holds)."""
        from mtlframe.batching import take
        from mtlframe.ranking import full_ranking, parse_ranking_metric

        splits = getattr(self, "_ranking_splits", None)
        if splits is None or self.catalogue is None:
            return {}
        distributed = self._trainer is not None and self.trainer.world_size > 1
        rank, world = (self.global_rank, self.trainer.world_size) if distributed else (0, 1)
        reduce = (lambda state: self.trainer.strategy.reduce(state, reduce_op="sum")) if distributed else None
        out = {}
        for t in self.tasks:
            data = splits(stage, t.name) if t.type == "retrieval" else None
            if data is None:
                continue
            if len(data.users) == 0 and data.unknown_rows and (stage, t.name, "no-known-user") not in self._warned:
                self._warned.add((stage, t.name, "no-known-user"))
                warnings.warn(f"task '{t.name}': none of the {data.unknown_rows} rows of the {stage} split has a user "
                              "seen in training (unknown users are not ranked), so its full-ranking metrics are NaN. "
                              "A split that keeps each user's rows in one part (group-kfold by the user column) "
                              "does this: use kfold or user-random.", UserWarning, stacklevel=2)
            head = self.model.retrieval[t.name]
            n_items = len(self.catalogue)
            items = torch.cat([head.item_vectors(self.model.encode(self.catalogue.take(torch.arange(lo, min(
                lo + 65536, n_items)), self.device))) for lo in range(0, n_items, 65536)]) if n_items else None

            def score_fn(idx: torch.Tensor, head=head, items=items, data=data) -> torch.Tensor:
                cols = {k: v.to(self.device) for k, v in take(data.inputs, idx).items()}
                return head.scores(head.user_vectors(self.model.encode(cols)), items).float()

            n = len(data.users)
            shard = torch.arange(n * rank // world, n * (rank + 1) // world)
            ks = sorted({parse_ranking_metric(m)[1] for m in t.metrics})
            out[t.name] = full_ranking(score_fn, shard, data.positives.select(shard), data.exclude.select(shard),
                                       n_items, ks, t.metrics, data.popularity,
                                       user_batch=max(1, min(4096, (1 << 26) // max(n_items, 1))), reduce=reduce,
                                       device=self.device, unreachable=data.unreachable[shard])
        return out

    def _retrieval_rows(self, t: TaskSpec, batch: Mapping[str, torch.Tensor], vectors: Mapping[str, Any]
                        ) -> torch.Tensor:
        """``[B]`` sampled-softmax row losses of retrieval task ``t`` (model-side negatives)."""
        from mtlframe.datamodule import ITEM_KEY
        from mtlframe.retrieval import sampled_softmax_rows

        head = self.model.retrieval[t.name]
        u, v = vectors[t.name]                                     # (B, d), (B, d)
        items = batch.get(ITEM_KEY)
        if items is None:
            raise MTLFrameError(f"retrieval task '{t.name}': the training batches carry no item codes ('{ITEM_KEY}') "
                                "for in-batch negatives; build the data with mtlframe's RecDataModule and a "
                                "model-side sampler (data.sampler: in-batch or mixed).")
        neg = self.negative_sampler.negatives(items, self._negative_generator)  # draws on the CPU generator
        v_extra = extra = log_q_extra = None
        # the draws are host tensors: copied without waiting for the device (a blocking copy to a
        # GPU synchronises its stream)
        if neg.extra.numel():
            extra = neg.extra.to(u.device, non_blocking=True)
            cols = self.catalogue.rows_on(neg.extra, u.device)
            v_extra = head.item_vectors(self.model.encode(cols))   # (M, d)
            log_q_extra = neg.log_q_extra.to(u.device, non_blocking=True)
        log_q = None if neg.log_q_batch is None else neg.log_q_batch.to(u.device, non_blocking=True)
        return sampled_softmax_rows(u, v, items, head.temperature, log_q, v_extra, extra, log_q_extra)

    def task_loss_sums(self, batch: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor],
                       vectors: Mapping[str, Any] | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-task sums of row losses and labelled-row counts over this process's batch.

        A row whose label is missing (``mask/<task>`` False) contributes 0 to its task's sum, but
        the sum is still computed from the tower's output, so a task with no labelled row in the
        batch keeps its tower in the graph (with a zero gradient): under DDP every process then
        gets a gradient for every parameter, whatever labels its batch holds. No host sync.

        A retrieval task trained with a model-side sampler (``vectors`` holds its ``(u, v)``, from
        :meth:`~mtlframe.model.MultiTaskModel.forward_from`) sums the sampled-softmax losses of its
        positive rows (label 1) and counts those rows.

        Returns:
            ``(sums, counts)``: ``sums`` one scalar per task in recipe order (graph attached),
            ``counts`` the ``[T]`` labelled-row counts (float64, on the batch's device).
        """
        sums, counts = [], []
        for t in self.tasks:
            target = batch[label_key(t.name)]
            out = outputs[t.name]
            mask = batch.get(mask_key(t.name))
            if t.type == "retrieval" and self.negative_sampler is not None and vectors is not None:
                rows = self._retrieval_rows(t, batch, vectors)                       # (B,)
                anchor = target == 1 if mask is None else mask & (target == 1)
                sums.append(torch.where(anchor, rows, torch.zeros((), dtype=rows.dtype, device=rows.device)).sum())
                counts.append(anchor.sum().to(torch.float64))
                continue
            if mask is None:
                sums.append(task_loss(t.type, out, target).sum())
                counts.append(torch.full((), target.shape[0], dtype=torch.float64, device=out.device))
            else:
                # unlabelled rows get a harmless target (a NaN one would make 0 * NaN gradients)
                target = torch.where(mask, target, torch.zeros((), dtype=target.dtype, device=target.device))
                rows = task_loss(t.type, out, target)                              # (B,)
                sums.append(torch.where(mask, rows, torch.zeros((), dtype=rows.dtype, device=rows.device)).sum())
                counts.append(mask.sum().to(torch.float64))
        return sums, torch.stack(counts)

    # -- training ----------------------------------------------------------------------------------
    def _step_stats(self, sums: Sequence[torch.Tensor], counts: torch.Tensor,
                    aux_sums: torch.Tensor, aux_counts: torch.Tensor) -> torch.Tensor:
        """``[2T + 2P]`` = labelled counts and loss sums of the tasks, then row counts and sums of
        the ``P`` auxiliary-loss parts, of the step summed over processes (one fixed-size
        all-reduce under DDP: the same collective on every process)."""
        parts = [counts, torch.stack([s.detach().double() for s in sums]),
                 aux_counts.double(), aux_sums.detach().double()]
        stats = torch.cat(parts)
        if self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        return stats

    def _non_finite(self, stats: list[float], aux_parts: Sequence[str]) -> list[str]:
        """Names of the tasks (and auxiliary losses) whose step loss is NaN or infinite.
        ``aux_parts``: the auxiliary loss of each of the ``P`` parts in ``stats``."""
        n, p = len(self.tasks), len(aux_parts)
        bad = [t.name for t, c, s in zip(self.tasks, stats[:n], stats[n:2 * n]) if c > 0 and not math.isfinite(s)]
        for a, v in zip(aux_parts, stats[2 * n + p:2 * n + 2 * p]):
            if not math.isfinite(v) and f"aux/{a}" not in bad:
                bad.append(f"aux/{a}")
        return bad

    def _auxiliary(self, batch: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]
                   ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """The backbone's auxiliary losses as ``P`` parts: the loss name of each part, the ``[P]``
        sums (graph attached) and ``[P]`` row counts (float64) over this process's batch.

        Raises:
            MTLFrameError: an :class:`~mtlframe.backbones.base.AuxLoss` whose sums and counts differ
                in shape, or names/parts that differ from the previous step's (under DDP the
                processes must reduce a vector of the same size at every step).
        """
        backbone = self.model.backbone
        aux = backbone.auxiliary_loss_sums(batch, outputs)
        names, sums, counts = [], [], []
        for name, a in aux.items():
            s, c = a.sums.reshape(-1), a.counts.reshape(-1)
            if s.shape != c.shape:
                raise MTLFrameError(
                    f"backbone {type(backbone).__name__}: auxiliary loss '{name}' has sums of shape "
                    f"{tuple(a.sums.shape)} and counts of shape {tuple(a.counts.shape)}; give one count per sum "
                    "(AuxLoss(sums [K], counts [K]), mtlframe.backbones.base).")
            names += [name] * s.numel()
            sums.append(s)
            counts.append(c.to(torch.float64))
        if self._aux_parts is not None and names != self._aux_parts:
            raise MTLFrameError(
                f"backbone {type(backbone).__name__}: its auxiliary losses changed between training steps "
                f"({_parts(self._aux_parts)} then {_parts(names)}). Return the same names with the same number "
                "of parts at every step (zero sums and zero counts where a batch has no row for one): under "
                "DDP every process reduces one fixed-size vector per step.")
        self._aux_parts = names
        device = next(iter(outputs.values())).device
        if not sums:
            return names, torch.zeros(0, device=device), torch.zeros(0, dtype=torch.float64, device=device)
        return names, torch.cat(sums), torch.cat(counts)

    def _bad_loss(self, bad: Sequence[str], stats: list[float], step: int) -> bool:
        """Apply ``nan_loss`` to a step whose loss is not finite: raise, or count it and return True
        (skip the step; every process decides the same, from the reduced numbers)."""
        n = len(self.tasks)
        values = dict(zip([t.name for t in self.tasks], stats[n:2 * n]))
        what = ", ".join(f"'{b}' ({values.get(b, 'nan')})" if b in values else f"'{b}'" for b in bad)
        if self.nan_loss == "skip":
            self._skipped.append((step, list(bad)))
            return True
        raise MTLFrameError(
            f"the training loss is not finite at global step {step} (epoch {self.current_epoch + 1}): task loss "
            f"{what}. The model diverged or a label/feature holds inf: lower optimizer.lr (now "
            f"{self.optimizer_cfg.lr:g}), set trainer.gradient_clip_val, check the data, or set "
            "trainer.nan_loss: skip to skip such steps.")

    def _check_pending(self) -> None:
        """Check the deferred steps (see :meth:`training_step`) for a non-finite loss: one host sync."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        rows = torch.stack([s for _, s, _ in pending]).tolist()
        for (step, _, aux_names), row in zip(pending, rows):
            bad = self._non_finite(row, aux_names)
            if bad:
                self._bad_loss(bad, row, step)

    def _sync_every_step(self, batch: Mapping[str, torch.Tensor], stats: torch.Tensor) -> bool:
        """Whether the step reads its statistics on the host now (one device -> host sync):

        * ``nan_loss="skip"``: the step must be skipped before the optimizer reads its gradients,
          and only the host can decide not to run a (non-fused) optimizer step;
        * a task has no labelled row in this process's batch, or that is unknown (the batch did
          not pass through :meth:`transfer_batch_to_device` from the host): whether it is labelled
          on another process (and so enters the combiner) is in the reduced counts only.

        Otherwise (every task labelled here, so in the global batch too, whatever the other
        processes hold) nothing is read: the non-finite check of ``nan_loss="stop"`` is deferred
        to the next logging step (:meth:`_check_pending`, which names the step that diverged), so
        the device is not stalled every step, on one process or under DDP, on any device."""
        if self.nan_loss == "skip":
            return True
        key, labelled = getattr(self, "_batch_labelled", (None, None))
        return key != id(batch) or labelled is None or not all(labelled)

    def _skip(self) -> torch.Tensor | None:
        """End a step that every process skips. Under automatic optimization the step returns
        ``0 * sum of every parameter`` (Lightning refuses ``None`` under DDP, and DDP wants every
        parameter in the backward): exactly zero gradients even when the loss is NaN, so nothing
        is added to gradients accumulated over micro-batches; :meth:`optimizer_step` then drops
        the gradients of a window in which no micro-batch counted."""
        if not self.automatic_optimization:
            return None
        return sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's step, except after skipped steps only (:meth:`_skip`): their gradients are
        dropped (set to ``None``) after the backward, so the optimizer leaves every parameter and
        its state as they were (no momentum or weight-decay update)."""
        if optimizer_closure is None:
            optimizer.step()
            return

        def closure() -> Any:
            result = optimizer_closure()
            if not self._contributed:
                optimizer.zero_grad(set_to_none=True)
                return None
            return result

        try:
            optimizer.step(closure=closure)
        finally:
            self._contributed = False

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        # the rates this step trains with (logged as train/lr/<group>), before a schedule steps them
        rates = self._rates() if batch_idx % self.trainer.log_every_n_steps == 0 else None
        x = self.model.encode(batch)                               # (B, D), or TaskInputs
        vectors: dict[str, Any] = {}
        outputs = self.model.forward_from(x, vectors)
        sums, counts = self.task_loss_sums(batch, outputs, vectors)
        aux_parts, aux_sums, aux_counts = self._auxiliary(batch, outputs)  # (P,), (P,)
        world = self.trainer.world_size
        stats = self._step_stats(sums, counts, aux_sums, aux_counts)  # (2T + 2P,) summed over processes
        n, p = len(self.tasks), len(aux_parts)
        step = self.global_step
        if self._sync_every_step(batch, stats):
            # one host sync: which tasks are labelled somewhere (and whether the loss is finite);
            # earlier deferred steps first, so a stop names the first step that diverged
            self._check_pending()
            host = stats.tolist()
            labelled = [c > 0 for c in host[:n]]
            bad = self._non_finite(host, aux_parts)
            if bad and self._bad_loss(bad, host, step):
                return self._skip()
        else:
            # every task labelled in this process's batch: no host read; the non-finite check of
            # this step runs with the next logging step's (or the epoch end's, or a checkpoint's) sync
            labelled = [True] * n
            self._pending.append((step, stats, aux_parts))
            if batch_idx % self.trainer.log_every_n_steps == 0:
                self._check_pending()
        # each process's term is its share of the global masked mean, sum_r term_r / world = mean;
        # the global counts stay on the device (world / count, in the loss's dtype)
        scales = (world / stats[:n]).to(sums[0].dtype).unbind()
        losses = {t.name: s * (k if k.dtype == s.dtype else k.to(s.dtype))
                  for t, s, k, c in zip(self.tasks, sums, scales, labelled) if c}
        # a task labelled on no process: a zero-weighted term keeps its tower in the backward (DDP)
        absent = [s * 0.0 for s, c in zip(sums, labelled) if not c]
        # the same for each auxiliary part over its global row count (a part with no row anywhere
        # has a zero sum: 0 / 1); on one process the backbone's own per-batch mean
        aux: dict[str, torch.Tensor] = {}
        if p:
            aux_global = stats[2 * n:2 * n + p].to(aux_sums.dtype).clamp(min=1)
            aux_terms = aux_sums / aux_global * world             # (P,)
            for name, term in zip(aux_parts, aux_terms):
                aux[name] = term if name not in aux else aux[name] + term
        self._epoch_stats = stats.detach() if self._epoch_stats is None else self._epoch_stats + stats.detach()
        if not losses:  # no task labelled on any process: every process skips the step
            return self._skip()
        self._contributed = True
        extra = sum(aux.values()) if aux else None
        for term in absent:
            extra = term if extra is None else extra + term
        bsz = next(iter(batch.values())).shape[0]
        if self.automatic_optimization:
            total = self.combiner(losses)
            total_d = total.detach()
            if extra is not None:
                total = total + extra
        else:
            opt = self.optimizers()
            opt.zero_grad(set_to_none=True)
            shared = [p for p in self.model.shared_parameters() if p.requires_grad]
            backward = self.manual_backward if extra is None else (
                lambda loss: self.manual_backward(loss + extra))
            if self.combiner.requires_representation:
                # the encoders' output; with per-task tables the shared input and every task's input
                # together: each task input also carries the shared encoders' outputs, so only all of
                # them cut every path from the shared parameters to the losses
                rep = [x.shared, *x.tasks.values()] if isinstance(x, TaskInputs) else x
                self.combiner.backward(losses, shared, backward, representation=rep)
            else:
                self.combiner.backward(losses, shared, backward)
            if self.gradient_clip_val:
                self.clip_gradients(opt, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
            opt.step()
            self._step_schedule("step")
            total_d = sum(w * losses[t].detach() for t, w in self.combiner.current_weights().items() if t in losses)
            if not torch.is_tensor(total_d):
                total_d = torch.as_tensor(float(total_d))
        if aux:
            total_d = total_d + sum(v.detach() for v in aux.values())
        # Per-step work stays on-device: each ``self.log`` call costs about a millisecond of
        # Lightning bookkeeping, so epoch means are accumulated here and logged once per epoch
        # (``on_train_epoch_end``) and step values only every ``log_every_n_steps``.
        self._epoch_total = total_d.double() if self._epoch_total is None else self._epoch_total + total_d.double()
        self._epoch_steps += 1
        if batch_idx % self.trainer.log_every_n_steps == 0:
            # Lightning converts the progress bar's values to numbers after every step (not only
            # logging steps): a host copy, read here (a logging step), keeps that off the device;
            # without a progress bar the value is not shown there at all
            bar = self._trainer is not None and self.trainer.progress_bar_callback is not None
            self.log("train/loss", total_d.to("cpu") if bar else total_d, on_step=True, on_epoch=False,
                     prog_bar=bar, batch_size=bsz)
            for t, w in self.combiner.current_weights().items():
                self.log(f"train/weight/{t}", float(w), on_step=True, on_epoch=False, batch_size=bsz)
            for key, value in self.combiner.logged_values().items():
                self.log(f"train/{key}", float(value), on_step=True, on_epoch=False, batch_size=bsz)
            for name, rate in (rates or {}).items():
                self.log(f"train/lr/{name}", rate, on_step=True, on_epoch=False, batch_size=bsz)
        return total if self.automatic_optimization else None

    def on_train_epoch_start(self) -> None:
        self._epoch_stats = None
        self._epoch_total = None
        self._epoch_steps = 0
        self._skipped = []

    def on_train_epoch_end(self) -> None:
        """Epoch means: per task, the mean row loss over every labelled row of the epoch on every
        process (sums and counts were reduced each step); the total and auxiliary losses as the
        mean over steps and processes (one fixed-size reduction, the same on every process)."""
        self._check_pending()
        n = len(self.tasks)
        world = self.trainer.world_size
        steps = self._epoch_steps
        totals = torch.zeros(1, dtype=torch.float64, device=self.device)
        if self._epoch_total is not None:
            totals = totals + self._epoch_total.to(self.device).reshape(1)
        if world > 1:  # every process ran (or skipped) the same steps: same shapes, same order
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        stats = self._epoch_stats.tolist() if self._epoch_stats is not None else [0.0] * (2 * n)
        counts, sums, aux_stats = stats[:n], stats[n:2 * n], stats[2 * n:]
        means: dict[str, float] = {}
        for t, c, s in zip(self.tasks, counts, sums):
            self.log(f"train/labelled/{t.name}", float(c), on_step=False, on_epoch=True)
            if c > 0:
                means[t.name] = s / c
                self.log(f"train/loss/{t.name}", means[t.name], on_step=False, on_epoch=True)
            elif steps:  # (an epoch whose every step was skipped is reported below, not as unlabelled)
                rank_zero_warn(f"task '{t.name}' has no labelled row in training epoch {self.current_epoch + 1} "
                               "(on any process): it was not trained this epoch and train/loss/"
                               f"{t.name} is not logged.", category=UserWarning)
        if steps:
            self.log("train/loss_epoch", float(totals[0]) / (steps * world), on_step=False, on_epoch=True)
            if self._epoch_stats is not None and self._aux_parts:
                # per part, the mean over every row of the epoch on every process; summed per loss
                p = len(self._aux_parts)
                aux_means: dict[str, float] = {}
                for name, c, s in zip(self._aux_parts, aux_stats[:p], aux_stats[p:2 * p]):
                    aux_means[name] = aux_means.get(name, 0.0) + (s / c if c > 0 else 0.0)
                for name, value in aux_means.items():
                    self.log(f"train/aux/{name}", value, on_step=False, on_epoch=True)
        if self._skipped:
            self.log("train/skipped_steps", float(len(self._skipped)), on_step=False, on_epoch=True)
            first = ", ".join(f"{s} ({', '.join(b)})" for s, b in self._skipped[:5])
            every = (" - every step of the epoch, so nothing was trained and train/loss_epoch is not logged"
                     if not steps else "")
            rank_zero_warn(f"{len(self._skipped)} training step(s) of epoch {self.current_epoch + 1} were skipped "
                           f"for a non-finite loss (trainer.nan_loss: skip){every}: global step (task) {first}"
                           + (" ..." if len(self._skipped) > 5 else ""), category=UserWarning)
        self.skipped_steps += len(self._skipped)
        self.combiner.on_train_epoch_end({t: v for t, v in means.items() if t in self.combiner.task_names})
        self._step_schedule("epoch")
        self._epoch_stats = None
        self._epoch_total = None
        self._epoch_steps = 0
        self._skipped = []

    # -- evaluation ----------------------------------------------------------------------------
    def _eval_step(self, stage: str, batch: Mapping[str, torch.Tensor]) -> None:
        outputs = self.model(batch)
        groups = batch.get(GROUP_KEY)
        distributed = self._trainer is not None and self.trainer.world_size > 1
        stats = self._eval_stats.get(stage)
        if stats is None:
            stats = self._eval_stats[stage] = torch.zeros(len(self.tasks), 3, dtype=torch.long,
                                                          device=next(iter(outputs.values())).device)
        for i, t in enumerate(self.tasks):
            target = batch[label_key(t.name)]
            pred = to_prediction(t.type, outputs[t.name])
            mask = batch.get(mask_key(t.name))
            group = groups
            if mask is not None:
                target, pred = target[mask], pred[mask]
                group = None if groups is None else groups[mask]
            if t.type == "binary":
                target = target.long()
            pred = pred.float()
            stats[i, 0] += target.numel()
            if t.type == "binary":
                stats[i, 1] += target.sum()
            stats[i, 2] += (~torch.isfinite(pred)).sum()
            for name, metric in self.metrics[f"{stage}__{t.name}"].items():
                if target.numel() == 0 and not (distributed and _has_list_state(metric)):
                    # nothing to add; under DDP a metric that gathers rows still takes the empty
                    # update, so its (empty) states have the dtypes the other processes send
                    continue
                if getattr(self.metric_defs[t.name][name], "grouped", False):
                    if group is None:
                        raise MTLFrameError(
                            f"metric '{name}' of task '{t.name}' is computed per group, and the {stage} batches "
                            f"carry no group ids ('{GROUP_KEY}'); set metrics_group in the recipe and build "
                            "the data with mtlframe's RecDataModule.")
                    metric.update(pred, target, group)
                else:
                    metric.update(pred, target)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _epoch_end(self, stage: str) -> None:
        stats = self._eval_stats.pop(stage, None)
        if stats is None:
            stats = torch.zeros(len(self.tasks), 3, dtype=torch.long, device=self.device)
        if self._trainer is not None and self.trainer.world_size > 1:  # one fixed-size reduction per epoch
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        stats = stats.tolist()
        self.last_rows[stage] = {t.name: int(row[0]) for t, row in zip(self.tasks, stats)}
        ranking = self._full_ranking(stage)  # {retrieval task: {metric@K: value}}
        scores: dict[str, dict[str, float]] = {}
        group_counts: dict[str, dict[str, dict[str, int]]] = {}
        score_terms = []
        for t, (rows, positives, nonfinite) in zip(self.tasks, stats):
            scores[t.name] = {}
            for name, metric in self.metrics[f"{stage}__{t.name}"].items():
                if rows == 0:  # decided on the global count: every process skips, or every one computes
                    value = float("nan")
                else:
                    with warnings.catch_warnings():  # a process without rows of its own still syncs
                        warnings.filterwarnings("ignore", message=".*was called before the ``update``")
                        value = float(metric.compute())  # synced across processes by torchmetrics
                    if nonfinite:  # a metric over NaN / inf predictions is undefined, whatever it returns
                        value = float("nan")
                counts = getattr(metric, "group_counts", None) if rows else None  # grouped: groups seen / skipped
                metric.reset()
                scores[t.name][name] = value
                self.log(f"{stage}/{t.name}/{name}", value, sync_dist=False, rank_zero_only=False)
                if counts is not None:
                    group_counts.setdefault(t.name, {})[name] = {"groups": counts.groups, "skipped": counts.skipped}
                    self.log(f"{stage}/{t.name}/{name}_groups", float(counts.groups), rank_zero_only=False)
                    self.log(f"{stage}/{t.name}/{name}_skipped_groups", float(counts.skipped), rank_zero_only=False)
            for name, value in ranking.get(t.name, {}).items():  # a retrieval task's full-ranking metrics
                value = float("nan") if nonfinite else value
                scores[t.name][name] = value
                self.log(f"{stage}/{t.name}/{name}", value, sync_dist=False, rank_zero_only=False)
            self._warn_undefined(stage, t, scores[t.name], int(rows), int(positives), int(nonfinite))
            if rows == 0:  # no labelled row in this split at all: left out of the score (at every epoch)
                continue
            primary = t.metrics[0]
            if t.type == "retrieval" and primary not in scores[t.name]:
                continue  # no full-ranking evaluation of this task here (its logged rows have no metric)
            v = scores[t.name].get(primary, float("nan"))
            if t.type == "retrieval":
                from mtlframe.ranking import higher_is_better

                higher = higher_is_better(primary)
            else:
                higher = self.metric_defs[t.name][primary].higher_is_better
            score_terms.append(v if higher else -v)
        # a NaN term makes the score NaN: a mean over fewer tasks is not comparable with a full one
        score = sum(score_terms) / len(score_terms) if score_terms else float("nan")
        self.log(f"{stage}/score", score, prog_bar=stage == "val")
        self.last_scores[stage] = scores
        self.last_group_counts[stage] = group_counts
        self._warn_perfect_auc(stage, scores)

    def _warn_perfect_auc(self, stage: str, scores: Mapping[str, Mapping[str, float]]) -> None:
        """An AUC of exactly 1.0 on held-out rows is a sign of label leakage (a feature that encodes
        the label): warned once per task and split, on the first process, not in the sanity check."""
        trainer = self._trainer
        if trainer is not None and (trainer.sanity_checking or not trainer.is_global_zero):
            return
        warned = self.__dict__.setdefault("_perfect_auc_warned", set())
        split = {"val": "validation", "test": "test"}.get(stage, stage)
        for task, values in scores.items():
            for name in ("auc", "gauc"):
                if values.get(name) == 1.0 and (stage, task, name) not in warned:
                    warned.add((stage, task, name))
                    warnings.warn(
                        f"task '{task}' has a {split} {name} of exactly 1.0 ({stage}/{task}/{name}): every positive "
                        "row is ranked above every negative one, which real data almost never allows. Check for "
                        "label leakage: a feature that is the label, a copy of it, or computed from it "
                        f"(tasks.{task}.label names the label column).", stacklevel=2)

    def _warn_undefined(self, stage: str, task: TaskSpec, scores: Mapping[str, float], rows: int,
                        positives: int, nonfinite: int) -> None:
        """Warn (once per split, task and cause) why a task's metrics are NaN."""
        nan = [m for m, v in scores.items() if v != v]
        if not nan or (self._trainer is not None and not self.trainer.is_global_zero):
            return
        split = f"the {stage} split"
        if rows == 0:
            key, msg = ("rows",), (f"task '{task.name}' has no labelled row in {split}: its {stage} metrics are NaN"
                                   + (" and it is left out of val/score." if stage == "val" else "."))
        elif nonfinite:
            key, msg = ("nonfinite",), (f"task '{task.name}': {nonfinite} of its {rows} predictions on {split} are "
                                        f"NaN or infinite (the model diverged; try a lower optimizer.lr): its "
                                        f"{stage} metrics are NaN.")
        elif task.type == "binary" and positives in (0, rows):
            key, msg = ("one-class",), (f"task '{task.name}': every labelled row of {split} ({rows}) has label "
                                        f"{int(positives == rows)}, so {', '.join(nan)} "
                                        f"{'is' if len(nan) == 1 else 'are'} undefined (NaN) on a single class"
                                        + (f"{' and val/score is NaN' if task.metrics[0] in nan else ''}; "
                                           "make the split hold both classes (another seed or a larger "
                                           "data.split.val), or monitor a metric defined on one class "
                                           f"(checkpoint.monitor: val/{task.name}/logloss)." if stage == "val"
                                           else "."))
        else:
            key, msg = ("undefined", *nan), (f"task '{task.name}': {', '.join(nan)} "
                                             f"{'is' if len(nan) == 1 else 'are'} undefined (NaN) on {split} "
                                             f"({rows} labelled rows).")
        if (stage, task.name, *key) not in self._warned:
            self._warned.add((stage, task.name, *key))
            warnings.warn(msg, UserWarning, stacklevel=2)

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    # -- optimization and checkpoints -------------------------------------------------------------
    def configure_model(self) -> None:
        """Lightning's hook once the processes are connected, before the strategy wraps the model
        and the optimizers are built: each encoder with a ``configure_distributed(strategy)``
        method sets itself up for the run (the ``torchrec-embedding`` encoder of the
        ``mtlframe-torchrec`` plugin shards its tables). Called again by every ``fit`` /
        ``validate`` / ``test``; such a method does nothing the second time."""
        for enc in self.model.encoders:
            setup = getattr(enc, "configure_distributed", None)
            if setup is not None:
                setup(self.trainer.strategy)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cfg = self.optimizer_cfg
        groups: list[dict[str, Any]] = []
        claimed: set[int] = set()
        for enc in self.model.encoders:
            fn = getattr(enc, "param_groups", None)
            if fn is None:
                continue
            for g in fn(cfg.lr) or []:
                params = [p for p in g["params"] if p.requires_grad and id(p) not in claimed]
                claimed.update(id(p) for p in params)
                if params:
                    groups.append({**g, "params": params})
        combiner_params = [p for p in self.combiner.parameters() if p.requires_grad]
        claimed.update(id(p) for p in combiner_params)
        if combiner_params:  # learned task weights / log-variances: no weight decay
            groups.append({"params": combiner_params, "weight_decay": 0.0, "name": "combiner"})
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in claimed]
        groups.insert(0, {"params": rest, "name": "dense"})
        optimizer = build_optimizer(cfg, groups, sparse_parameters(self.model))
        if self.schedule is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self._lr_scheduler(optimizer)}

    def _lr_scheduler(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Lightning's scheduler configuration of :attr:`schedule` over ``optimizer``. Its length
        (``total_steps`` of :meth:`~mtlframe.schedulers.base.LRSchedule.build`): the run's optimizer
        steps (Lightning's ``estimated_stepping_batches``: ``max_epochs`` x steps per epoch, or
        ``max_steps``), or its epochs, for ``interval: epoch``.

        Raises:
            RecipeError: the schedule does not fit this run (at ``optimizer.scheduler.<param>``), or
                it needs a monitored value and the run has no validation split.
        """
        from mtlframe.errors import ArgumentError, RecipeError

        trainer = self.trainer
        steps = trainer.estimated_stepping_batches   # sets up the training data: num_training_batches known
        total = int(steps) if math.isfinite(steps) else trainer.max_epochs * max(1, trainer.num_training_batches)
        if self.schedule_interval == "epoch":
            per_epoch = max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))
            total = max(1, math.ceil(total / per_epoch))
        source, lines = self._schedule_where
        monitor, mode = self.schedule_monitor or (None, "max")
        if self.schedule.needs_monitor and monitor is None:
            raise RecipeError([("optimizer.scheduler.name", "this schedule steps on the validation monitor "
                                "(checkpoint.monitor), and the run has no validation split (data.split.val: 0).")],
                              source, lines)
        try:
            scheduler = self.schedule.build(optimizer, max(1, total), mode)
        except ArgumentError as exc:
            raise RecipeError([(f"optimizer.scheduler.{exc.param}", str(exc))], source, lines) from None
        if not self.automatic_optimization:  # stepped by training_step / on_train_epoch_end
            return {"scheduler": scheduler}
        config = {"scheduler": scheduler, "interval": self.schedule_interval, "frequency": 1}
        if self.schedule.needs_monitor:
            config["monitor"] = monitor
        return config

    def _step_schedule(self, interval: str) -> None:
        """Under manual optimization, step the schedule at the end of an optimizer step or an epoch."""
        if self.schedule is None or self.automatic_optimization or self.schedule_interval != interval:
            return
        scheduler = self.lr_schedulers()
        if self.schedule.needs_monitor:
            value = self.trainer.callback_metrics.get(self.schedule_monitor[0])
            if value is not None:  # no validation this epoch: nothing to compare
                scheduler.step(float(value))
        else:
            scheduler.step()

    def _rates(self) -> dict[str, float] | None:
        """``{group name: lr}`` of every parameter group (``dense``, ``sparse``, ``combiner``, an
        encoder's own group such as ``text-lm``) when a schedule is set, else ``None``."""
        if self.schedule is None:
            return None
        return {g.get("name", f"group{i}"): float(g["lr"]) for i, g in enumerate(self.trainer.optimizers[0].param_groups)}

    def on_validation_start(self) -> None:
        """Run the deferred non-finite checks (one host sync) before a validation, so a model that
        diverged since the last logging step is never scored (``val_check_interval`` inside an epoch):
        its NaN score would reach the logs, the early-stopping policy and a plateau schedule."""
        self._check_pending()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_pending()   # no checkpoint of a diverged model, whoever saves it
        checkpoint["mtlframe"] = self.checkpoint_state

    def resume_state(self) -> dict[str, Any]:
        """The running state a checkpoint needs beyond the weights for an exact resume: the epoch's
        loss sums so far (its logged means and epoch-level combiners such as ``dwa`` see the whole
        epoch), the steps skipped, and the model-side negative sampler's generator. Deferred
        non-finite checks are run first (one host sync)."""
        self._check_pending()
        return {"skipped_steps": self.skipped_steps, "epoch_stats": self._epoch_stats,
                "epoch_total": self._epoch_total, "epoch_steps": self._epoch_steps,
                "skipped": [[int(s), list(b)] for s, b in self._skipped],
                "aux_parts": None if self._aux_parts is None else list(self._aux_parts),
                "negative_generator": self._negative_generator.get_state()}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`resume_state` returned (``train --resume``)."""
        self.skipped_steps = int(state["skipped_steps"])
        self._epoch_stats, self._epoch_total = state["epoch_stats"], state["epoch_total"]
        self._epoch_steps = int(state["epoch_steps"])
        self._skipped = [(int(s), list(b)) for s, b in state["skipped"]]
        self._aux_parts = state["aux_parts"]
        self._negative_generator.set_state(state["negative_generator"])
