"""Built-in metrics, as torchmetrics objects so they accumulate over an epoch and sync under DDP.

``auc`` is the exact ROC AUC (all scores kept, no binning). ``logloss`` is the mean negative
log-likelihood of the true label (binary cross-entropy or categorical cross-entropy), clipped at
``1e-7`` like scikit-learn's ``log_loss`` (:class:`mtlframe.metrics.logloss.LogLoss`).
"""
from __future__ import annotations

from typing import Any

from mtlframe.features import TaskSpec
from mtlframe.metrics.base import MetricDef

# torchmetrics is imported inside the builders: validating a recipe must not pay for it.


def _auc(task: TaskSpec) -> Any:
    from mtlframe.metrics.auc import AUC
    return AUC()


def _accuracy(task: TaskSpec) -> Any:
    from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy
    if task.type == "multiclass":
        return MulticlassAccuracy(num_classes=task.num_classes, average="micro")
    return BinaryAccuracy()


def _logloss(task: TaskSpec) -> Any:
    from mtlframe.metrics.logloss import LogLoss
    return LogLoss()


def _rmse(task: TaskSpec) -> Any:
    from torchmetrics.regression import MeanSquaredError
    return MeanSquaredError(squared=False)


def _mae(task: TaskSpec) -> Any:
    from torchmetrics.regression import MeanAbsoluteError
    return MeanAbsoluteError()


auc = MetricDef(_auc, True, ("binary",), "area under the ROC curve (exact)")
accuracy = MetricDef(_accuracy, True, ("binary", "multiclass"), "accuracy (binary at p >= 0.5)")
logloss = MetricDef(_logloss, False, ("binary", "multiclass"), "mean negative log-likelihood")
rmse = MetricDef(_rmse, False, ("regression",), "root mean squared error")
mae = MetricDef(_mae, False, ("regression",), "mean absolute error")
