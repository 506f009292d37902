"""Built-in metrics, as torchmetrics objects so they accumulate over an epoch and sync under DDP.

``auc`` is the exact ROC AUC (all scores kept, no binning). ``logloss`` is the mean negative
log-likelihood of the true label (binary cross-entropy or categorical cross-entropy), clipped at
``1e-7`` like scikit-learn's ``log_loss``.
"""
from __future__ import annotations

import torch
import torchmetrics
from torchmetrics import classification, regression

from mtlframe.features import TaskSpec
from mtlframe.metrics.base import MetricDef

_EPS = 1e-7


class LogLoss(torchmetrics.Metric):
    """Mean log loss. ``update(probs, target)`` with ``probs [B]`` (binary) or ``[B, C]``."""

    higher_is_better = False
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        p = preds.double().clamp(_EPS, 1 - _EPS)
        if p.ndim == 2:
            nll = -torch.log(p.gather(1, target.long().view(-1, 1)).squeeze(1))
        else:
            t = target.double()
            nll = -(t * torch.log(p) + (1 - t) * torch.log1p(-p))
        self.total += nll.sum()
        self.count += nll.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp(min=1)).float()


def _auc(task: TaskSpec) -> torchmetrics.Metric:
    return classification.BinaryAUROC()


def _accuracy(task: TaskSpec) -> torchmetrics.Metric:
    if task.type == "multiclass":
        return classification.MulticlassAccuracy(num_classes=task.num_classes, average="micro")
    return classification.BinaryAccuracy()


def _logloss(task: TaskSpec) -> torchmetrics.Metric:
    return LogLoss()


def _rmse(task: TaskSpec) -> torchmetrics.Metric:
    return regression.MeanSquaredError(squared=False)


def _mae(task: TaskSpec) -> torchmetrics.Metric:
    return regression.MeanAbsoluteError()


auc = MetricDef(_auc, True, ("binary",), "area under the ROC curve (exact)")
accuracy = MetricDef(_accuracy, True, ("binary", "multiclass"), "accuracy (binary at p >= 0.5)")
logloss = MetricDef(_logloss, False, ("binary", "multiclass"), "mean negative log-likelihood")
rmse = MetricDef(_rmse, False, ("regression",), "root mean squared error")
mae = MetricDef(_mae, False, ("regression",), "mean absolute error")
