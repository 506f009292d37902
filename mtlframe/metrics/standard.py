"""Built-in metrics, as torchmetrics objects so they accumulate over an epoch and sync under DDP.

``auc`` is the exact ROC AUC (all scores kept, no binning). ``accuracy`` predicts a binary row
positive when ``p >= 0.5`` (:class:`mtlframe.metrics.accuracy.BinaryAccuracy`), a multiclass row as
its most probable class. ``logloss`` is the mean negative
log-likelihood of the true label (binary cross-entropy or categorical cross-entropy), each
probability clipped to ``[1e-7, 1 - 1e-7]`` first (:class:`mtlframe.metrics.logloss.LogLoss`); it
equals scikit-learn's ``log_loss`` except for predictions within 1e-7 of 0 or 1.
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
    if task.type == "multiclass":
        from torchmetrics.classification import MulticlassAccuracy
        return MulticlassAccuracy(num_classes=task.num_classes, average="micro")
    from mtlframe.metrics.accuracy import BinaryAccuracy
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
accuracy = MetricDef(_accuracy, True, ("binary", "multiclass"), "accuracy (binary: positive when p >= 0.5; "
                     "multiclass: the most probable class)")
logloss = MetricDef(_logloss, False, ("binary", "multiclass"), "mean negative log-likelihood, probabilities "
                    "clipped to [1e-7, 1 - 1e-7]")
rmse = MetricDef(_rmse, False, ("regression",), "root mean squared error")
mae = MetricDef(_mae, False, ("regression",), "mean absolute error")
