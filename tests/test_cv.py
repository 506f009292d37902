"""Cross-validation: fold splits (partition, groups, time, predefined MovieLens folds), their recipe
checks, the preprocessor fitted on each fold's training part, and ``mtlframe cv`` (tables, paired
differences, resume) with a fake trainer plus one tiny real run."""
from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pandas as pd
import pytest

from mtlframe.cli import main
from mtlframe.cv import paired_differences, run_cv
from mtlframe.datamodule import split_indices
from mtlframe.datasets.base import Table
from mtlframe.errors import DataError, MTLFrameError, RecipeError
from mtlframe.recipe import load_recipe, recipe_from_dict


def _table(n=103, users=17, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"u": rng.integers(0, users, n), "shop": rng.integers(0, 5, n), "ts": rng.permutation(n),
                          "y": rng.random(n)})
    return Table(frame, {"u": "categorical"}, ["y"], timestamp="ts", user="u")


def _folds(t, name, k, **kw):
    return [split_indices(t, name, 0.1, 0.1, 3, folds=k, fold=i, **kw) for i in range(1, k + 1)]


# ------------------------------------------------------------------ the fold splits


@pytest.mark.parametrize("name", ["kfold", "group-kfold"])
def test_folds_partition_the_rows(name):
    t = _table()
    parts = _folds(t, name, 4)
    tests = np.concatenate([p["test"] for p in parts])
    assert np.array_equal(np.sort(tests), np.arange(103))           # every row in exactly one test fold
    for p in parts:                                                  # train / val / test partition each fold
        assert np.array_equal(np.sort(np.concatenate([p["train"], p["val"], p["test"]])), np.arange(103))
    if name == "kfold":  # 103 rows in 4 folds: 26, 26, 26, 25; val = round(0.1 * 77) = 8 of the rest
        assert [len(p["test"]) for p in parts] == [26, 26, 26, 25]
        assert [len(p["val"]) for p in parts] == [8, 8, 8, 8]
        again = split_indices(t, name, 0.1, 0.1, 3, folds=4, fold=2)
        assert np.array_equal(again["test"], parts[1]["test"])       # seeded
        assert not np.array_equal(split_indices(t, name, 0.1, 0.1, 4, folds=4, fold=2)["test"], parts[1]["test"])


def test_group_folds_never_split_a_user():
    t = _table()
    users = t.frame["u"].to_numpy()
    for p in _folds(t, "group-kfold", 4):
        where = {}
        for part in ("train", "val", "test"):
            for u in set(users[p[part]]):
                assert where.setdefault(u, part) == part             # a user's rows: one part only
    # greedy balance by rows: folds of 26 / 26 / 26 / 25 rows would need luck; sizes differ by at most
    # the largest group (here 10 rows)
    sizes = [len(p["test"]) for p in _folds(t, "group-kfold", 4)]
    assert sum(sizes) == 103 and max(sizes) - min(sizes) <= np.bincount(users).max()
    shops = t.frame["shop"].to_numpy()                               # another column as the group
    for p in _folds(t, "group-kfold", 3, group="shop"):
        assert not set(shops[p["test"]]) & set(shops[np.concatenate([p["train"], p["val"]])])


def test_time_folds_never_test_on_the_past():
    # 12 rows, 3 folds: 4 blocks of 3 rows by time; fold i trains on blocks 1..i, tests on i+1
    frame = pd.DataFrame({"ts": np.arange(12)[::-1] * 10, "y": np.zeros(12)})   # file order = reverse time
    t = Table(frame, {}, ["y"], timestamp="ts")
    ts = frame["ts"].to_numpy()
    parts = _folds(t, "time-kfold", 3)
    assert [sorted(ts[p["test"]]) for p in parts] == [[30, 40, 50], [60, 70, 80], [90, 100, 110]]
    assert [len(p["train"]) + len(p["val"]) for p in parts] == [3, 6, 9]     # expanding window
    assert sorted(ts[parts[2]["val"]]) == [80]                                # round(0.1 * 9) = 1: the latest
    for p in parts:
        seen = np.concatenate([p["train"], p["val"]])
        assert ts[seen].max() < ts[p["test"]].min()
        assert ts[p["train"]].max() < (ts[p["val"]].min() if len(p["val"]) else np.inf)
    with pytest.raises(DataError, match="needs a timestamp"):
        split_indices(Table(frame.drop(columns="ts"), {}, ["y"]), "time-kfold", 0.1, 0.1, 0, folds=3, fold=1)


