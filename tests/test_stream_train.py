"""``data.stream``: a recipe trains from Parquet directories without loading them
(:mod:`mtlframe.streamdata`), with the preprocessor of ``mtlframe prepare``."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from mtlframe.errors import DataError, RecipeError  # noqa: E402
from mtlframe.recipe import load_recipe, recipe_from_dict  # noqa: E402
from mtlframe.testing import run_process_group  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _frame(rng: np.random.Generator, n: int, first: int) -> pd.DataFrame:
    uid = rng.integers(0, 30, n)
    x = rng.normal(size=n)
    return pd.DataFrame({"rid": np.arange(first, first + n), "uid": uid,
                         "city": np.array(["a", "b", "c", "d"])[rng.integers(0, 4, n)], "x": x,
                         "click": ((uid % 2) ^ (x > 0)).astype(np.float64), "rating": 2 * x + rng.normal(size=n)})


def write_data(root: Path, sizes=None) -> Path:
    """train (3 files, 100 rows), val (2 files, 40 rows), test (1 file, 30 rows); row groups of 10."""
    rng = np.random.default_rng(0)
    for split, parts in (sizes or {"train": [37, 25, 38], "val": [23, 17], "test": [30]}).items():
        (root / split).mkdir(parents=True, exist_ok=True)
        first = 0
        for i, n in enumerate(parts):
            pq.write_table(pa.Table.from_pandas(_frame(rng, n, first), preserve_index=False),
                           root / split / f"part-{i}.parquet", row_group_size=10)
            first += n
    return root


def recipe_dict(root: Path, **stream) -> dict:
    return {"seed": 7,
            "data": {"dataset": {"name": "parquet", "path": str(root / "train"),
                                 "features": {"uid": "categorical", "city": "categorical", "x": "numeric",
                                              "rid": "categorical"},
                                 "labels": ["click", "rating"]},
                     "stream": {"val": str(root / "val"), "test": str(root / "test"), "buffer_rows": 16,
                                "workers": 2, **stream},
                     "batch_size": 8},
            "tasks": {"click": {"type": "binary", "label": "click"},
                      "rating": {"type": "regression", "label": "rating"}},
            "model": {"encoders": [{"name": "embedding", "features": ["uid", "city"], "dim": 4},
                                   {"name": "numeric", "features": ["x"]}],
                      "backbone": {"name": "shared-bottom", "hidden": [8]}, "tower": {"name": "mlp", "hidden": [4]}},
            "optimizer": {"name": "adam", "lr": 0.01},
            "trainer": {"max_epochs": 2, "accelerator": "cpu"}}


def _write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _scores(module, loader) -> dict:
    from mtlframe.run import _make_eval_trainer

    _make_eval_trainer(torch.device("cpu")).validate(module, dataloaders=loader, verbose=False)
    return module.last_scores["val"]


def test_train_streams_and_evaluates_as_the_in_memory_path(tmp_path, capsys):
    """`mtlframe train` on Parquet directories (2 workers): prepares the state when there is none,
    trains, and its validation metrics equal the in-memory evaluation of the same rows with the
    same preprocessor and weights; the streamed batches equal the in-memory columns."""
    from mtlframe.batching import ColumnBatches
    from mtlframe.cli import main
    from mtlframe.datamodule import materialize
    from mtlframe.run import load_checkpoint, rebuild_system

    root = write_data(tmp_path / "data")
    recipe = _write_recipe(tmp_path / "r.yaml", recipe_dict(root))
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    state = root / "train" / "_mtlframe_prepared.pt"
    assert f"no prepared state at {state}" in out and f"saved {state}" in out
    assert "epoch 2/2  14 steps" in out     # 100 rows, 2 readers of 50 rows, batches of 8: 7 + 7
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"

    dm, module = rebuild_system(best, load_checkpoint(best))
    streamed = _scores(module, dm.val_dataloader())
    frame = pd.read_parquet(root / "val")                  # the same 40 rows, in memory
    cols = materialize(dm.encoders, dm.tasks, dm.preprocessor.transform(frame))
    in_memory = _scores(module, ColumnBatches(cols, 4096))
    for task, names in (("click", ("auc", "logloss")), ("rating", ("rmse", "mae"))):
        for name in names:
            assert streamed[task][name] == pytest.approx(in_memory[task][name], abs=1e-6)
            assert metrics["val"][task][name] == pytest.approx(in_memory[task][name], abs=1e-6)

    # unshuffled, in one process: the stream's batches are the in-memory columns, row for row
    stream = dm.stream("test", num_workers=0)
    got = list(stream)
    assert [len(b["label/click"]) for b in got] == [30]          # eval batch max(8, 4096): one batch
    want = materialize(dm.encoders, dm.tasks, dm.preprocessor.transform(pd.read_parquet(root / "test")))
    assert sorted(got[0]) == sorted(want)
    for key, value in want.items():
        assert torch.equal(got[0][key], value), key
    # output biases start from the prepared label means: click's positive rate as log-odds
    from mtlframe.run import build_system

    train = pd.read_parquet(root / "train")
    p = train["click"].mean()
    priors = build_system(load_recipe(recipe))[0].label_priors()
    assert priors["click"] == pytest.approx(np.log(p / (1 - p)), abs=1e-9)
    assert priors["rating"] == pytest.approx(train["rating"].astype(np.float32).mean(), abs=1e-6)

    # evaluating the checkpoint applies its own preprocessing: a state refitted since for another
    # run (other min_count), or none at all, changes nothing, and no prepare pass runs
    from mtlframe.prepare import prepare

    prepare(load_recipe(recipe, ["data.min_count=3"]))
    dm, module = rebuild_system(best, load_checkpoint(best))
    assert _scores(module, dm.val_dataloader()) == streamed
    state.unlink()
    dm, module = rebuild_system(best, load_checkpoint(best))
    assert _scores(module, dm.val_dataloader()) == streamed and not state.exists()


def test_stale_or_mismatched_prepared_state_is_refused_naming_the_change(tmp_path):
    from mtlframe.prepare import prepare
    from mtlframe.run import build_system

    root = write_data(tmp_path / "data")
    recipe = load_recipe(_write_recipe(tmp_path / "r.yaml", recipe_dict(root)))
    prepare(recipe)
    other = load_recipe(tmp_path / "r.yaml", ["data.min_count=2"])
    with pytest.raises(DataError, match=r"data.min_count: prepared with 1, the recipe has 2"):
        build_system(other)
    # a file named like a temporary / metadata file is neither prepared nor streamed
    pq.write_table(pa.Table.from_pandas(_frame(np.random.default_rng(4), 9, 0), preserve_index=False),
                   root / "train" / "_partial.parquet")
    assert len(build_system(recipe)[0].split_index["train"]) == 100
    # a value the preprocessor refuses, read in a data-loader worker: the error names the file, its
    # row group and the row, and the column, without the worker's traceback
    dm, _, _ = build_system(recipe)
    bad = _frame(np.random.default_rng(3), 12, 0)
    bad.loc[4, "x"] = np.nan
    pq.write_table(pa.Table.from_pandas(bad, preserve_index=False), root / "val" / "part-9.parquet")
    with pytest.raises(DataError) as err:
        list(dm.val_dataloader())
    assert str(err.value).startswith(f"{root / 'val' / 'part-9.parquet'}, row group 0 (rows counted from its first "
                                     "row, row 1 of the file): numeric column 'x' has 1 missing value(s) of 12")
    assert "at row 5." in str(err.value) and "data.fill_missing" in str(err.value)
    assert "Traceback" not in str(err.value)
    part = root / "train" / "part-1.parquet"
    pq.write_table(pa.Table.from_pandas(_frame(np.random.default_rng(5), 26, 0), preserve_index=False), part)
    with pytest.raises(DataError, match=r"(?s)is stale.*part-1.parquet: size changed"):
        build_system(recipe)


def test_what_a_stream_cannot_do_is_refused_at_its_key(tmp_path):
    root = tmp_path
    data = recipe_dict(root)
    data["data"]["split"] = {"name": "random", "val": 0.2}
    data["data"]["sampler"] = {"name": "uniform-negatives", "item_feature": "city"}
    data["data"]["fill_missing"] = {"x": "median"}
    data["data"]["dataset"]["features"]["hist"] = "sequence"
    data["metrics_group"] = "uid"
    data["model"]["encoders"][1]["features"] = ["x", "rating"]
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(data, "r.yaml")
    problems = dict(err.value.problems)
    assert "split is by directory" in problems["data.split"] and "val" in problems["data.split"]
    assert "whole training table" in problems["data.sampler"]
    assert "median needs every value" in problems["data.fill_missing.x"]
    assert "sequence feature" in problems["data.dataset.features.hist"]
    assert "grouped metrics" in problems["metrics_group"]
    assert "label column of task 'rating'" in problems["model.encoders[1].features[1]"]
    csv = recipe_dict(root)
    csv["data"]["dataset"] = {"name": "adult"}
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(csv, "r.yaml")
    assert "directories of Parquet files" in dict(err.value.problems)["data.dataset.name"]
    # a saved (resolved) recipe lists every split key at its default: it loads again
    ok = recipe_dict(root)
    ok["data"]["split"] = {"name": "random", "val": 0.1, "test": 0.1}
    assert recipe_from_dict(ok, "r.yaml").config.data.stream.workers == 2


def test_resume_mid_epoch_continues_the_stream_at_the_batch(tmp_path):
    """Through the data module: a training loader resumed at (epoch 1, batch k) yields the rest of
    epoch 1 batch for batch, with 2 real workers; epochs 0 and 1 differ."""
    from mtlframe.run import build_system

    root = write_data(tmp_path / "data")
    recipe = load_recipe(_write_recipe(tmp_path / "r.yaml", recipe_dict(root)))
    dm, _, _ = build_system(recipe)

    def epoch(e: int) -> list[list[float]]:
        loader = dm.train_dataloader()
        loader.epoch_of = lambda: e
        return [b["label/rating"].tolist() for b in loader]

    full0, full1 = epoch(0), epoch(1)
    assert len(full1) == 14 and full0 != full1 and sorted(full0) != sorted(full1)
    for k in (3, 13):
        dm.resume_position = (1, k)             # what train --resume sets from the checkpoint
        loader = dm.train_dataloader()
        assert loader.pending == (1, k) and dm.resume_position is None
        assert [b["label/rating"].tolist() for b in loader] == full1[k:]
        loader.epoch_of = lambda: 1             # the next epoch through the same loader: from its start
        assert [b["label/rating"].tolist() for b in loader] == full1
        assert loader.started == [(1, k), (1, 0)]


@pytest.mark.skipif(sys.platform != "linux", reason="DDP on CPU tested on Linux")
def test_two_processes_two_workers_train_on_every_row_once_per_epoch(tmp_path):
    """A real `train` under DDP (2 gloo processes x 2 data-loader workers): each process records
    the row ids of its training batches; per epoch the two processes' rows are disjoint and cover
    all 100 training rows once (100 = 4 readers x 25: none left out), epochs in other orders."""
    root = write_data(tmp_path / "data")
    data = recipe_dict(root)
    data["model"]["encoders"].append({"name": "embedding", "features": ["rid"], "dim": 2})
    data["data"]["batch_size"] = 10
    data["trainer"].update(devices=2, strategy="ddp")
    recipe = _write_recipe(tmp_path / "r.yaml", data)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run_process_group([sys.executable, str(REPO / "tests" / "stream_train_run.py"), str(recipe),
                       str(tmp_path / "run"), str(tmp_path / "seen")], timeout=300, env=env)
    seen = {r: json.loads((tmp_path / "seen" / f"rank{r}.json").read_text()) for r in (0, 1)}
    vocab = torch.load(root / "train" / "_mtlframe_prepared.pt", weights_only=True)["preprocessor"]["vocab"]["rid"]
    assert sorted(vocab.tolist()) == list(range(100))
    for e in ("0", "1"):
        rows = [vocab[np.array(seen[r][e]) - 1].tolist() for r in (0, 1)]   # codes -> row ids
        assert [len(x) for x in rows] == [50, 50]                          # 3 + 3 batches (10 + 10 + 5) each
        assert not set(rows[0]) & set(rows[1])
        assert sorted(rows[0] + rows[1]) == list(range(100))
    assert seen[0]["0"] != seen[0]["1"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["test"]) == {"click", "rating"}


def test_ctrl_c_mid_epoch_then_resume_gives_the_straight_weights(tmp_path):
    """`train --resume` of a streamed run stopped by Ctrl-C in the middle of epoch 2 finishes with
    the weights of the run trained straight through (the stream continues at the exact batch)."""
    import signal

    import pytorch_lightning as pl

    from mtlframe import run as run_mod

    class CtrlC(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if (trainer.current_epoch, batch_idx) == (1, 3):
                os.kill(os.getpid(), signal.SIGINT)

    root = write_data(tmp_path / "data")
    path = _write_recipe(tmp_path / "r.yaml", recipe_dict(root, workers=1))
    straight = run_mod.train(load_recipe(path), tmp_path / "straight", progress=False)
    with pytest.raises(run_mod.RunInterrupted):
        run_mod.train(load_recipe(path), tmp_path / "split", progress=False, callbacks=[CtrlC()])
    status = json.loads((tmp_path / "split" / "status.json").read_text())
    assert (status["epoch"], status["batch"]) == (2, 4)
    run_mod.train(resume=tmp_path / "split", progress=False)
    a = torch.load(straight.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 200 // 8 + 1
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def test_without_a_validation_directory_the_messages_name_data_stream_val(tmp_path):
    from mtlframe.run import evaluate, train

    root = write_data(tmp_path / "data")
    data = recipe_dict(root, workers=0)
    del data["data"]["stream"]["val"]
    data["trainer"]["max_epochs"] = 1
    with pytest.warns(UserWarning, match="^data.stream.val is not set: there is no validation split"):
        result = train(load_recipe(_write_recipe(tmp_path / "r.yaml", data)), tmp_path / "run", progress=False)
    with pytest.raises(DataError, match=r"streams no val rows \(data.stream.val is not set"):
        evaluate(result.best_checkpoint, "val", accelerator="cpu")
    scores = evaluate(result.best_checkpoint, "val", accelerator="cpu", overrides=[f"data.stream.val={root / 'val'}"])
    assert set(scores) == {"click", "rating"}


def test_integer_ids_and_labels_with_missing_values_stream_as_in_memory(tmp_path):
    """An integer id column with a null (pandas reads it as float: the vocabulary is keyed "3") and
    an integer label with a null (masked): the streamed batches equal the in-memory columns."""
    from mtlframe.datamodule import materialize
    from mtlframe.run import build_system

    root = write_data(tmp_path / "data")
    for split, name in (("train", "part-1.parquet"), ("val", "part-0.parquet")):
        frame = pd.read_parquet(root / split / name)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        uid = pa.array([None if i in (2, 5) else int(v) for i, v in enumerate(frame["uid"])], pa.int64())
        click = pa.array([None if i == 7 else int(v) for i, v in enumerate(frame["click"])], pa.int64())
        table = table.set_column(table.schema.get_field_index("uid"), "uid", uid)
        table = table.set_column(table.schema.get_field_index("click"), "click", click)
        pq.write_table(table, root / split / name, row_group_size=10)
    dm, _, _ = build_system(load_recipe(_write_recipe(tmp_path / "r.yaml", recipe_dict(root))))
    assert all(isinstance(v, str) for v in dm.preprocessor.vocab["uid"])          # "3": pandas' float ids
    got = list(dm.stream("val", num_workers=0))
    want = materialize(dm.encoders, dm.tasks, dm.preprocessor.transform(pd.read_parquet(root / "val")))
    assert len(got) == 1 and sorted(got[0]) == sorted(want) and not bool(got[0]["mask/click"].all())
    for key, value in want.items():   # NaN where the click label is missing, in both
        torch.testing.assert_close(got[0][key], value, rtol=0, atol=0, equal_nan=True)
    assert sum(len(b["label/rating"]) for b in dm.train_dataloader()) == 100


def test_a_bad_value_in_a_shuffled_run_is_named_by_file_row_group_and_row(tmp_path):
    """A run that leaves the shuffle buffer mixes rows of several row groups: the transform's
    error is raised again for the row group that holds the bad value, rows counted within it."""
    from mtlframe.preprocess import Preprocessor
    from mtlframe.streaming import ParquetStream

    d = tmp_path / "d"
    d.mkdir()
    good = pd.DataFrame({"x": [str(float(i)) for i in range(20)]})
    pq.write_table(pa.Table.from_pandas(good, preserve_index=False), d / "a.parquet", row_group_size=10)
    bad = good.copy()
    bad.loc[13, "x"] = "oops"   # row group 1 of b.parquet, its 4th row; row 14 of the file
    pq.write_table(pa.Table.from_pandas(bad, preserve_index=False), d / "b.parquet", row_group_size=10)
    pre = Preprocessor({"x": "numeric"}, [])
    pre.fit(pd.DataFrame({"x": np.arange(5.0)}))

    def transform(cols):
        return {k: torch.as_tensor(v) for k, v in pre.transform(pd.DataFrame(cols), str(d)).items()}

    stream = ParquetStream(d, columns=["x"], batch_size=8, shuffle=True, buffer_rows=16, transform=transform)
    with pytest.raises(DataError) as err:
        list(stream)
    text = str(err.value)
    assert text.startswith(f"{d / 'b.parquet'}, row group 1 (rows counted from its first row, row 11 of the file)")
    assert "'oops' at row 4;" in text


def test_export_self_check_rows_of_a_streamed_checkpoint_come_from_its_test_directory(tmp_path):
    """`mtlframe export` without --data on a `data.stream` checkpoint: the held-out rows are the
    first rows of data.stream.test (else val), read from the directory, not a whole-table load."""
    from types import SimpleNamespace

    from mtlframe.export import held_out_rows

    root = write_data(tmp_path)
    rec = recipe_from_dict(recipe_dict(root))
    rows = held_out_rows(SimpleNamespace(recipe=rec), 12)
    expected = pd.read_parquet(root / "test" / "part-0.parquet").head(12)
    pd.testing.assert_frame_equal(rows[list(expected.columns)], expected, check_dtype=False)
    no_test = recipe_dict(root)
    no_test["data"]["stream"]["test"] = None
    rows = held_out_rows(SimpleNamespace(recipe=recipe_from_dict(no_test)), 30)   # val: part-0 (23 rows), then part-1
    assert rows["rid"].tolist() == list(range(30))


def test_a_text_label_is_named_as_a_label_with_the_labels_fix(tmp_path):
    """'yes'/'no' in a binary label column: the error calls it a label and says how to write it,
    not "numeric column ... declare it categorical" (a label cannot be categorical)."""
    from mtlframe.preprocess import LabelSpec, Preprocessor

    pre = Preprocessor({"x": "numeric"}, [LabelSpec("click", "click", "binary", None),
                                          LabelSpec("rating", "rating", "regression", None)])
    pre.fit(pd.DataFrame({"x": [0.0, 1.0], "click": [0.0, 1.0], "rating": [1.0, 2.0]}))
    with pytest.raises(DataError) as err:
        pre.transform(pd.DataFrame({"x": [0.0, 1.0], "click": ["1", "yes"], "rating": [1.0, 2.0]}), "val/p.parquet")
    assert str(err.value) == ("val/p.parquet: binary label column 'click' has a non-numeric value 'yes' at row 2; "
                              "a binary label must be 0 or 1 (or empty when missing): write it as 0/1 in the data.")
    with pytest.raises(DataError, match="regression label column 'rating' has a non-numeric value 'n/a' at row 1; "
                                        "a regression label must be a number"):
        pre.transform(pd.DataFrame({"x": [0.0], "click": [1.0], "rating": ["n/a"]}), "val/p.parquet")


def test_an_evaluation_directory_without_a_label_is_refused_before_training(tmp_path):
    """A test file without the `rating` label: refused when the data module is set up (before the
    model is built and trained), naming the file, the column and data.stream.test; before, the
    whole run trained and failed at its final test pass."""
    root = write_data(tmp_path, {"train": [20], "val": [10], "test": [10]})
    frame = pd.read_parquet(root / "test" / "part-0.parquet").drop(columns=["rating"])
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), root / "test" / "part-1.parquet")
    with pytest.raises(DataError) as err:
        _prepared_data_module(root).setup("fit")
    assert str(err.value).startswith(f"{root / 'test' / 'part-1.parquet'}: column 'rating' is missing")
    assert "(the data.stream.test directory; the recipe reads these columns: ['uid', 'city', 'x', 'click', " \
           "'rating'])" in str(err.value)


def test_a_bad_label_in_a_val_file_names_the_file_once_through_the_data_module(tmp_path):
    """Through the data module's transform (which names its source): the message starts with the
    file and row group, not the directory as well."""
    root = write_data(tmp_path, {"train": [20], "val": [10], "test": [10]})
    frame = pd.read_parquet(root / "val" / "part-0.parquet")
    frame["click"] = frame["click"].astype(int).astype(str)
    frame.loc[6, "click"] = "yes"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), root / "val" / "part-0.parquet",
                   row_group_size=4)
    dm = _prepared_data_module(root)
    dm.setup("fit")
    dm.attach_encoders([], [])
    with pytest.raises(DataError) as err:
        list(dm.stream("val", num_workers=0))
    assert str(err.value) == (
        f"{root / 'val' / 'part-0.parquet'}, row group 1 (rows counted from its first row, row 5 of the file): "
        "binary label column 'click' has a non-numeric value 'yes' at row 3; a binary label must be 0 or 1 "
        "(or empty when missing): write it as 0/1 in the data.")


def _prepared_data_module(root: Path):
    """The data module of :func:`recipe_dict` over ``root``, its state prepared, not set up."""
    from mtlframe.build import Builder
    from mtlframe.streamdata import StreamDataModule

    rec = recipe_from_dict(recipe_dict(root))
    dm = StreamDataModule(rec, Builder(rec).dataset())
    dm.prepare_data()
    return dm


def test_an_evaluation_directory_with_fewer_rows_than_processes_is_refused_by_name(tmp_path):
    """1 val row and 2 processes: a DataError naming the directory and the key on every process,
    instead of Lightning's 'EpochLoader within local rank has zero length' in one of them."""
    root = write_data(tmp_path, {"train": [20], "val": [1], "test": [10]})
    dm = _prepared_data_module(root)
    dm.setup("fit")
    dm._dist = lambda: (0, 2)
    with pytest.raises(DataError, match=r"val \(data.stream.val\) holds 1 row\(s\) for 2 processes"):
        dm.val_dataloader()
    assert len(dm.test_dataloader().dataset) >= 1    # 10 rows: a share for each process


