"""``MultiTaskModule``: the Lightning *system* that trains a :class:`~mtlframe.model.MultiTaskModel`.

It receives built components and holds no model code of its own. Loss-level combiners run under
automatic optimization; a combiner with ``requires_manual_backward = True`` switches the module
to manual optimization and computes the update itself.

Logged keys: ``train/loss`` (every ``log_every_n_steps``), ``train/loss_epoch``, ``train/loss/<task>``,
``train/aux/<name>`` (epoch means), ``train/weight/<task>``,
``{val,test}/<task>/<metric>``, and ``val/score`` (mean over tasks of the primary metric, negated
where lower is better; the default checkpoint monitor).

Undefined metrics are NaN, never a number that looks valid: every metric of a task whose
predictions in the split hold a NaN or an infinity (a diverged model), AUC on a split whose labels
are one class, and any metric of a task without a labelled row in the split. Each case warns once,
naming the task, the split and the reason. ``val/score`` is NaN when any task's primary metric is
NaN, so a diverged or degenerate epoch never beats a healthy one; a task without a labelled row in
the split is left out of the score (the same tasks are left out at every epoch, so scores stay
comparable), and the score is NaN when no task has one.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import warnings

import pytorch_lightning as pl
import torch
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
        checkpoint_state: extra state saved into every checkpoint under ``"mtlframe"`` (the resolved
            recipe, the preprocessor, component providers) so ``predict`` needs nothing else.
    """

    def __init__(self, model: MultiTaskModel, combiner: LossCombiner, tasks: Sequence[TaskSpec],
                 metrics: Mapping[str, Mapping[str, MetricDef]], optimizer: OptimizerConfig,
                 gradient_clip_val: float | None = None, checkpoint_state: Mapping[str, Any] | None = None) -> None:
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
        self._epoch_loss_sum: dict[str, torch.Tensor] = {}
        self._epoch_loss_n: dict[str, int] = {}
        self.last_scores: dict[str, dict[str, dict[str, float]]] = {}
        # per stage, per task: [labelled rows, positive rows (binary), non-finite predictions],
        # accumulated on the device during an evaluation epoch and summed across processes at its end
        self._eval_stats: dict[str, torch.Tensor] = {}
        #: ``{stage: {task: labelled rows}}`` of the last evaluation epoch (all processes together)
        self.last_rows: dict[str, dict[str, int]] = {}
        self._warned: set[tuple[str, ...]] = set()
        #: ``{stage: {task: {metric: {"groups": G, "skipped": S}}}}`` for grouped metrics (gauc, ndcg@K, ...)
        self.last_group_counts: dict[str, dict[str, dict[str, dict[str, int]]]] = {}

    # -- device transfer -------------------------------------------------------------------------
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Batches are flat ``{key: tensor}`` dicts (:class:`~mtlframe.batching.ColumnBatches`).

        On CPU they are already in place and pass through untouched (no walk over the
        collection); on CUDA each tensor is copied with ``non_blocking=True``, asynchronous from the
        pinned blocks the data module hands out on that accelerator. Any other batch goes through
        Lightning's default.
        """
        if isinstance(batch, dict) and all(torch.is_tensor(v) for v in batch.values()):
            if all(v.device == device for v in batch.values()):
                return batch
            non_blocking = device.type == "cuda"
            return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # -- forward and losses ----------------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model(batch)

    def task_losses(self, batch: Mapping[str, torch.Tensor],
                    outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Masked mean loss per task; a task with no labelled row in the batch is left out."""
        losses = {}
        for t in self.tasks:
            target = batch[label_key(t.name)]
            out = outputs[t.name]
            mask = batch.get(mask_key(t.name))
            if mask is not None:
                if not bool(mask.any()):
                    continue
                target, out = target[mask], out[mask]
            losses[t.name] = task_loss(t.type, out, target).mean()
        return losses

    # -- training ----------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        x = self.model.encode(batch)                               # (B, D), or TaskInputs
        outputs = self.model.forward_from(x)
        losses = self.task_losses(batch, outputs)
        if not losses:
            if not self.automatic_optimization and self.trainer.world_size > 1:
                # every process must take part in each backward under DDP: a zero update
                opt = self.optimizers()
                opt.zero_grad(set_to_none=True)
                self.manual_backward(sum(o.sum() for o in outputs.values()) * 0.0)
                opt.step()
            return None
        aux = self.model.backbone.auxiliary_loss(batch, outputs)
        aux_total = sum(aux.values()) if aux else None
        bsz = next(iter(batch.values())).shape[0]
        if self.automatic_optimization:
            total = self.combiner(losses)
            if aux_total is not None:
                total = total + aux_total
        else:
            opt = self.optimizers()
            opt.zero_grad(set_to_none=True)
            shared = [p for p in self.model.shared_parameters() if p.requires_grad]
            backward = self.manual_backward if aux_total is None else (
                lambda loss: self.manual_backward(loss + aux_total))
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
            total = sum(w * losses[t].detach() for t, w in self.combiner.current_weights().items() if t in losses)
        # Per-step work stays on-device: each ``self.log`` call costs about a millisecond of
        # Lightning bookkeeping, so epoch means are accumulated here and logged once per epoch
        # (``on_train_epoch_end``) and step values only every ``log_every_n_steps``.
        for name, loss in losses.items():
            self._accumulate(name, loss.detach())
        for name, value in aux.items():
            self._accumulate(f"aux/{name}", value.detach())
        total_d = total.detach() if torch.is_tensor(total) else torch.as_tensor(float(total))
        self._accumulate("__total__", total_d)
        if batch_idx % self.trainer.log_every_n_steps == 0:
            self.log("train/loss", total_d, on_step=True, on_epoch=False, prog_bar=True, batch_size=bsz)
            for t, w in self.combiner.current_weights().items():
                self.log(f"train/weight/{t}", float(w), on_step=True, on_epoch=False, batch_size=bsz)
        return total if self.automatic_optimization else None

    def _accumulate(self, name: str, value: torch.Tensor) -> None:
        self._epoch_loss_sum[name] = self._epoch_loss_sum.get(name, 0) + value
        self._epoch_loss_n[name] = self._epoch_loss_n.get(name, 0) + 1

    def on_train_epoch_end(self) -> None:
        means = {}
        for t, total in self._epoch_loss_sum.items():
            mean = torch.as_tensor(total / self._epoch_loss_n[t], dtype=torch.float32, device=self.device)
            if self.trainer.world_size > 1:  # the same epoch means on every process (DWA)
                mean = self.trainer.strategy.reduce(mean, reduce_op="mean")
            means[t] = float(mean)
        for t, value in means.items():  # epoch means (of batch means), logged once per epoch
            key = "train/loss_epoch" if t == "__total__" else f"train/{t}" if t.startswith("aux/") else f"train/loss/{t}"
            self.log(key, value, on_step=False, on_epoch=True)
        means = {t: v for t, v in means.items() if t in self.combiner.task_names}
        self.combiner.on_train_epoch_end(means)
        self._epoch_loss_sum.clear()
        self._epoch_loss_n.clear()

    # -- evaluation ----------------------------------------------------------------------------
    def _eval_step(self, stage: str, batch: Mapping[str, torch.Tensor]) -> None:
        outputs = self.model(batch)
        groups = batch.get(GROUP_KEY)
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
            if target.numel() == 0:
                continue
            if t.type == "binary":
                target = target.long()
            pred = pred.float()
            stats[i, 0] += target.numel()
            if t.type == "binary":
                stats[i, 1] += target.sum()
            stats[i, 2] += (~torch.isfinite(pred)).sum()
            for name, metric in self.metrics[f"{stage}__{t.name}"].items():
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
        scores: dict[str, dict[str, float]] = {}
        group_counts: dict[str, dict[str, dict[str, int]]] = {}
        score_terms = []
        for t, (rows, positives, nonfinite) in zip(self.tasks, stats):
            scores[t.name] = {}
            for name, metric in self.metrics[f"{stage}__{t.name}"].items():
                if rows == 0:  # decided on the global count: every process skips, or every one computes
                    value = float("nan")
                else:
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
            self._warn_undefined(stage, t, scores[t.name], int(rows), int(positives), int(nonfinite))
            if rows == 0:  # no labelled row in this split at all: left out of the score (at every epoch)
                continue
            primary = t.metrics[0]
            v = scores[t.name].get(primary, float("nan"))
            score_terms.append(v if self.metric_defs[t.name][primary].higher_is_better else -v)
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
            groups.append({"params": combiner_params, "weight_decay": 0.0})
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in claimed]
        groups.insert(0, {"params": rest})
        return build_optimizer(cfg, groups, sparse_parameters(self.model))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mtlframe"] = self.checkpoint_state
