"""``mtlframe tune``: a toy objective with a known optimum, resume, Ctrl-C, failed and pruned
trials, the search space checked before any trial, and one real tiny trial through the CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from mtlframe.cli import main
from mtlframe.errors import RecipeError
from mtlframe.recipe import load_recipe
from mtlframe.run import NoFiniteScoreError
from mtlframe.testing import tiny_recipe

optuna = pytest.importorskip("optuna")

TOY_SPACE = {"optimizer.lr": {"type": "float", "low": 1.0e-4, "high": 1.0, "log": True},
             "model.backbone.num_experts": {"type": "int", "low": 1, "high": 8}}


def _recipe(tmp_path: Path, space: dict | None = None, **tune) -> Path:
    data = tiny_recipe()
    data["tune"] = {"metric": "val/score", "space": space or TOY_SPACE, **tune}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _toy(recipe) -> float:
    """Known optimum: lr = 1e-2, num_experts = 4, where the score is 0 (its maximum)."""
    lr, n = recipe.config.optimizer.lr, recipe.config.model.backbone["num_experts"]
    return -(math.log10(lr) + 2) ** 2 - (n - 4) ** 2


def _toy_train(recipe, run_dir, callbacks):
    return {"monitor": {"name": "val/score", "best": _toy(recipe)}}


def test_tune_finds_the_toy_optimum_and_writes_a_trainable_best_recipe(tmp_path):
    from mtlframe.tune import run_tune

    # 3 random trials, then TPE: 12 trials in all (the sampler is seeded by the recipe's seed)
    res = run_tune(_recipe(tmp_path, startup_trials=3), 12, output=tmp_path / "out", train_fn=_toy_train,
                   progress=None)
    assert res.direction == "maximize" and res.metric == "val/score"
    assert len(res.trials) == 12 and all(t.state == "complete" for t in res.trials)
    best = res.best.params
    assert best["model.backbone.num_experts"] == 4
    assert abs(math.log10(best["optimizer.lr"]) + 2) < 0.25         # within a quarter decade of 1e-2
    assert res.best.value == pytest.approx(-(math.log10(best["optimizer.lr"]) + 2) ** 2)
    # best.yaml: the base recipe with the best values, no tune: section, valid as it is
    run = load_recipe(tmp_path / "out" / "best.yaml")
    assert "tune" not in run.data
    assert run.config.optimizer.lr == best["optimizer.lr"] and run.config.model.backbone["num_experts"] == 4
    text = (tmp_path / "out" / "best.yaml").read_text()
    assert f"trial {res.best.number}, val/score" in text
    saved = json.loads((tmp_path / "out" / "trials.json").read_text())
    assert len(saved["trials"]) == 12 and saved["best"]["number"] == res.best.number
    assert "| trial | state | val/score | lr | num_experts |" in (tmp_path / "out" / "trials.md").read_text()


def test_resume_continues_the_study_and_ctrl_c_leaves_it_resumable(tmp_path):
    from mtlframe.tune import run_tune

    recipe, out = _recipe(tmp_path), tmp_path / "out"
    first = run_tune(recipe, 3, output=out, train_fn=_toy_train, progress=None)
    seen = [t.params for t in first.trials]
    calls = []

    def interrupted(recipe, run_dir, callbacks):
        calls.append(run_dir.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return _toy_train(recipe, run_dir, callbacks)

    with pytest.raises(KeyboardInterrupt, match="keeps its 4 finished trial.*run the same command to continue"):
        run_tune(recipe, 6, output=out, train_fn=interrupted, progress=None)
    assert calls == ["trial-0003", "trial-0004"]
    lines = []
    res = run_tune(recipe, 6, output=out, train_fn=_toy_train, progress=lines.append)
    states = [t.state for t in res.trials]
    # 3 + 1 finished before Ctrl-C; the interrupted trial does not count: 2 more make 6
    assert states == ["complete"] * 4 + ["interrupted"] + ["complete"] * 2
    assert [t.params for t in res.trials[:3]] == seen
    assert lines[0].startswith(f"resuming the study in {out / 'study.db'}: 4 trial(s) finished, 2 to go")
    # a resumed study does not replay the sampler's first random draws
    assert res.trials[5].params != res.trials[0].params
    again = run_tune(recipe, 6, output=out, train_fn=_toy_train, progress=None)
    assert len(again.trials) == 7
    # another space in the same study file is refused
    with pytest.raises(RecipeError, match="searched another space"):
        run_tune(_recipe(tmp_path, {"optimizer.lr": TOY_SPACE["optimizer.lr"]}), 8, output=out,
                 train_fn=_toy_train, progress=None)


def test_invalid_space_is_listed_at_once_before_any_trial(tmp_path, capsys):
    from mtlframe.tune import run_tune

    space = {"model.backbone.num_expert": {"type": "int", "low": 2, "high": 8},          # misspelled key
             "model.backbone.num_experts": {"type": "int", "low": 0, "high": 4},          # 0 experts
             "model.backbone.name": {"type": "categorical", "choices": ["mmoe", "mmeo"]},  # unknown backbone
             "optimizer.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True},     # log from 0
             "trainer.max_epochs": {"type": "float", "low": 1.0, "high": 2.5},            # 2.5 epochs
             "data.batch_size": {"type": "int", "low": 64, "high": 32}}                   # empty range
    calls = []
    with pytest.raises(RecipeError) as err:
        run_tune(_recipe(tmp_path, space, metric="val/task_0/rsme"), 2, output=tmp_path / "out",
                 train_fn=lambda *a: calls.append(a), progress=None)
    paths = [p for p, _ in err.value.problems]
    msg = str(err.value)
    assert calls == [] and not (tmp_path / "out" / "study.db").exists()
    assert "tune.space.model.backbone.num_expert" in paths and "num_experts" in msg   # closest key offered
    assert "with model.backbone.num_experts=0" in msg
    assert "with model.backbone.name=\"mmeo\"" in msg and "with model.backbone.name=\"mmoe\"" not in msg
    assert any(p.startswith("tune.space.optimizer.lr") for p in paths) and "log: true needs low > 0" in msg
    assert "with trainer.max_epochs=2.5" in msg and "with trainer.max_epochs=1.0" not in msg
    assert any(p.startswith("tune.space.data.batch_size") for p in paths) and "above high" in msg
    assert "tune.metric" in paths and "val/task_0/rmse" in msg
    assert len(err.value.problems) == 7
    # recipe validate reports the same, with the file and line of each key
    assert main(["recipe", "validate", str(tmp_path / "r.yaml")]) == 2
    # a folder as the recipe or as --space: one line naming it, exit 2
    assert main(["tune", str(tmp_path), "--trials", "1"]) == 2
    assert main(["tune", str(tmp_path / "r.yaml"), "--space", str(tmp_path), "--trials", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "is a folder, not a file" in line][-2:] == [
        f"error: recipe {tmp_path}: is a folder, not a file; pass the path of a YAML recipe, e.g. recipes/quickstart.yaml",
        f"error: recipe {tmp_path}: --space is a folder, not a file; pass a YAML file with the tune mapping "
        "(metric, direction, space)"]


def test_space_file_replaces_the_recipe_section_and_points_at_its_lines(tmp_path, capsys):
    from mtlframe.tune import run_tune

    side = tmp_path / "space.yaml"
    side.write_text("metric: val/score\nspace:\n  optimizer.lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\n"
                    "  model.backbone.num_experts: {type: int, low: 4, high: 4}\n")
    res = run_tune(_recipe(tmp_path), 2, space=side, output=tmp_path / "out", train_fn=_toy_train, progress=None)
    assert list(res.space) == ["optimizer.lr", "model.backbone.num_experts"]
    assert all(1e-3 <= t.params["optimizer.lr"] <= 1e-1 for t in res.trials)
    # the file replaces the recipe's section, even an invalid one
    bad = tmp_path / "bad.yaml"
    bad.write_text((tmp_path / "r.yaml").read_text().replace("type: int", "type: integer"))
    assert len(run_tune(bad, 1, space=side, output=tmp_path / "o1", train_fn=_toy_train, progress=None).trials) == 1
    side.write_text("tune:\n  space:\n    model.backbone.num_experts: {type: int, low: 0, high: 4}\n")
    with pytest.raises(RecipeError) as err:
        run_tune(_recipe(tmp_path), 2, space=side, output=tmp_path / "o2", train_fn=_toy_train, progress=None)
    assert f"({side}:3)" in str(err.value)
    # val/score exists only where the checkpoint monitors it
    data = yaml.safe_load((tmp_path / "r.yaml").read_text())
    data["checkpoint"] = {"monitor": "task_0"}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match="checkpoint.monitor is 'task_0'"):
        run_tune(tmp_path / "m.yaml", 1, output=tmp_path / "o3", train_fn=_toy_train, progress=None)


def test_failed_trials_are_recorded_and_the_study_goes_on(tmp_path):
    from mtlframe.tune import run_tune

    def train(recipe, run_dir, callbacks):
        if recipe.config.optimizer.lr > 0.1:
            raise NoFiniteScoreError("every validation gave NaN for val/score (diverged)")
        return _toy_train(recipe, run_dir, callbacks)

    res = run_tune(_recipe(tmp_path, startup_trials=3), 8, output=tmp_path / "out", train_fn=train, progress=None)
    failed = [t for t in res.trials if t.state == "failed"]
    assert failed and all(t.params["optimizer.lr"] > 0.1 for t in failed)
    assert all("NoFiniteScoreError: every validation gave NaN" in t.reason for t in failed)
    assert (Path(failed[0].run_dir) / "error.txt").read_text().count("NoFiniteScoreError")
    assert len(res.trials) == 8 and res.best.params["optimizer.lr"] <= 0.1


def test_pruning_stops_trials_worse_than_the_median(tmp_path):
    from mtlframe.tune import run_tune

    def train(recipe, run_dir, callbacks):
        """Five epochs whose value climbs to the toy score; each reported through the callback."""
        final = _toy(recipe)
        for epoch in range(5):
            callbacks[0].report(final - (4 - epoch), epoch)
        return {"monitor": {"name": "val/score", "best": final}}

    res = run_tune(_recipe(tmp_path, startup_trials=3, warmup_epochs=1), 10, output=tmp_path / "out",
                   train_fn=train, progress=None)
    pruned = [t for t in res.trials if t.state == "pruned"]
    assert pruned and all(t.number >= 3 for t in pruned)
    assert all(t.reason.startswith("pruned after epoch") and "worse than the median" in t.reason for t in pruned)
    complete = [t.value for t in res.trials if t.state == "complete"]
    assert res.best.value == max(complete)


def test_pruning_callback_reports_each_validation_epoch_to_the_trial():
    from mtlframe.tune import PruningCallback

    class Trial:
        def __init__(self):
            self.reports = []

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            return len(self.reports) == 3

    trial = Trial()
    cb = PruningCallback(trial, "val/rating/rmse")
    for epoch, value in enumerate([1.2, float("nan"), 1.1]):
        cb.on_validation_end(SimpleNamespace(callback_metrics={"val/rating/rmse": value}, current_epoch=epoch,
                                             sanity_checking=False), None)
    cb.on_validation_end(SimpleNamespace(callback_metrics={}, current_epoch=3, sanity_checking=False), None)
    # train()'s validation of the best checkpoint after fit is not an epoch of the trial
    cb.on_validation_end(SimpleNamespace(callback_metrics={"val/rating/rmse": 9.0}, current_epoch=3,
                                         sanity_checking=False, state=SimpleNamespace(fn="validate")), None)
    assert trial.reports == [(0, 1.2), (2, 1.1)]            # NaN and missing values are not reported
    with pytest.raises(optuna.TrialPruned, match="pruned after epoch 4"):
        cb.on_validation_end(SimpleNamespace(callback_metrics={"val/rating/rmse": 1.3}, current_epoch=4,
                                             sanity_checking=False), None)
    assert cb.pruned_at == 4


def test_one_real_tiny_trial_through_the_cli(tmp_path, capsys):
    path = _recipe(tmp_path, {"optimizer.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}},
                   metric="auto")
    out = tmp_path / "out"
    assert main(["tune", str(path), "--trials", "1", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "best recipe (trial 0, val/score" in printed and "tune:" not in printed.split("best recipe")[1]
    run_dir = out / "trials" / "trial-0000"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best = load_recipe(out / "best.yaml")
    saved = json.loads((out / "trials.json").read_text())
    assert saved["best"]["value"] == pytest.approx(metrics["monitor"]["best"])
    assert 1e-3 <= best.config.optimizer.lr <= 1e-2
