"""Group-wise metrics (gauc, ndcg@K, recall@K, hitrate@K): hand-computed values, reference
implementations, recipe errors and the group column's path through the data module."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlframe import testing
from mtlframe.build import Builder
from mtlframe.errors import DataError, MTLFrameError, RecipeError
from mtlframe.features import GROUP_KEY, TaskSpec
from mtlframe.metrics.grouped import GroupAUC, GroupHitRate, GroupNDCG, GroupRecall, gauc, hitrate, ndcg, recall
from mtlframe.recipe import recipe_from_dict

T = torch.tensor


def _value(metric, *batches):
    for preds, target, indexes in batches:
        metric.update(T(preds, dtype=torch.float32), T(target), T(indexes))
    return float(metric.compute())


# -- hand-computed values ---------------------------------------------------------------------------

# user 0: 5 rows, positives at 0.8 and 0.4, negatives 0.6, 0.4, 0.2: pairs won 0.8>{.6,.4,.2}, 0.4>.2,
#         0.4=0.4 half -> 4.5 / 6 = 0.75
# user 1: 3 rows, positive 0.3, negatives 0.9, 0.1 -> 1 / 2 = 0.5
# user 2: 2 rows, both positive -> no AUC, skipped (but it is in the other users' batches)
USERS = ([0.8, 0.4, 0.6, 0.4, 0.2, 0.3, 0.9, 0.1, 0.7, 0.5],
         [1, 1, 0, 0, 0, 1, 0, 0, 1, 1],
         [0, 0, 0, 0, 0, 1, 1, 1, 2, 2])


def test_gauc_ties_skipped_user_and_impression_weights():
    # impressions: (5 * 0.75 + 3 * 0.5) / (5 + 3)
    assert _value(GroupAUC(), USERS) == pytest.approx((5 * 0.75 + 3 * 0.5) / 8, abs=1e-6)


def test_gauc_click_weights_and_batches_accumulate():
    first = [v[:4] for v in USERS]
    rest = [v[4:] for v in USERS]
    # clicks: (2 * 0.75 + 1 * 0.5) / (2 + 1)
    assert _value(GroupAUC("clicks"), first, rest) == pytest.approx(2.0 / 3, abs=1e-6)


def test_gauc_is_nan_when_every_user_has_one_class_and_missing_groups_are_left_out():
    assert math.isnan(_value(GroupAUC(), ([0.2, 0.9, 0.4], [1, 1, 0], [0, 0, 1])))
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(float(GroupAUC().compute()))   # nothing seen
    # group id -1 (a missing value in the group column) is ignored: only user 1's AUC (0.5) remains
    preds, target, idx = USERS
    idx = [-1 if i == 0 else i for i in idx]
    assert _value(GroupAUC(), (preds, target, idx)) == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="impressions, clicks"):
        GroupAUC("views")


def test_grouped_metrics_count_the_groups_they_skip():
    from mtlframe.metrics.base import GroupCounts

    # USERS: user 2 has two positives and no negative -> one class, skipped by GAUC only
    gauc_ = GroupAUC()
    assert gauc_.group_counts is None
    _value(gauc_, USERS)
    assert gauc_.group_counts == GroupCounts(groups=3, skipped=1)
    gauc_.reset()
    assert gauc_.group_counts is None
    for metric in (GroupNDCG(3), GroupRecall(2), GroupHitRate(2)):
        _value(metric, USERS)
        assert metric.group_counts == GroupCounts(3, 0), type(metric).__name__
    # groups 0 and 3 hold one row each, group 1 only negatives, group 2 both classes; group id -1
    # (missing) is no group at all
    rows = ([0.9, 0.2, 0.3, 0.8, 0.1, 0.5, 0.4], [1, 0, 0, 1, 0, 0, 1], [0, 1, 1, 2, 2, 3, -1])
    expected = {GroupAUC: GroupCounts(4, 3), GroupNDCG: GroupCounts(4, 2), GroupRecall: GroupCounts(4, 2),
                GroupHitRate: GroupCounts(4, 2)}
    for cls, counts in expected.items():
        metric = cls() if cls is GroupAUC else cls(1)
        value = _value(metric, rows)
        assert metric.group_counts == counts, cls.__name__
        assert value == pytest.approx(1.0)       # the groups kept rank their positive first
    every_group_skipped = GroupAUC()
    assert math.isnan(_value(every_group_skipped, ([0.1, 0.2], [1, 0], [0, 1])))
    assert every_group_skipped.group_counts == GroupCounts(2, 2)


def test_ndcg_graded_relevance_ties_and_cutoff():
    d = [1 / math.log2(r + 1) for r in range(1, 6)]     # discount of ranks 1..5
    # user 0: scores 0.9, 0.5, 0.5, 0.1 with relevance 0, 2, 1, 3: ranks 2 and 3 are tied, each
    #         gets the mean gain (2 + 1) / 2 over both positions. Ideal order 3, 2, 1, 0.
    # user 1: relevance all 0 -> skipped.  user 2: one row, relevant -> 1.
    batch = ([0.9, 0.5, 0.5, 0.1, 0.3, 0.2, 0.4], [0, 2, 1, 3, 0, 0, 1], [0, 0, 0, 0, 1, 1, 2])
    dcg3 = 0 * d[0] + 1.5 * (d[1] + d[2])
    idcg3 = 3 * d[0] + 2 * d[1] + 1 * d[2]
    assert _value(GroupNDCG(3), batch) == pytest.approx((dcg3 / idcg3 + 1) / 2, abs=1e-6)
    # K = 2 cuts through the tie: the tied block contributes its mean gain at position 2 only
    dcg2, idcg2 = 1.5 * d[1], 3 * d[0] + 2 * d[1]
    assert _value(GroupNDCG(2), batch) == pytest.approx((dcg2 / idcg2 + 1) / 2, abs=1e-6)
    dcg4 = dcg3 + 3 * d[3]
    assert _value(GroupNDCG(10), batch) == pytest.approx((dcg4 / (idcg3 + 0 * d[3]) + 1) / 2, abs=1e-6)
    assert math.isnan(_value(GroupNDCG(5), ([0.1, 0.2], [0, 0], [0, 1])))
    with pytest.raises(DataError, match="task 'rating'.*non-negative relevance"):
        _value(GroupNDCG(5, task="rating"), ([0.1, 0.2], [-1.0, 2.0], [0, 0]))
    with pytest.raises(ValueError, match="positive integer"):
        GroupNDCG(0)


def test_recall_and_hitrate_with_a_tie_at_the_cutoff():
    # user 0: 0.9 (neg), then four rows tied at 0.5 of which two are positive.
    #   K=2: one slot of the tie in the top 2: expected positives 1 * 2/4 -> recall 0.25;
    #        P(hit) = 1 - C(2,1)/C(4,1) = 0.5.
    #   K=3: two slots: recall 2 * 2/4 / 2 = 0.5; P(hit) = 1 - C(2,2)/C(4,2) = 5/6.
    # user 1: positive ranked first -> recall 1, hit 1 at any K.  user 2: no positive -> skipped.
    batch = ([0.9, 0.5, 0.5, 0.5, 0.5, 0.8, 0.1, 0.3], [0, 1, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1, 1, 2])
    assert _value(GroupRecall(2), batch) == pytest.approx((0.25 + 1) / 2, abs=1e-6)
    assert _value(GroupHitRate(2), batch) == pytest.approx((0.5 + 1) / 2, abs=1e-6)
    assert _value(GroupRecall(3), batch) == pytest.approx((0.5 + 1) / 2, abs=1e-6)
    assert _value(GroupHitRate(3), batch) == pytest.approx((5 / 6 + 1) / 2, abs=1e-6)
    assert _value(GroupHitRate(1), batch) == pytest.approx(0.5, abs=1e-6)
    assert _value(GroupRecall(5), batch) == pytest.approx(1.0, abs=1e-6)


# -- against reference implementations -------------------------------------------------------------

def _random(n=3000, groups=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, groups, (n,), generator=g)
    scores = torch.randint(0, 8, (n,), generator=g) / 7.0            # many ties
    y = (torch.rand(n, generator=g) < 0.3).long()
    rel = torch.randint(0, 5, (n,), generator=g)
    return idx, scores, y, rel


def test_gauc_equals_scikit_learn_per_group():
    from sklearn.metrics import roc_auc_score
    idx, scores, y, _ = _random()
    num = den = 0.0
    for u in idx.unique():
        s = idx == u
        if y[s].min() != y[s].max():
            num += roc_auc_score(y[s].numpy(), scores[s].numpy()) * int(s.sum())
            den += int(s.sum())
    m = GroupAUC()
    for part in torch.arange(len(idx)).chunk(7):
        m.update(scores[part], y[part], idx[part])
    assert float(m.compute()) == pytest.approx(num / den, abs=1e-6)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_ranking_metrics_equal_torchmetrics_retrieval_with_empty_groups_skipped(k):
    from torchmetrics.retrieval import RetrievalHitRate, RetrievalNormalizedDCG, RetrievalRecall
    idx, scores, y, rel = _random(seed=k)
    ours = GroupNDCG(k)
    ours.update(scores, rel.float(), idx)
    ref = RetrievalNormalizedDCG(top_k=k, empty_target_action="skip")   # tie-averaged, like sklearn
    ref.update(scores, rel, idx)
    assert float(ours.compute()) == pytest.approx(float(ref.compute()), abs=1e-5)
    distinct = torch.rand(len(idx), generator=torch.Generator().manual_seed(k))    # no ties
    for mine, theirs in ((GroupRecall(k), RetrievalRecall(top_k=k, empty_target_action="skip")),
                         (GroupHitRate(k), RetrievalHitRate(top_k=k, empty_target_action="skip"))):
        mine.update(distinct, y, idx)
        theirs.update(distinct, y, idx)
        assert float(mine.compute()) == pytest.approx(float(theirs.compute()), abs=1e-6)


def test_state_merges_like_processes_do():
    """Under DDP torchmetrics concatenates the list states of every process; merging two halves
    of the rows (a user's rows split between them) gives the value of all rows at once."""
    idx, scores, y, _ = _random()
    whole, a, b = GroupAUC(), GroupAUC(), GroupAUC()
    whole.update(scores, y, idx)
    a.update(scores[::2], y[::2], idx[::2])
    b.update(scores[1::2], y[1::2], idx[1::2])
    a.merge_state(b)
    assert float(a.compute()) == pytest.approx(float(whole.compute()), abs=1e-9)


@pytest.mark.parametrize("metric", [gauc, ndcg, recall, hitrate], ids=["gauc", "ndcg", "recall", "hitrate"])
def test_registered_definitions_pass_the_contract_check(metric):
    testing.check_metric(metric)
    assert metric.grouped and metric.higher_is_better


# -- recipes ------------------------------------------------------------------------------------------

def _problems(**overrides):
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(testing.tiny_recipe(**overrides), "r.yaml")
    return info.value.problems


@pytest.mark.parametrize("metrics,group,path,match", [
    (["auc", "ndcg@0"], "cat_0", "tasks.task_1_bin.metrics[1]", r"'ndcg@0'.*positive integer.*'ndcg@10'"),
    (["auc", "ndcg@ten"], "cat_0", "tasks.task_1_bin.metrics[1]", "positive integer"),
    (["auc", "ndcg"], "cat_0", "tasks.task_1_bin.metrics[1]", "needs a cutoff: write 'ndcg@K'"),
    (["auc@5"], "cat_0", "tasks.task_1_bin.metrics[0]", "takes no @K cutoff"),
    (["gauc"], None, "tasks.task_1_bin.metrics[0]", "add `metrics_group: <column>`"),
], ids=["ndcg@0", "ndcg@ten", "ndcg-without-k", "auc@5", "no-group"])
def test_bad_grouped_metric_names_are_recipe_errors(metrics, group, path, match):
    over = {"tasks.task_1_bin.metrics": metrics}
    if group:
        over["metrics_group"] = group
    problems = dict(_problems(**over))
    assert path in problems and re.search(match, problems[path]), problems


def test_gauc_on_a_regression_task_is_refused_and_ndcg_accepted():
    problems = dict(_problems(**{"tasks.task_0.metrics": ["rmse", "gauc", "ndcg@5"], "metrics_group": "cat_0"}))
    assert list(problems) == ["tasks.task_0.metrics[1]"]
    assert "does not apply to regression" in problems["tasks.task_0.metrics[1]"]
    assert "graded relevance" in problems["tasks.task_0.metrics[1]"]


def test_metrics_group_forms():
    rec = recipe_from_dict(testing.tiny_recipe(metrics_group={"column": "cat_0", "gauc_weight": "clicks"},
                                               **{"tasks.task_1_bin.metrics": ["gauc"]}))
    assert rec.config.metrics_group.gauc_weight == "clicks" and rec.metrics_group_column() == "cat_0"
    assert recipe_from_dict(testing.tiny_recipe(metrics_group="cat_0")).metrics_group_column() is None
    problems = dict(_problems(metrics_group={"column": "cat_0", "gauc_weight": "views"}))
    assert "metrics_group.gauc_weight" in problems


def test_unknown_group_column_names_the_key_and_the_closest_column():
    with pytest.raises(RecipeError) as info:
        testing.tiny_datamodule(metrics_group="cat0", **{"tasks.task_1_bin.metrics": ["gauc"]})
    problems = dict(info.value.problems)
    assert "no column 'cat0'" in problems["metrics_group"] and "did you mean 'cat_0'" in problems["metrics_group"]


# -- the group column's path -----------------------------------------------------------------------

def _attached(recipe):
    dm = testing.tiny_datamodule(recipe)
    b = Builder(dm.recipe)
    tasks = dm.task_specs()
    dm.attach_encoders(b.encoders(dm.feature_info()), tasks)
    return dm, b, tasks


def test_group_ids_travel_with_evaluation_batches_only():
    dm, b, tasks = _attached(testing.tiny_recipe(metrics_group="cat_0",
                                                 **{"tasks.task_1_bin.metrics": ["auc", "gauc", "ndcg@5"]}))
    assert GROUP_KEY not in next(iter(dm.train_dataloader()))
    raw = b.dataset().load().frame["cat_0"].to_numpy()      # the feature column itself was consumed
    for split in ("val", "test"):
        batch = next(iter(dm.val_dataloader() if split == "val" else dm.test_dataloader()))
        cat = raw[dm.split_index[split]][:len(batch[GROUP_KEY])]
        ids = batch[GROUP_KEY].numpy()
        assert batch[GROUP_KEY].dtype == torch.int64
        # the same value always maps to the same id within a split, and different values differ
        assert len(set(zip(ids.tolist(), cat.tolist()))) == len(np.unique(ids)) == len(np.unique(cat))
    metrics = b.metrics(tasks)["task_1_bin"]
    built = {name: d.build(tasks[1]) for name, d in metrics.items()}
    assert isinstance(built["ndcg@5"], GroupNDCG) and built["ndcg@5"].k == 5
    # no grouped metric: the column is not carried at all
    dm, _, _ = _attached(testing.tiny_recipe(metrics_group="cat_0"))
    assert GROUP_KEY not in next(iter(dm.val_dataloader()))


def test_module_without_group_ids_says_what_to_set():
    from mtlframe.module import MultiTaskModule
    dm, b, tasks = _attached(testing.tiny_recipe(metrics_group="cat_0", **{"tasks.task_1_bin.metrics": ["gauc"]}))
    model = b.model(b.encoders(dm.feature_info()), tasks)
    module = MultiTaskModule(model, b.combiner(tasks), tasks, b.metrics(tasks), dm.recipe.config.optimizer)
    batch = dict(next(iter(dm.val_dataloader())))
    batch.pop(GROUP_KEY)
    with pytest.raises(MTLFrameError, match="metrics_group"):
        module.validation_step(batch, 0)


def test_grouped_metrics_in_a_tiny_training_run(tmp_path, capsys):
    from mtlframe.run import train

    torch.set_num_threads(1)
    recipe = testing.tiny_recipe(metrics_group={"column": "cat_0", "gauc_weight": "clicks"}, logger={"name": "csv"},
                                 checkpoint={"monitor": "val/task_1_bin/ndcg@5"}, **{
        "tasks.task_1_bin.metrics": ["auc", "gauc", "ndcg@5", "recall@3", "hitrate@3"],
        "trainer.enable_progress_bar": True})
    result = train(recipe_from_dict(recipe, "<tiny>"), tmp_path)   # output is not a terminal: epoch lines
    epoch_line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch "))
    assert re.search(r"val/task_1_bin/gauc 0\.\d{4} .*val/task_1_bin/gauc_skipped_groups \d+  ", epoch_line)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for split in ("val", "test"):
        binary = saved[split]["task_1_bin"]
        assert set(binary) == {"auc", "gauc", "ndcg@5", "recall@3", "hitrate@3"}
        assert all(0.0 < v <= 1.0 for v in binary.values()), binary
    assert result.metrics["test"]["task_1_bin"]["gauc"] == saved["test"]["task_1_bin"]["gauc"]
    assert Path(result.best_checkpoint).is_file()
    # groups seen and skipped, next to each grouped metric: in metrics.json and in the logs
    for split in ("val", "test"):
        counts = saved["groups"][split]["task_1_bin"]
        assert set(counts) == {"gauc", "ndcg@5", "recall@3", "hitrate@3"}
        groups = {c["groups"] for c in counts.values()}
        assert len(groups) == 1 and 0 < groups.pop() <= 20          # cat_0 has 20 ids
        # a group without a positive has a single class: GAUC skips at least what recall skips
        assert counts["recall@3"]["skipped"] == counts["hitrate@3"]["skipped"] <= counts["gauc"]["skipped"]
    logged = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("val/task_1_bin/gauc_groups", "val/task_1_bin/gauc_skipped_groups",
                "test/task_1_bin/ndcg@5_skipped_groups", "val/task_1_bin/hitrate@3_groups"):
        assert key in logged, key


def test_csv_loads_a_grouping_column_that_is_no_feature(tmp_path):
    """csv/parquet load only declared columns; metrics_group's column is loaded too."""
    from mtlframe.run import train

    rng = np.random.default_rng(0)
    n = 3000
    x = rng.normal(size=n)
    rows = ["sess,x,y"] + [f"{rng.integers(0, 30)},{v:.4f},{int(v + rng.normal() * 0.5 > 0)}" for v in x]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    rec = recipe_from_dict({
        "data": {"dataset": {"name": "csv", "path": str(tmp_path / "d.csv"), "features": {"x": "numeric"},
                             "labels": ["y"]}},
        "tasks": {"y": {"type": "binary", "label": "y", "metrics": ["auc", "gauc"]}},
        "metrics_group": "sess",
        "model": {"encoders": [{"name": "numeric", "features": ["x"]}], "backbone": {"name": "mmoe"}},
        "trainer": {"max_epochs": 3, "accelerator": "cpu", "enable_progress_bar": False},
        "logger": {"name": "none"}}, "<csv>")
    result = train(rec, tmp_path / "run", progress=False)
    assert 0.8 < result.metrics["test"]["y"]["gauc"] <= 1.0  # x decides y: ~0.9 within each session


def test_validating_a_recipe_with_grouped_metrics_does_not_import_torchmetrics():
    import subprocess
    import sys

    code = ("import sys; from mtlframe.recipe import load_recipe; "
            "load_recipe(sys.argv[1]); print('torchmetrics' in sys.modules)")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "movielens_mmoe.yaml"
    assert "gauc" in recipe.read_text()
    out = subprocess.run([sys.executable, "-c", code, str(recipe)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_metric_classes_do_not_import_the_registered_definitions():
    """``grouped`` imports ``_grouped`` lazily; ``_grouped`` takes what they share from ``base``
    (no import circle)."""
    import subprocess
    import sys

    code = "import sys, mtlframe.metrics._grouped; print('mtlframe.metrics.grouped' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
