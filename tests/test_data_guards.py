"""Guards of the data path: overflow / inf / NaN policy, missing numerics, empty columns and tasks,
binary and multiclass labels, and what `predict` reports and writes. Tiny CSV files, fast."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mtlframe.cli import main
from mtlframe.errors import CheckpointError, DataError, RecipeError
from mtlframe.features import label_key, mask_key
from mtlframe.preprocess import LabelSpec, Preprocessor
from mtlframe.recipe import recipe_from_dict


def _csv(tmp_path, frame: pd.DataFrame, name: str = "data.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user": [f"u{i % 5}" for i in range(n)], "city": [f"c{i % 3}" for i in range(n)],
                         "x": rng.normal(10.0, 2.0, n).round(3), "click": (np.arange(n) % 2).astype(float),
                         "rating": (np.arange(n) % 5 + 1).astype(float)})


def _recipe(path, **data) -> dict:
    return {
        "seed": 1,
        "data": {"dataset": {"name": "csv", "path": str(path), "labels": ["click", "rating"],
                             "features": {"user": "categorical", "city": "categorical", "x": "numeric"}},
                 "split": {"name": "random", "val": 0.2, "test": 0.2}, "batch_size": 16, **data},
        "tasks": {"click": {"type": "binary", "label": "click"},
                  "rating": {"type": "regression", "label": "rating"}},
        "model": {"encoders": [{"name": "embedding", "features": ["user", "city"], "dim": 4},
                               {"name": "numeric", "features": ["x"]}],
                  "backbone": {"name": "shared-bottom", "hidden": [8]}, "tower": {"name": "mlp", "hidden": [4]}},
        "optimizer": {"name": "adam", "lr": 0.01},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
        "logger": {"name": "none"},
    }


def _setup(recipe: dict):
    from mtlframe.build import Builder
    from mtlframe.datamodule import RecDataModule

    rec = recipe_from_dict(recipe, "<test recipe>")
    dm = RecDataModule(rec, Builder(rec).dataset())
    dm.setup("fit")
    return dm


# -- numeric features: overflow, inf, missing ---------------------------------------------------------


def test_overflow_is_an_error_naming_file_column_and_row(tmp_path):
    frame = _frame()
    frame.loc[6, "x"] = 1e300
    path = _csv(tmp_path, frame)
    with pytest.raises(DataError, match=rf"{path}: numeric column 'x' has 1 value\(s\) beyond the float32 range.*"
                                        r"1e\+300 at row 7;.*data\.clip\.x"):
        _setup(_recipe(path, split={"name": "random", "val": 0.0, "test": 0.0}))


def test_declared_clip_bounds_the_column_and_is_counted(tmp_path, capsys):
    frame = _frame()
    frame.loc[6, "x"] = 1e300
    path = _csv(tmp_path, frame)
    dm = _setup(_recipe(path, split={"name": "random", "val": 0.0, "test": 0.0}, clip={"x": [0, 20]}))
    pre = dm.preprocessor
    clipped = frame["x"].clip(0, 20)
    assert pre.stats["x"] == pytest.approx((clipped.mean(), clipped.std(ddof=0)))
    assert dm.splits["train"]["x"][6].item() == pytest.approx((20 - clipped.mean()) / clipped.std(ddof=0), rel=1e-5)
    assert "numeric feature 'x': 1 value(s) (train 1) clipped to [0, 20] (data.clip)" in capsys.readouterr().out


def test_missing_numeric_is_an_error_naming_column_count_and_key(tmp_path):
    frame = _frame()
    frame.loc[[3, 9], "x"] = np.nan
    frame.loc[12, "x"] = np.inf
    path = _csv(tmp_path, frame)
    with pytest.raises(DataError) as err:
        _setup(_recipe(path, split={"name": "random", "val": 0.0, "test": 0.0}))
    msg = str(err.value)
    assert f"{path}: numeric column 'x' has 3 missing value(s) of 40 in the training split" in msg
    assert "2 empty/NaN, 1 inf/-inf" in msg and "rows 4, 10, 13" in msg
    assert "data.fill_missing: {x: mean}" in msg


@pytest.mark.parametrize(("policy", "fill"), [("mean", None), ("median", None), ("zero", 0.0), (7.5, 7.5)])
def test_declared_fill_replaces_missing_and_inf_and_is_printed(tmp_path, capsys, policy, fill):
    frame = _frame()
    frame.loc[3, "x"] = np.nan
    frame.loc[12, "x"] = -np.inf
    path = _csv(tmp_path, frame)
    dm = _setup(_recipe(path, split={"name": "random", "val": 0.0, "test": 0.0}, fill_missing=policy))
    known = frame["x"].drop(index=[3, 12])
    expected = {"mean": known.mean(), "median": known.median()}.get(policy, fill)
    mean, std = dm.preprocessor.stats["x"]
    assert mean == pytest.approx(known.mean()) and std == pytest.approx(known.std(ddof=0))
    assert dm.preprocessor.fill["x"] == pytest.approx(expected)
    z = dm.splits["train"]["x"]
    assert z[3].item() == pytest.approx((expected - mean) / std, rel=1e-5, abs=1e-6)
    assert z[12].item() == z[3].item() and torch.isfinite(z).all()
    assert f"numeric feature 'x': 2 missing value(s) (train 2) filled with {expected:g} " \
           f"(data.fill_missing: {policy})" in capsys.readouterr().out


def test_fill_missing_per_column_must_name_a_numeric_feature(tmp_path):
    path = _csv(tmp_path, _frame())
    with pytest.raises(RecipeError) as err:
        _setup(_recipe(path, fill_missing={"xx": "mean"}, clip={"city": [0, 1]}))
    msg = str(err.value)
    assert "data.fill_missing.xx" in msg and "did you mean 'x'" in msg
    assert "data.clip.city" in msg and "Numeric features: x" in msg
    with pytest.raises(RecipeError, match=r"data.fill_missing \(<r>\): 'x': 'mena' is not a fill policy; did you mean 'mean'\?"):
        recipe_from_dict(_recipe(path, fill_missing={"x": "mena"}), "<r>")
    with pytest.raises(RecipeError, match=r"data.clip.*low < high"):
        recipe_from_dict(_recipe(path, clip={"x": [5, 1]}), "<r>")


def test_missing_numeric_in_validation_split_names_split_and_file_row(tmp_path):
    frame = _frame()
    split = {"train": np.arange(0, 30), "test": np.arange(30, 40)}
    frame.loc[35, "x"] = np.nan
    pre = Preprocessor({"x": "numeric"}, [LabelSpec("click", "click", "binary")]).fit(frame, "f.csv", split["train"])
    with pytest.raises(DataError, match=r"f.csv: numeric column 'x' has 1 missing value\(s\) of 10 in the test split "
                                        r"\(1 empty/NaN; .*\) at row 36\."):
        pre.transform_splits(frame, split, "f.csv")


# -- empty columns, tasks without labels --------------------------------------------------------------


@pytest.mark.parametrize("col", ["city", "x"])
def test_entirely_empty_feature_column_is_an_error(tmp_path, col):
    frame = _frame()
    frame[col] = np.nan
    path = _csv(tmp_path, frame)
    with pytest.raises(DataError, match=rf"{path}: feature column '{col}' \((categorical|numeric)\) is empty: no value "
                                        r"in any of the 24 rows of the training split \(0 non-empty cells"):
        _setup(_recipe(path, fill_missing="mean"))


def test_task_without_labelled_training_row_is_an_error(tmp_path):
    frame = _frame()
    frame["rating"] = np.nan
    path = _csv(tmp_path, frame)
    with pytest.raises(DataError, match=rf"{path}: task 'rating' has no labelled row in the training split \(24 rows; "
                                        r"label column 'rating' is empty in every one\)"):
        _setup(_recipe(path))
    frame = _frame()
    frame["click"] = -1.0
    path = _csv(tmp_path, frame)
    recipe = _recipe(path)
    recipe["tasks"]["click"]["missing_label"] = -1
    with pytest.raises(DataError, match=r"task 'click' has no labelled row .* or -1 \(missing_label\)"):
        _setup(recipe)


# -- labels ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("held_out", [0.0, 0.3], ids=["train-only", "spread-over-splits"])
def test_binary_label_error_lists_every_offending_value_with_count(tmp_path, held_out):
    """Offending values spread over train, val and test are listed together in one error (not one
    split's values per run, each fix revealing the next)."""
    frame = _frame()
    frame.loc[[1, 2, 5], "click"] = 2.0
    frame.loc[[7, 8], "click"] = -1.0
    frame.loc[11, "click"] = np.inf
    path = _csv(tmp_path, frame)
    with pytest.raises(DataError) as err:
        _setup(_recipe(path, split={"name": "random", "val": held_out, "test": held_out}))
    msg = str(err.value)
    assert f"{path}: binary label column 'click' (task 'click') has 6 value(s) other than 0 and 1: " \
           "2 (3 rows), -1 (2 rows), inf (1 row) (first at row 2)" in msg
    assert "tasks.click.missing_label: -1" in msg


def test_missing_label_marker_masks_rows(tmp_path, capsys):
    frame = _frame()
    frame.loc[[7, 8], "click"] = -1.0
    path = _csv(tmp_path, frame)
    recipe = _recipe(path, split={"name": "random", "val": 0.0, "test": 0.0})
    recipe["tasks"]["click"]["missing_label"] = -1
    dm = _setup(recipe)
    mask = dm.splits["train"][mask_key("click")]
    assert mask.sum().item() == 38 and not mask[7] and not mask[8]
    assert "task 'click': 2 row(s) (train 2) with label -1 (missing_label) masked" in capsys.readouterr().out
    bad = _recipe(path)
    bad["tasks"]["click"]["missing_label"] = 1
    with pytest.raises(RecipeError, match="tasks.click.*missing_label 1 is a binary label value"):
        recipe_from_dict(bad, "<r>")


def test_regression_label_inf_or_overflow_is_an_error():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [1.0, np.inf, 1e300, 2.0]})
    with pytest.raises(DataError, match=r"f.csv: regression label column 'y' \(task 'y'\) has 2 infinite or "
                                        r"float32-overflowing value\(s\) .* at rows 2, 3"):
        Preprocessor({"x": "numeric"}, [LabelSpec("y", "y", "regression")]).fit(frame, "f.csv")