def test_evaluation_batches_per_process_are_those_the_stream_yields(tmp_path):
    """What a component with collective forward passes (sharded tables) checks before evaluating:
    each process's batch count of a directory, equal to what its stream yields (43 val rows, 2
    processes x 2 workers: contiguous shares 11/11 | 11/10), not the in-memory one-by-one rule."""
    from mtlframe.datamodule import RecDataModule
    from mtlframe.streaming import ParquetStream

    root = write_data(tmp_path, {"train": [20], "val": [23, 20], "test": [10]})
    dm = _prepared_data_module(root)
    dm.setup("fit")
    for b in (1, 5, 10, 11, 22, 4096):
        assert dm.eval_batches_per_process("val", b, 2) == [
            ParquetStream(root / "val", batch_size=b, rank=r, world_size=2, num_workers=2).batches_per_epoch(2)
            for r in (0, 1)]
    assert dm.eval_batches_per_process("val", 10, 2) == [4, 3]
    assert RecDataModule.eval_batches_per_process(dm, "val", 10, 2) == [3, 3]   # rows dealt one by one


def test_a_missing_evaluation_directory_names_its_key(tmp_path):
    """data.stream.val pointing at a folder that does not exist: the error names the key."""
    from mtlframe.build import Builder
    from mtlframe.streamdata import StreamDataModule

    root = write_data(tmp_path / "data")
    rec = recipe_from_dict(recipe_dict(root, val=str(root / "vall")))
    dm = StreamDataModule(rec, Builder(rec).dataset())
    dm.prepare_data()
    with pytest.raises(DataError, match=r"vall: does not exist.*\(check data.stream.val in the recipe\)"):
        dm.setup("fit")
