"""Full-ranking evaluation inside training: a retrieval task's val/test metrics, end to end."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtlframe.errors import RecipeError
from mtlframe.ranking import full_ranking
from mtlframe.recipe import load_recipe
from mtlframe.run import build_system, evaluate, train

REPO = Path(__file__).resolve().parents[1]


def _data(tmp_path, users=40, items=30, per_user=10):
    rng = np.random.default_rng(0)
    rows = []
    for u in range(users):  # each user watches items of "their" block more often: learnable
        pool = (np.arange(items) + 3 * (u % 5)) % items
        rows += [(f"u{u}", f"i{i}") for i in rng.choice(pool[:15], per_user, replace=False)]
    frame = pd.DataFrame(rows, columns=["user", "item"])
    frame["watch"] = 1.0
    frame["like"] = (rng.random(len(frame)) < 0.5).astype(float)
    frame.to_csv(tmp_path / "d.csv", index=False)
    return frame


def _recipe(tmp_path, tasks="watch: {type: retrieval, label: watch, dim: 8}\n  like: {type: binary, label: like}",
            extra=""):
    text = f"""
data:
  dataset: {{name: csv, path: {tmp_path / 'd.csv'}, features: {{user: categorical, item: categorical}},
            labels: [watch, like], user: user, item: item}}
  split: {{name: user-random, val: 0.1, test: 0.1}}
  batch_size: 64
  sampler: {{name: uniform-negatives, task: watch, item_features: [item], user_feature: user, ratio: 2}}
ranking: {{user_features: [user], item_features: [item], k: [5, 10]}}
tasks:
  {tasks}
model:
  encoders: [{{name: embedding, features: [user, item], dim: 8}}]
  backbone: {{name: shared-bottom, hidden: [8]}}
  tower: {{name: mlp, hidden: [8]}}
{extra}trainer: {{max_epochs: 2}}
logger: {{name: none}}
"""
    (tmp_path / "r.yaml").write_text(text)
    return load_recipe(tmp_path / "r.yaml")


def test_retrieval_task_logs_full_ranking_metrics(tmp_path):
    _data(tmp_path)
    recipe = _recipe(tmp_path)
    assert recipe.task_metrics("watch")[:3] == ["ndcg@5", "recall@5", "hit@5"] and len(recipe.task_metrics("watch")) == 14
    result = train(recipe, tmp_path / "run", progress=False)
    for stage in ("val", "test"):
        got = result.metrics[stage]["watch"]
        assert set(got) == {f"{m}@{k}" for k in (5, 10) for m in
                            ("ndcg", "recall", "hit", "mrr", "precision", "coverage", "popularity")}
        assert all(math.isfinite(v) for v in got.values())
        assert 0 < got["coverage@10"] <= 1 and got["recall@10"] >= got["recall@5"]


def test_module_numbers_equal_the_evaluator_on_the_same_split(tmp_path):
    _data(tmp_path)
    dm, module, _ = build_system(_recipe(tmp_path))
    module.eval()
    data = dm.ranking_split("test", "watch")
    # every test user with a positive, and their training + validation items excluded
    train_pairs = set(zip(dm.ids["train"]["user"].tolist(), dm.ids["train"]["item"].tolist()))
    val_pairs = set(zip(dm.ids["val"]["user"].tolist(), dm.ids["val"]["item"].tolist()))
    items = dm.catalogue.items.tolist()
    for j, u in enumerate(data.users.tolist()):
        seen = {items[p] for p in data.exclude.indices[data.exclude.indptr[j]:data.exclude.indptr[j + 1]].tolist()}
        assert seen == {i for (uu, i) in train_pairs | val_pairs if uu == u and i in items}
    got = module._full_ranking("test")["watch"]
    head, model = module.model.retrieval["watch"], module.model
    with torch.no_grad():
        v = head.item_vectors(model.encode(dm.catalogue.columns))
        u = head.user_vectors(model.encode(data.inputs))
        scores = head.scores(u, v)
    want = full_ranking(lambda idx: scores[idx], torch.arange(len(data.users)), data.positives, data.exclude,
                        len(items), [5, 10], popularity=data.popularity, unreachable=data.unreachable)
    assert got == pytest.approx({k: want[k] for k in got})


def test_retrieval_metric_names_are_checked(tmp_path):
    _data(tmp_path)
    with pytest.raises(RecipeError) as err:
        _recipe(tmp_path, tasks="watch: {type: retrieval, label: watch, metrics: [ndgc@10, auc, recall@10]}\n  like: {type: binary, label: like}")
    msg = str(err.value)
    assert "tasks.watch.metrics[0]" in msg and "'ndgc@10' is not a full-ranking metric; did you mean 'ndcg@10'?" in msg
    assert "tasks.watch.metrics[1]" in msg and "'auc' is not a full-ranking metric." in msg
    assert "tasks.watch.metrics[2]" not in msg


@pytest.mark.skipif(sys.platform != "linux", reason="DDP on CPU tested on Linux")
def test_ddp_full_ranking_equals_single_process(tmp_path):
    """Two CPU processes each rank half of the users; the one all-reduce gives one process's numbers."""
    _data(tmp_path, users=41)  # an odd number of users: the shards differ in size
    _recipe(tmp_path)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "mtlframe.cli", "train", str(tmp_path / "r.yaml"), "--run-dir", str(run),
         "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu", "trainer.max_epochs=1"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((run / "metrics.json").read_text())["test"]["watch"]
    single = evaluate(run / "checkpoints" / "best.ckpt", "test")["watch"]
    assert len(ddp) == 14 and ddp == pytest.approx(single, abs=1e-9)