def test_more_folds_than_rows_or_groups_is_refused_for_every_fold():
    # 10 rows in 20 folds would leave folds 11..20 with an empty test part (scored as nothing, counted ok)
    t = _table(n=10, users=3)
    for fold in (1, 11, 20):
        with pytest.raises(DataError, match=r"data.split.folds 20 is more than the dataset's 10 rows.*at most 10"):
            split_indices(t, "kfold", 0.1, 0.1, 0, folds=20, fold=fold)
    assert [len(p["test"]) for p in _folds(t, "kfold", 10)] == [1] * 10       # folds == rows still works
    users = len(np.unique(t.frame["u"]))
    with pytest.raises(DataError, match=rf"folds 4 is more than the dataset's {users} values of the group column 'u'"):
        split_indices(t, "group-kfold", 0.1, 0.1, 0, folds=4, fold=1)
    with pytest.raises(DataError, match=r"time-kfold cuts the rows into 11 time blocks.*only 10 rows.*at most 9"):
        split_indices(t, "time-kfold", 0.1, 0.1, 0, folds=10, fold=1)
    assert len(split_indices(t, "time-kfold", 0.1, 0.1, 0, folds=9, fold=9)["test"]) == 1


def test_a_fold_split_without_its_column_suggests_a_fold_split():
    # cross-validating data without timestamps / users: the fix offered stays a fold split
    t = Table(pd.DataFrame({"y": np.zeros(12)}), {}, ["y"])
    with pytest.raises(DataError, match=r"'time-kfold' needs a timestamp column.*use data.split.name: kfold\."):
        split_indices(t, "time-kfold", 0.1, 0.1, 0, folds=3, fold=1)
    with pytest.raises(DataError, match=r"'group-kfold' splits each user's rows.*data.split.group \(mtlframe cv: "
                                        r"--group COL\), or use data.split.name: kfold\."):
        split_indices(t, "group-kfold", 0.1, 0.1, 0, folds=3, fold=1)
    with pytest.raises(DataError, match=r"'time' needs a timestamp column.*use data.split.name: random\."):
        split_indices(t, "time", 0.1, 0.1, 0)


def test_fold_keys_are_checked_in_the_recipe(repo):
    path = repo / "recipes/synthetic_mmoe.yaml"
    load_recipe(path, ["data.split={name: kfold, folds: 5, fold: 5}"])
    cases = {"data.split={name: kfold, folds: 5, fold: 6}": "fold 6 is outside 1..5",
             "data.split={name: kfold, folds: 1}": "folds",
             "data.split={name: kfold, fold: 0}": "fold",
             "data.split={name: kfold, test: 0.2}": "a test fraction does not apply",
             "data.split={name: random, fold: 2}": "fold splits only",
             "data.split={name: kfold, group: u}": "group applies to group-kfold only",
             "data.split={name: predefined, folds: 3}": "the number of folds is the dataset's"}
    for override, message in cases.items():
        with pytest.raises(RecipeError, match=message) as err:
            load_recipe(path, [override])
        assert "data.split" in str(err.value)


