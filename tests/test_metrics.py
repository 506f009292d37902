"""Metrics against values computed by hand."""
import math

import pytest
import torch

from mtlframe.features import TaskSpec
from mtlframe.metrics import standard


def _task(kind="binary", c=1):
    return TaskSpec("t", kind, "y", metrics=("auc",), num_classes=c)


def test_auc_matches_pair_counting():
    # positives 0.8, 0.4; negatives 0.6, 0.2, 0.4 -> pairs won: (0.8>0.6, 0.8>0.2, 0.8>0.4, 0.4>0.2, 0.4=0.4 half)
    p = torch.tensor([0.8, 0.4, 0.6, 0.2, 0.4])
    y = torch.tensor([1, 1, 0, 0, 0])
    m = standard.auc(_task())
    m.update(p[:2], y[:2])
    m.update(p[2:], y[2:])  # accumulates across batches
    assert math.isclose(float(m.compute()), 4.5 / 6, abs_tol=1e-6)


def test_logloss_binary_and_multiclass():
    m = standard.logloss(_task())
    m.update(torch.tensor([0.9, 0.2]), torch.tensor([1, 0]))
    assert math.isclose(float(m.compute()), -(math.log(0.9) + math.log(0.8)) / 2, rel_tol=1e-6)
    mc = standard.logloss(_task("multiclass", 3))
    mc.update(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]), torch.tensor([0, 1]))
    assert math.isclose(float(mc.compute()), -(math.log(0.7) + math.log(0.1)) / 2, rel_tol=1e-6)


def test_rmse_mae_accuracy():
    r = standard.rmse(_task("regression"))
    r.update(torch.tensor([3.0, 5.0]), torch.tensor([4.0, 2.0]))
    assert math.isclose(float(r.compute()), math.sqrt((1 + 9) / 2), rel_tol=1e-6)
    a = standard.mae(_task("regression"))
    a.update(torch.tensor([3.0, 5.0]), torch.tensor([4.0, 2.0]))
    assert math.isclose(float(a.compute()), 2.0, rel_tol=1e-6)
    acc = standard.accuracy(_task())
    acc.update(torch.tensor([0.9, 0.4, 0.6]), torch.tensor([1, 1, 0]))
    assert math.isclose(float(acc.compute()), 1 / 3, rel_tol=1e-6)


def test_auc_is_nan_for_a_single_class():
    m = standard.auc(_task())
    m.update(torch.tensor([0.2, 0.7]), torch.tensor([0, 0]))
    assert math.isnan(float(m.compute()))


def test_binary_accuracy_counts_exactly_one_half_as_positive_as_documented():
    acc = standard.accuracy(_task())
    # 0.5 -> class 1 (right for label 1, wrong for label 0); just below -> class 0
    acc.update(torch.tensor([0.5, 0.5, 0.49999, 0.0, 1.0]), torch.tensor([1, 0, 0, 0, 1]))
    assert math.isclose(float(acc.compute()), 4 / 5, rel_tol=1e-6)
    assert "p >= 0.5" in standard.accuracy.summary
    assert "p >= 0.5" in standard.accuracy.build.__globals__["__doc__"]


def test_logloss_clips_probabilities_as_its_docstring_says():
    from mtlframe.metrics.logloss import _EPS, LogLoss

    assert _EPS == 1e-7 and "[1e-7, 1 - 1e-7]" in LogLoss.__doc__ and "1e-7" in standard.logloss.summary
    m = standard.logloss(_task())
    # a confident wrong prediction costs -log(1e-7), not infinity; 1.0 on a positive costs ~1e-7
    m.update(torch.tensor([0.0, 1.0]), torch.tensor([1, 1]))
    assert math.isclose(float(m.compute()), (-math.log(1e-7) - math.log(1 - 1e-7)) / 2, rel_tol=1e-6)
    mc = standard.logloss(_task("multiclass", 3))
    mc.update(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([2]))
    assert math.isclose(float(mc.compute()), -math.log(1e-7), rel_tol=1e-6)
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(float(LogLoss().compute()))  # no row seen: undefined, not a perfect 0