def test_printed_tables_put_full_ranking_metrics_in_rows_and_cutoffs_in_columns():
    from rich.console import Console

    from mtlframe.cli import _metrics_table

    con = Console(width=80, record=True)   # a pipe's width: every cell must stay whole
    con.print(_metrics_table({"watch": {"ndcg@10": 0.25, "recall@10": 0.5, "ndcg@20": 0.375, "recall@20": 0.75,
                                        "popularity@10": 226.4449},
                              "like": {"auc": 0.8125}}, "test metrics"))
    text = con.export_text()
    lines = [ln.split("│") for ln in text.splitlines() if ln.startswith("│")]
    cells = [[c.strip() for c in ln[1:-1]] for ln in lines]
    assert ["like", "0.8125"] in cells
    assert ["ndcg", "0.2500", "0.3750"] in cells and ["recall", "0.5000", "0.7500"] in cells
    assert ["popularity", "226.4449", "-"] in cells
    assert "watch@10" in text and "watch@20" in text


def test_monitors_and_compare_know_the_direction_of_ranking_metrics(tmp_path):
    from types import SimpleNamespace

    from mtlframe.compare import _primary
    from mtlframe.run import _monitor

    _data(tmp_path)
    recipe = _recipe(tmp_path, extra="checkpoint: {monitor: val/watch/popularity@10}\n")
    module = SimpleNamespace(metric_defs={"watch": {}, "like": {}})
    assert _monitor(recipe, module, "val/watch/popularity@10", "auto") == ("val/watch/popularity@10", "min")
    assert _monitor(recipe, module, "watch", "auto") == ("val/watch/ndcg@5", "max")
    assert _primary(recipe)[1]["watch"] == ("ndcg@5", True)
    with pytest.raises(RecipeError, match="val/watch/ndcg@50"):  # not a logged key: the closest ones are named
        _recipe(tmp_path, extra="checkpoint: {monitor: val/watch/ndcg@50}\n")


def test_a_users_history_never_holds_the_positives_being_ranked(ml100k):
    """Full ranking reads each user's earliest row of the split: with a behaviour history on the
    user side, any later row's history would hold earlier positives of the same split (a leak)."""
    from mtlframe.recipe import recipe_from_dict
    from mtlframe.run import build_system

    recipe = recipe_from_dict({
        "seed": 5,
        "data": {"dataset": {"name": "movielens-100k", "path": str(ml100k)},
                 "split": {"name": "user-random", "val": 0.1, "test": 0.1},
                 "sampler": {"name": "in-batch", "item_feature": "item_id"},
                 "sequences": {"hist_items": {"of": "item_id", "share_with": "item_id", "max_len": 50}}},
        "ranking": {"user_features": ["user_id", "hist_items"], "item_features": ["item_id"]},
        "tasks": {"watch": {"type": "retrieval", "label": "watch", "dim": 8}},
        "model": {"encoders": [{"name": "embedding", "features": ["user_id", "item_id"], "dim": 8},
                               {"name": "sequence-pool", "features": ["hist_items"], "dim": 8}]},
        "trainer": {"max_epochs": 1, "accelerator": "cpu"}, "logger": {"name": "none"}}, "r.yaml")
    dm, _, _ = build_system(recipe)
    cat = dm.catalogue
    for split in ("val", "test"):
        data = dm.ranking_split(split, "watch")
        history = data.inputs["hist_items"].long() - 1                 # item codes; -1 = padding
        leaked = 0
        for u in range(len(data.users)):
            pos = cat.items[data.positives.indices[data.positives.indptr[u]:data.positives.indptr[u + 1]]]
            leaked += int(torch.isin(history[u], pos).sum())
        assert leaked == 0, f"{split}: {leaked} positives of the split in the users' histories"
        assert int((history >= 0).sum()) > 0                           # the histories are not empty


def test_a_split_whose_users_are_all_unknown_to_training_says_so(tmp_path):
    # group-kfold by user: no val user is a training user, so full ranking ranks nobody (before: only
    # "ndcg@5, ... are undefined (NaN)", then a NoFiniteScoreError blaming divergence)
    _data(tmp_path)
    _recipe(tmp_path)                                                   # writes r.yaml
    recipe = load_recipe(tmp_path / "r.yaml", ["data.split={name: group-kfold, folds: 4, fold: 1, val: 0.2}"])
    dm, module, _ = build_system(recipe)
    module.eval()
    with pytest.warns(UserWarning, match=r"^task 'watch': none of the \d+ rows of the val split has a user seen in "
                                         r"training \(unknown users are not ranked\), so its full-ranking metrics "
                                         r"are NaN\. A split that keeps each user's rows in one part \(group-kfold by "
                                         r"the user column\) does this: use kfold or user-random\.$"):
        got = module._full_ranking("val")
    assert math.isnan(got["watch"]["ndcg@5"])