def test_a_saved_resolved_recipe_with_a_fold_or_leave_last_out_split_loads_again(repo):
    """Run folders and checkpoints keep the resolved recipe (every key at its default, e.g.
    ``test: 0.1``): it must pass the checks that refuse keys that do not apply."""
    path = repo / "recipes/synthetic_mmoe.yaml"
    for split in ("{name: kfold, folds: 3, fold: 2}", "{name: predefined, fold: 4}", "{name: leave-last-out}",
                  "{name: group-kfold, group: x_000}"):
        r = load_recipe(path, [f"data.split={split}"])
        again = recipe_from_dict(r.resolved(), "<saved recipe>")
        assert again.config.data.split == r.config.data.split


# ------------------------------------------------------------------ predefined folds (MovieLens u1..u5)


def _fake_ml100k(folder, rows=50):
    folder.mkdir()
    rng = np.random.default_rng(1)
    pairs = rng.choice(8 * 12, rows, replace=False)
    lines = [f"{1 + p // 12}\t{1 + p % 12}\t{1 + p % 5}\t{880000000 + int(rng.integers(0, 10 ** 6))}" for p in pairs]
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    (folder / "u.user").write_text("".join(f"{u}|{20 + u}|M|student|1000{u}\n" for u in range(1, 9)))
    flags = "|".join(["0"] * 18 + ["1"])
    (folder / "u.item").write_text("".join(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{flags}\n"
                                           for i in range(1, 13)), encoding="latin-1")


def test_predefined_folds_from_uk_test_equal_the_mku_sh_cut(tmp_path):
    from mtlframe.datasets.movielens import MovieLens100K

    folder = tmp_path / "ml"
    _fake_ml100k(folder)
    cut = MovieLens100K(path=str(folder)).load().folds           # no uK.test: fifths of u.data in file order
    assert {k: v.tolist() for k, v in cut.items()} == {k: list(range(10 * (k - 1), 10 * k)) for k in range(1, 6)}
    # GroupLens' mku.sh, with the block size of this 50-row file (20000 for the real one)
    script = ('for i in 1 2 3 4 5; do head -n $((i * 10)) u.data | tail -n 10 | '
              'sort -t "$(printf "\\t")" -k 1,1n -k 2,2n > u$i.test; done')
    subprocess.run(["bash", "-c", script], cwd=folder, check=True)
    assert (folder / "u1.test").read_text() != "\n".join((folder / "u.data").read_text().splitlines()[:10]) + "\n"
    read = MovieLens100K(path=str(folder)).load().folds          # from the uK.test files (sorted by user, item)
    assert all(np.array_equal(read[k], cut[k]) for k in range(1, 6))
    (folder / "u2.test").write_text("1\t99\t5\t1\n")             # a line that is no row of u.data
    with pytest.raises(DataError, match="u2.test line 1 is not row"):
        MovieLens100K(path=str(folder)).load()


def test_predefined_split_on_real_movielens_is_u1(ml100k):
    from mtlframe.datasets.movielens import MovieLens100K

    t = MovieLens100K(path=str(ml100k)).load()
    s = split_indices(t, "predefined", 0.1, 0.1, 7, fold=1)
    assert np.array_equal(s["test"], np.arange(20000))            # u1.test = rows 1..20000 of u.data
    assert len(s["val"]) == 8000 and len(s["train"]) == 72000       # val: 10 % of u1.base
    assert s["val"].min() >= 20000


def test_predefined_on_a_dataset_without_folds_names_it(repo):
    from mtlframe.testing import tiny_datamodule, tiny_recipe

    with pytest.raises(DataError, match="no predefined folds"):
        split_indices(_table(), "predefined", 0.1, 0.1, 0, fold=1)
    recipe = tiny_recipe()
    recipe["data"]["split"] = {"name": "predefined", "fold": 1}
    with pytest.raises(RecipeError, match=r"data\.split\.name.*dataset 'synthetic' has no predefined folds"):
        tiny_datamodule(recipe)
    with pytest.raises(MTLFrameError, match="dataset 'synthetic' has no predefined folds"):
        run_cv(repo / "recipes/synthetic_mmoe.yaml", scheme="predefined", train_fn=_never, progress=None)


