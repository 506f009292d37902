"""Grouped ranking metrics: GAUC, NDCG@K, Recall@K, HitRate@K (registered definitions).

The metric classes (:class:`GroupAUC`, :class:`GroupNDCG`, :class:`GroupRecall`,
:class:`GroupHitRate`, torchmetrics ``Metric`` subclasses) live in ``mtlframe.metrics._grouped``
and are imported only when a metric is built, so validating a recipe does not import
torchmetrics. See that module for the definitions, tie handling and DDP behaviour.
"""
from __future__ import annotations

from typing import Any

from mtlframe.features import TaskSpec
from mtlframe.metrics.base import GAUC_WEIGHTS, GroupCounts, MetricDef  # noqa: F401  (re-exported)
_CLASSES = ("GroupAUC", "GroupNDCG", "GroupRecall", "GroupHitRate", "GroupedMetric")


def __getattr__(name: str) -> Any:  # the classes, on first use (PEP 562)
    if name in _CLASSES:
        from mtlframe.metrics import _grouped

        return getattr(_grouped, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- registered definitions -----------------------------------------------------------------------

def _gauc(task: TaskSpec, group: Any = None) -> Any:
    from mtlframe.metrics._grouped import GroupAUC

    return GroupAUC(getattr(group, "gauc_weight", "impressions"))


def _ndcg(task: TaskSpec, k: int, group: Any = None) -> Any:
    from mtlframe.metrics._grouped import GroupNDCG

    return GroupNDCG(k, task.name)


def _recall(task: TaskSpec, k: int, group: Any = None) -> Any:
    from mtlframe.metrics._grouped import GroupRecall

    return GroupRecall(k, task.name)


def _hitrate(task: TaskSpec, k: int, group: Any = None) -> Any:
    from mtlframe.metrics._grouped import GroupHitRate

    return GroupHitRate(k, task.name)


_DIN = 'Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018'
_NDCG = 'Järvelin & Kekäläinen, "Cumulated gain-based evaluation of IR techniques", ACM TOIS 2002'

gauc = MetricDef(_gauc, True, ("binary",), "group AUC: per-group AUC averaged with impression (or click) "
                 "weights; single-class groups skipped", grouped=True, paper=_DIN)
ndcg = MetricDef(_ndcg, True, ("binary", "regression"), "NDCG@K per group (the label is the graded "
                 "relevance), averaged over groups with a relevant row", grouped=True, cutoff=True, paper=_NDCG)
recall = MetricDef(_recall, True, ("binary",), "share of a group's positive rows ranked in its top K, "
                   "averaged over groups with a positive row", grouped=True, cutoff=True)
hitrate = MetricDef(_hitrate, True, ("binary",), "share of groups with a positive row in their top K "
                    "(among groups with a positive row)", grouped=True, cutoff=True)