def test_multiclass_class_unseen_in_training_is_counted_and_reported():
    frame = pd.DataFrame({"x": np.arange(10.0), "k": [0, 1, 2, 0, 1, 2, 3, 3, 4, 0]})
    split = {"train": np.arange(6), "val": np.arange(6, 10)}
    pre = Preprocessor({"x": "numeric"}, [LabelSpec("k", "k", "multiclass")]).fit(frame, "f.csv", split["train"])
    with pytest.warns(UserWarning, match=r"f.csv: multiclass task 'k' \(label column 'k'\): 3 row\(s\) of the val split "
                                         r"have a class the training split does not have: '3' \(2 rows\), '4' \(1 row\)"):
        out = pre.transform_splits(frame, split, "f.csv")
    assert out["val"][label_key("k")].tolist() == [-1, -1, -1, 0]
    assert pre.reports["val"]["unseen_classes"] == {"k": {"3": 2, "4": 1}}
    assert "unseen_classes" not in pre.reports["train"]


# -- predict ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from mtlframe.run import train

    root = tmp_path_factory.mktemp("guards")
    frame = _frame(60)
    frame["kind"] = np.arange(60) % 3  # a multiclass task too
    path = _csv(root, frame)
    recipe = _recipe(path)
    recipe["data"]["dataset"]["labels"].append("kind")
    recipe["tasks"]["kind"] = {"type": "multiclass", "label": "kind"}
    torch.set_num_threads(1)
    result = train(recipe_from_dict(recipe, "<r>"), root / "run", progress=False)
    return result.best_checkpoint