def _never(recipe, run_dir):
    raise AssertionError("nothing may train")


# ------------------------------------------------------------------ the preprocessor sees the training part only


def _csv_recipe(tmp_path, split):
    rng = np.random.default_rng(0)
    n = 60
    frame = pd.DataFrame({"user": [f"u{i % 12}" for i in range(n)], "color": rng.choice(["red", "blue"], n),
                          "x": rng.random(n), "y": rng.integers(0, 2, n).astype(float)})
    table = Table(frame.copy(), {"color": "categorical"}, ["y"], user="user")
    test = split_indices(table, split["name"], 0.1, 0.1, 2026, folds=3, fold=2, group=split.get("group"))["test"]
    frame.loc[test[:3], "color"] = "violet"                         # seen only in fold 2's test part
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    return {"seed": 2026,
            "data": {"dataset": {"name": "csv", "path": str(path), "user": "user",
                                 "features": {"color": "categorical", "x": "numeric"}, "labels": ["y"]},
                     "split": {"folds": 3, "fold": 2, **split}},
            "tasks": {"y": {"type": "binary", "label": "y"}},
            "model": {"encoders": [{"name": "embedding", "features": ["color"], "dim": 2},
                                   {"name": "numeric", "features": ["x"]}],
                      "backbone": {"name": "shared-bottom", "hidden": [4]}},
            "logger": {"name": "none"}}, test[:3]


@pytest.mark.parametrize("split", [{"name": "kfold"}, {"name": "group-kfold", "group": "user"}])
def test_a_category_seen_only_in_the_test_fold_is_oov(tmp_path, split):
    from mtlframe.build import Builder
    from mtlframe.datamodule import RecDataModule

    data, violet = _csv_recipe(tmp_path, split)
    rec = recipe_from_dict(data, "<cv recipe>")
    dm = RecDataModule(rec, Builder(rec).dataset())
    dm.setup("fit")
    assert sorted(dm.preprocessor.vocab["color"]) == ["blue", "red"]      # fitted on fold 2's training part
    assert dm.feature_info()["color"].cardinality == 3                    # 2 colours + the OOV row
    test_rows = dm.split_index["test"]
    codes = dm.splits["test"]["color"].numpy()
    assert np.all(codes[np.isin(test_rows, violet)] == 0)                 # violet: the OOV code
    assert np.all(codes[~np.isin(test_rows, violet)] > 0)


def test_group_column_absent_is_named_at_its_recipe_key(tmp_path):
    from mtlframe.build import Builder
    from mtlframe.datamodule import RecDataModule

    data, _ = _csv_recipe(tmp_path, {"name": "group-kfold", "group": "user"})
    data["data"]["split"]["group"] = "shopper"
    rec = recipe_from_dict(data, "<cv recipe>")
    with pytest.raises(RecipeError, match=r"data\.split\.group.*no column 'shopper'"):
        RecDataModule(rec, Builder(rec).dataset()).setup("fit")


# ------------------------------------------------------------------ mtlframe cv with a fake trainer

SYN = ["data.dataset.num_rows=400", "data.dataset.num_features=4", "trainer.max_epochs=1",
       "model.encoders=[{name: numeric, features: [x_000, x_001, x_002, x_003]}]"]
# task_0 rmse per (backbone, fold): mmoe beats single-task on folds 1, 2 and loses on fold 3
_RMSE = {"single-task": [1.0, 0.8, 0.9], "mmoe": [0.9, 0.7, 1.0]}


class _FakeTrain:
    def __init__(self):
        self.calls = []

    def __call__(self, recipe, run_dir):
        split = recipe.config.data.split
        assert (split.name, split.folds) == ("kfold", 3)
        name = recipe.config.model.backbone["name"]
        self.calls.append((name, split.fold))
        rmse = _RMSE[name][split.fold - 1]
        out = {"metrics": {"task_0": {"rmse": rmse}, "task_1": {"rmse": 2.0}}, "num_parameters": 10,
               "train_seconds": 0.1}
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
        (run_dir / "metrics.json").write_text(json.dumps({"test": out["metrics"], "num_parameters": 10,
                                                          "train_seconds": 0.1}))
        return out


def test_paired_differences_by_hand():
    conf = [{"seed": 1, "fold": k, "status": "ok", "metrics": {"t": {"rmse": v}}} for k, v in [(1, 0.9), (2, 0.7),
                                                                                                (3, 1.0)]]
    base = [{"seed": 1, "fold": k, "status": "ok", "metrics": {"t": {"rmse": v}}} for k, v in [(1, 1.0), (2, 0.8),
                                                                                                (3, 0.9)]]
    p = paired_differences(conf, base, "t", "rmse", higher_is_better=False)
    # d = B - M (lower is better): +0.1, +0.1, -0.1 -> mean 0.0333, std sqrt(((2 * 0.0667^2 + 0.1333^2) / 2) = 0.1155
    assert p["n"] == 3 and p["wins"] == 2
    assert p["mean"] == pytest.approx(0.1 / 3) and p["std"] == pytest.approx(math.sqrt(0.04 / 3))
    base[1]["status"] = "failed"
    assert paired_differences(conf, base, "t", "rmse", False)["n"] == 2        # unpaired fold skipped


def test_cv_tables_paired_differences_and_resume(repo, tmp_path):
    fake = _FakeTrain()
    kwargs = dict(overrides=SYN, folds=3, grid=["model.backbone={name: single-task}|{name: mmoe}"],
                  baseline=["single-task"], output=tmp_path / "cv", command="mtlframe cv synthetic --folds 3",
                  train_fn=fake, progress=None)
    res = run_cv(repo / "recipes/synthetic_mmoe.yaml", **kwargs)
    assert sorted(fake.calls) == sorted((b, k) for b in _RMSE for k in (1, 2, 3))
    assert (tmp_path / "cv/runs").is_dir() and len(list((tmp_path / "cv/runs").glob("*/fold-*"))) == 6
    data = json.loads((tmp_path / "cv/cv.json").read_text())
    assert data["scheme"] == "kfold" and data["folds"] == 3
    mmoe = next(c for c in data["configs"] if not c["is_baseline"])
    st = mmoe["summary"]["metrics"]["task_0"]["rmse"]
    assert st["mean"] == pytest.approx(2.6 / 3) and st["std"] == pytest.approx(math.sqrt(0.0466667 / 2), rel=1e-4)
    assert mmoe["paired"]["task_0"]["wins"] == 2 and mmoe["paired"]["task_0"]["mean"] == pytest.approx(0.1 / 3)
    assert sorted(mmoe["per_fold"].values(), key=lambda m: m["task_0"]["rmse"])[0]["task_0"]["rmse"] == 0.7
    md = (tmp_path / "cv/cv.md").read_text()
    assert md.startswith("```\nmtlframe cv synthetic --folds 3\n```")
    assert "0.8667 ± 0.1528" in md and "+0.0333 ± 0.1155" in md and "2/3" in md
    assert "| 0.9000 | 0.7000 | 1.0000 |" in md                             # mmoe's folds, in order
    # resume: nothing retrained; a deleted fold alone is
    fake.calls.clear()
    run_cv(repo / "recipes/synthetic_mmoe.yaml", **kwargs)
    assert fake.calls == []
    mmoe_dir = next(p for p in (tmp_path / "cv/runs").iterdir() if "mmoe" in p.name)
    (mmoe_dir / "fold-2" / "metrics.json").unlink()
    again = run_cv(repo / "recipes/synthetic_mmoe.yaml", **kwargs)
    assert fake.calls == [("mmoe", 2)]
    assert again.paired[next(c.slug for c in again.configs if not c.is_baseline)]["task_0"]["wins"] == 2
    fake.calls.clear()
    run_cv(repo / "recipes/synthetic_mmoe.yaml", **{**kwargs, "resume": False})
    assert len(fake.calls) == 6