def _predict(tmp_path, ckpt, frame, *extra):
    inp = _csv(tmp_path, frame, "in.csv")
    out = tmp_path / "out.csv"
    code = main(["predict", "--checkpoint", ckpt, "--input", str(inp), "--output", str(out), *extra])
    return code, out


def test_predict_keep_order_and_task_name_clash(tmp_path, checkpoint, capsys):
    frame = _frame(8, seed=3)
    code, out = _predict(tmp_path, checkpoint, frame, "--keep", "rating", "user", "city")
    assert code == 0
    written = pd.read_csv(out)
    assert list(written.columns) == ["rating", "user", "city", "click", "rating_pred", "kind", "kind_p_0", "kind_p_1",
                                     "kind_p_2"]
    assert written["rating"].tolist() == frame["rating"].tolist()
    assert written["user"].tolist() == frame["user"].tolist()
    assert written.notna().all().all()
    assert "renamed beside the kept input columns: 'rating' -> 'rating_pred'" in capsys.readouterr().out
    assert main(["predict", "--checkpoint", checkpoint, "--input", str(tmp_path / "in.csv"), "--output",
                 str(out), "--keep", "usr"]) == 2
    assert "--keep column 'usr' is not in" in capsys.readouterr().err


def test_predict_refuses_a_header_only_input_and_writing_over_its_input(tmp_path, checkpoint, capsys):
    header = tmp_path / "header.csv"
    _frame(3).iloc[:0].to_csv(header, index=False)
    assert main(["predict", "--checkpoint", checkpoint, "--input", str(header), "--output",
                 str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "header.csv has a header and no data rows: nothing to predict" in err
    assert "Traceback" not in err and not (tmp_path / "p.csv").exists()
    same = tmp_path / "same.csv"
    _frame(4, seed=3).to_csv(same, index=False)
    before = same.read_bytes()
    assert main(["predict", "--checkpoint", checkpoint, "--input", str(same), "--output",
                 str(tmp_path / "." / "same.csv")]) == 2
    assert "is the --input file: predicting would overwrite the rows it reads" in capsys.readouterr().err
    assert same.read_bytes() == before


def test_predict_reports_out_of_vocabulary_per_feature(tmp_path, checkpoint, capsys):
    frame = _frame(10, seed=3)
    frame.loc[[0, 1, 2], "user"] = "new-user"
    frame.loc[5, "city"] = np.nan
    code, out = _predict(tmp_path, checkpoint, frame)
    assert code == 0
    err = capsys.readouterr().err
    assert "out-of-vocabulary values per feature" in err
    row = next(line for line in err.splitlines() if "│ user" in line)
    assert [c.strip() for c in row.strip("│ ").split("│")] == ["user", "10", "3", "30.0%", "0"]
    row = next(line for line in err.splitlines() if "│ city" in line)
    assert [c.strip() for c in row.strip("│ ").split("│")] == ["city", "10", "0", "0.0%", "1"]
    from mtlframe.run import load_checkpoint, predict_frame

    with pytest.warns(UserWarning, match=r"feature 'user': 3 of 10 rows \(30.0%\) hold values unseen in training"):
        predict_frame(load_checkpoint(checkpoint), frame)


def test_predict_applies_the_checkpoint_numeric_policy(tmp_path, checkpoint, capsys):
    from mtlframe.run import load_checkpoint, predict_frame

    loaded = load_checkpoint(checkpoint)
    frame = _frame(6, seed=3)
    frame.loc[2, "x"] = np.nan
    with pytest.raises(DataError, match=r"numeric column 'x' has 1 missing value\(s\) of 6 .* at row 3\. .*and retrain"):
        predict_frame(loaded, frame)  # trained without a fill: refused
    # a checkpoint trained with data.fill_missing: {x: zero} (the state a fit leaves)
    state = loaded.preprocessor.state_dict()
    state["fill_missing"], state["fill"] = {"x": "zero"}, {"x": 0.0}
    loaded.preprocessor = Preprocessor.from_state_dict(state)
    report: dict = {}
    pred = predict_frame(loaded, frame, report=report)
    assert report["filled"] == {"x": 1} and pred.notna().all().all()
    filled = frame.copy()
    filled.loc[2, "x"] = 0.0  # fill_missing: zero, in raw units
    assert predict_frame(loaded, filled, report={})["rating"][2] == pytest.approx(pred["rating"][2])
    frame.loc[4, "x"] = -1e300
    code, _ = _predict(tmp_path, checkpoint, frame)
    err = capsys.readouterr().err
    assert code == 2 and "in.csv: numeric column 'x' has 1 value(s) beyond the float32 range" in err
    assert "at row 5" in err and "Traceback" not in err


def test_predict_refuses_missing_numeric_without_declared_fill():
    pre = Preprocessor({"x": "numeric"}, []).fit(pd.DataFrame({"x": [1.0, 2.0, 3.0]}))
    with pytest.raises(DataError, match=r"in.csv: numeric column 'x' has 1 missing value\(s\) of 2 in in.csv .* row 2"):
        pre.transform(pd.DataFrame({"x": [1.0, np.nan]}), "in.csv", with_labels=False)


def test_predict_never_writes_an_empty_cell_for_a_non_finite_prediction(checkpoint):
    from mtlframe.run import load_checkpoint, predict_frame

    loaded = load_checkpoint(checkpoint)
    with torch.no_grad():
        next(loaded.model.parameters()).fill_(float("nan"))
    with pytest.raises(CheckpointError, match=r"f.csv: task 'click' gives no finite prediction for 5 of 5 rows "
                                              r"\(rows 1, 2, 3, 4, 5\)"):
        predict_frame(loaded, _frame(5), source="f.csv")


def test_fill_policy_is_saved_and_old_checkpoint_state_keeps_the_mean_fill():
    pre = Preprocessor({"x": "numeric"}, [], fill_missing={"x": "zero"}).fit(pd.DataFrame({"x": [1.0, 2.0, 6.0]}))
    state = pre.state_dict()
    again = Preprocessor.from_state_dict(state)
    assert (again.fill, again.fill_missing) == ({"x": 0.0}, {"x": "zero"})
    assert again.transform(pd.DataFrame({"x": [np.nan]}), with_labels=False)["x"].tolist() == [pytest.approx(-3.0 / np.std([1, 2, 6]))]
    for key in ("fill", "fill_missing", "clip"):
        del state[key]
    old = Preprocessor.from_state_dict(state)
    assert old.fill == {"x": 3.0}
    assert old.transform(pd.DataFrame({"x": [np.nan]}), with_labels=False)["x"].tolist() == [0.0]


def test_predict_reports_multiclass_classes_unseen_in_training(tmp_path, checkpoint, capsys):
    frame = _frame(6, seed=3)
    frame["kind"] = [0, 1, 7, 7, 9, np.nan]
    code, out = _predict(tmp_path, checkpoint, frame)
    assert code == 0 and pd.read_csv(out).notna().all().all()
    assert "warning: task 'kind': the input's label column holds classes unseen in training: '7' (2 rows), " \
           "'9' (1 row)" in capsys.readouterr().err


def test_multiclass_missing_label_marker_is_neither_a_class_nor_unseen():
    frame = pd.DataFrame({"x": np.arange(8.0), "k": ["a", "b", "none", "a", "b", "none", "a", "c"]})
    split = {"train": np.arange(6), "val": np.arange(6, 8)}
    lab = LabelSpec("k", "k", "multiclass", missing="none")
    pre = Preprocessor({"x": "numeric"}, [lab]).fit(frame, "f.csv", split["train"])
    assert pre.classes["k"] == ["a", "b"]
    with pytest.warns(UserWarning, match=r"'c' \(1 row\)"):
        out = pre.transform_splits(frame, split, "f.csv")
    assert out["train"][mask_key("k")].tolist() == [True, True, False, True, True, False]
    assert pre.reports["train"]["masked_labels"] == {"k": 2}
    assert pre.unseen_classes(frame["k"], lab) == {"c": 1}


def test_missing_label_of_a_numeric_task_must_be_a_number(tmp_path):
    recipe = _recipe(tmp_path / "d.csv")
    recipe["tasks"]["rating"]["missing_label"] = "none"
    with pytest.raises(RecipeError, match=r"tasks.rating.missing_label .*'none' is not a number"):
        recipe_from_dict(recipe, "<r>")


def test_time_split_refuses_missing_timestamps(tmp_path):
    frame = _frame()
    frame["ts"] = np.arange(40.0)
    frame.loc[[5, 30], "ts"] = np.nan
    path = _csv(tmp_path, frame)
    recipe = _recipe(path, split={"name": "time", "val": 0.2, "test": 0.2})
    recipe["data"]["dataset"]["timestamp"] = "ts"
    with pytest.raises(DataError, match=rf"{path}: timestamp column 'ts' has 2 missing value\(s\) \(rows 6, 31\)"):
        _setup(recipe)