def test_an_interrupted_cv_says_to_rerun_the_same_command(repo, tmp_path):
    fake = _FakeTrain()

    def stop_on_fold_2(recipe, run_dir):
        if recipe.config.data.split.fold == 2:
            raise KeyboardInterrupt("interrupted (Ctrl-C) during training at epoch 3/8")
        return fake(recipe, run_dir)

    kwargs = dict(overrides=SYN, folds=3, baseline=[], output=tmp_path / "cv", progress=None,
                  command="mtlframe cv synthetic_mmoe.yaml --folds 3")
    with pytest.raises(KeyboardInterrupt) as info:
        run_cv(repo / "recipes/synthetic_mmoe.yaml", train_fn=stop_on_fold_2, **kwargs)
    assert str(info.value) == ("interrupted (Ctrl-C) during training at epoch 3/8\n1 of 3 runs finished and are kept; "
                               "run `mtlframe cv synthetic_mmoe.yaml --folds 3` again to continue: finished runs are "
                               "reused, the interrupted one trains again from the start.")
    run_cv(repo / "recipes/synthetic_mmoe.yaml", train_fn=fake, **kwargs)      # as said: folds 2 and 3 only
    assert fake.calls == [("mmoe", 1), ("mmoe", 2), ("mmoe", 3)]


def test_a_failed_fold_shows_the_problem_not_only_the_header(repo, tmp_path):
    # before: "FAILED RecipeError: recipe r.yaml has 1 problem:" and nothing more on the line
    def invalid(recipe, run_dir):
        raise RecipeError([("data.split.group", "dataset 'csv' has no column 'nope' to group the folds by.")], "r.yaml")

    lines = []
    res = run_cv(repo / "recipes/synthetic_mmoe.yaml", SYN, folds=2, output=tmp_path, train_fn=invalid,
                 progress=lines.append)
    assert res.configs[0].runs[0]["error"] == ("RecipeError: recipe r.yaml has 1 problem: - data.split.group (r.yaml): "
                                               "dataset 'csv' has no column 'nope' to group the folds by.")
    assert lines[0].startswith("[1/2] recipe seed=2026 fold=1: FAILED RecipeError: recipe r.yaml has 1 problem: - "
                               "data.split.group (r.yaml): dataset 'csv' has no column 'nope'")


def test_repeated_kfold_pairs_by_seed_and_fold(repo, tmp_path):
    fake = _FakeTrain()
    res = run_cv(repo / "recipes/synthetic_mmoe.yaml", SYN, folds=3, seeds="5,6", baseline=["single-task"],
                 grid=["model.backbone={name: single-task}|{name: mmoe}"], output=tmp_path, train_fn=fake,
                 progress=None)
    assert len(fake.calls) == 12
    assert sorted(p.name for p in tmp_path.glob("runs/*mmoe*/*")) == [f"seed-{s}-fold-{k}" for s in (5, 6)
                                                                       for k in (1, 2, 3)]
    paired = next(v for v in res.paired.values())["task_0"]
    assert paired["n"] == 6 and paired["wins"] == 4 and sorted(paired["diffs"]) == [
        f"{s}/{k}" for s in (5, 6) for k in (1, 2, 3)]
    assert "seed 5 fold 1" in (tmp_path / "cv.md").read_text()


def test_cv_scheme_checks(repo):
    path = repo / "recipes/synthetic_mmoe.yaml"
    with pytest.raises(MTLFrameError, match=r"^--folds must be >= 2 \(got 1\): each fold is tested by a model trained "
                                            r"on the other folds, so there must be at least two\.$"):
        run_cv(path, folds=1, train_fn=_never, progress=None)
    with pytest.raises(MTLFrameError, match="--group applies to --scheme group-kfold"):
        run_cv(path, scheme="kfold", group="u", train_fn=_never, progress=None)


def test_an_unknown_display_metric_is_refused_before_training(repo, tmp_path):
    # before: `--metrics nope` trained every fold and printed tables without a metric column
    from mtlframe.compare import run_compare

    path = repo / "recipes/synthetic_mmoe.yaml"
    with pytest.raises(MTLFrameError, match=r"--metrics: 'nope' is not a metric of any task of .*synthetic_mmoe\.yaml; "
                                            r"its metrics: rmse, mae \(nothing was trained\)"):
        run_cv(path, folds=2, metrics=["rmse", "nope"], output=tmp_path / "cv", train_fn=_never, progress=None)
    with pytest.raises(MTLFrameError, match=r"'auc', 'nope' are not a metric"):
        run_compare(path, [], 1, metrics=["auc", "nope"], output=tmp_path / "cmp", train_fn=_never, progress=None)
    assert not (tmp_path / "cv").exists() and not (tmp_path / "cmp").exists()


def test_an_output_that_is_a_file_is_refused_before_anything_runs(repo, tmp_path):
    # before: FileExistsError from pathlib (cv / compare: after training; explain: after loading the data)
    from mtlframe.compare import run_compare
    from mtlframe.explain import explain

    path = repo / "recipes/synthetic_mmoe.yaml"
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    with pytest.raises(MTLFrameError, match=r"^--output .*notes\.txt is a file; pass a folder \(it is created if "
                                            r"missing\)\.$"):
        run_cv(path, folds=2, output=afile, train_fn=_never, progress=None)
    with pytest.raises(MTLFrameError, match=r"^--runs-dir .*notes\.txt/runs is inside .*notes\.txt, which is a file"):
        run_compare(path, [], 1, output=tmp_path / "cmp", runs_dir=afile / "runs", train_fn=_never, progress=None)
    with pytest.raises(MTLFrameError, match=r"^--output .*notes\.txt/x is inside .*notes\.txt, which is a file"):
        explain(tmp_path / "missing.ckpt", output=afile / "x")


def test_cv_command_end_to_end_tiny(repo, tmp_path, capsys):
    out = tmp_path / "cv"
    code = main(["cv", str(repo / "recipes/synthetic_mmoe.yaml"), *SYN, "data.dataset.num_rows=300",
                 "--folds", "2", "--output", str(out), "--metrics", "rmse"])
    assert code == 0
    shown = capsys.readouterr().out
    assert "kfold, 2 folds" in shown and "per fold" in shown
    md = (out / "cv.md").read_text()
    assert "mtlframe cv" in md and "--folds 2" in md
    runs = sorted(p.name for p in out.glob("runs/*/fold-*"))
    assert runs == ["fold-1", "fold-2"]
    saved = load_recipe(next(out.glob("runs/*/fold-2")) / "recipe.yaml")
    assert (saved.config.data.split.name, saved.config.data.split.fold, saved.config.data.split.folds) == \
        ("kfold", 2, 2)
    from mtlframe.run import load_checkpoint   # its checkpoint (the resolved recipe) loads again

    loaded = load_checkpoint(next(out.glob("runs/*/fold-2/checkpoints/*.ckpt")))
    assert loaded.recipe.config.data.split.fold == 2



def test_an_empty_validation_split_says_why_when_val_is_not_0(tmp_path):
    # group-kfold: each fold trains on 8 of the 12 users and round(0.05 * 8) = 0 of them validate
    from mtlframe.run import train

    data, _ = _csv_recipe(tmp_path, {"name": "group-kfold", "group": "user", "val": 0.05})
    data["trainer"] = {"max_epochs": 1, "accelerator": "cpu"}
    with pytest.warns(UserWarning, match=r"^the validation split is empty: data.split.val 0.05 of the training groups "
                                         r"\(group-kfold validates on whole groups\) rounds to none \(raise "
                                         r"data.split.val\): there is no validation split"):
        train(recipe_from_dict(data, "<cv recipe>"), tmp_path / "run", progress=False)
