"""Sequence features (data layer): the leak-free history builder, the preprocessor's pre-padded id
blocks (shared id spaces, side fields, OOV, truncation, malformed cells), ``data.sequences`` and
the data module (docs/sequences.md)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from mtlframe.datamodule import split_indices
from mtlframe.datasets.base import Table
from mtlframe.errors import DataError, RecipeError
from mtlframe.history import build_history, split_ranks
from mtlframe.preprocess import LabelSpec, Preprocessor, SequenceSpec
from mtlframe.recipe import recipe_from_dict


def _brute_history(users, times, ranks, i, max_len):
    """Row ``i``'s history by the rule, one row at a time (the reference)."""
    js = [j for j in range(len(users)) if users[j] == users[i] and times[j] < times[i] and ranks[j] <= ranks[i]]
    js.sort(key=lambda j: (times[j], j))
    return ([-1] * max_len + js)[-max_len:], len(js)


# -- the history builder ---------------------------------------------------------------------------


def test_history_worked_example_ties_self_and_truncation():
    # user 7: rows 0 (t=5), 1 (t=1), 3 (t=5, same second as row 0), 4 (t=9), 5 (t=3); user 8: row 2
    users = np.array([7, 7, 8, 7, 7, 7])
    times = np.array([5, 1, 5, 5, 9, 3])
    h = build_history(users, times, max_len=3)
    assert h.positions.dtype == np.int32
    assert h.positions.tolist() == [
        [-1, 1, 5],   # t=5: the rows at t=1 and t=3, oldest first; not itself, not row 3 (same time)
        [-1, -1, -1],  # t=1: the user's first interaction: empty history
        [-1, -1, -1],  # another user's row never enters
        [-1, 1, 5],   # t=5: the tie rule again (row 0 is as late as row 3)
        [5, 0, 3],    # t=9: four earlier rows, the 3 most recent kept; rows 0 and 3 tie: file order
        [-1, -1, 1],  # t=3
    ]
    assert h.lengths.tolist() == [2, 0, 0, 2, 4, 1]  # 4 > 3: row 4 was truncated


def test_history_equals_the_rule_row_by_row():
    g = np.random.default_rng(0)
    n = 400
    users, times = g.integers(0, 9, n), g.integers(0, 30, n)  # many ties
    ranks = g.integers(0, 3, n).astype(np.int8)
    h = build_history(users, times, 6, ranks, block=37)  # several blocks per split
    for i in range(n):
        expected, count = _brute_history(users, times, ranks, i, 6)
        assert h.positions[i].tolist() == expected and h.lengths[i] == count
        seen = h.positions[i][h.positions[i] >= 0]
        assert i not in seen and (times[seen] < times[i]).all() and (ranks[seen] <= ranks[i]).all()


@pytest.mark.parametrize("split", ["random", "time", "user-random", "leave-last-out", "cold-start"])
def test_no_training_history_holds_a_val_or_test_interaction(split):
    g = np.random.default_rng(1)
    n = 600
    frame = pd.DataFrame({"user": g.integers(0, 20, n), "item": g.integers(0, 40, n), "ts": g.integers(0, 200, n),
                          "y": g.random(n)})
    table = Table(frame, {"item": "categorical"}, ["y"], timestamp="ts", user="user", item="item")
    idx = split_indices(table, split, 0.15, 0.15, seed=3)
    ranks = split_ranks(idx, n)
    h = build_history(frame["user"].to_numpy(), frame["ts"].to_numpy(), 10, ranks)
    allowed = {"train": set(idx["train"]), "val": set(idx["train"]) | set(idx["val"]), "test": set(range(n))}
    ts = frame["ts"].to_numpy()
    for k, rows in idx.items():
        seen = h.positions[rows]
        for r, hist in zip(rows, seen):
            hist = hist[hist >= 0]
            assert set(hist.tolist()) <= allowed[k], (k, r)
            assert (ts[hist] < ts[r]).all()
    assert (h.positions[idx["train"]] >= 0).any()  # histories are not trivially empty
    if split in ("time", "leave-last-out"):  # eval rows do see the training past
        assert (h.positions[idx["test"]] >= 0).any()


# -- the preprocessor ----------------------------------------------------------------------------


def _clicks() -> pd.DataFrame:
    return pd.DataFrame({
        "item": ["a", "b", "a", "c", "a", "zz"],
        "hist": ["a|b", "b | c", "", "c|a|b|a", "b", "q|a"],
        "when": ["1|2", "3|4", "", "1|2|3|4", "8", "5|6"],
        "y": [0, 1, 0, 1, 1, 0.0],
    })


def test_sequence_column_codes_share_the_categorical_codes():
    frame = _clicks()
    pre = Preprocessor({"item": "categorical", "hist": "sequence"}, [LabelSpec("y", "y", "binary")],
                       sequences={"hist": SequenceSpec(max_len=3, share_with="item", fields=("when",))})
    pre.fit(frame, "f.csv", rows=np.arange(5))
    assert pre.vocab["item"] == ["a", "b", "c"]  # codes a=1, b=2, c=3 (0 = OOV)
    info = pre.feature_info()["hist"]
    assert (info.type, info.cardinality, info.max_len, info.share_with, info.fields) == ("sequence", 4, 3, "item", ("when",))
    out = pre.transform(frame, "f.csv")
    ids = out["hist"]
    assert ids.dtype == torch.int32 and ids.tolist() == [
        [0, 2, 3],   # a|b -> item codes 1, 2 -> +1; pre-padded
        [0, 3, 4],   # b|c (blanks around '|' allowed)
        [0, 0, 0],   # empty cell: empty history, all padding
        [2, 3, 2],   # c|a|b|a truncated to the 3 most recent: a|b|a
        [0, 0, 3],
        [0, 1, 2],   # q is out of vocabulary: code 1
    ]
    assert out["item"].tolist() == [1, 2, 1, 3, 1, 0]  # seq_code - 1 == the item's categorical code
    assert int(ids[4, 2]) - 1 == int(out["item"][1]) and int(ids[1, 2]) - 1 == int(out["item"][3])
    # side field: standardized with the training tokens (1, 2, 3, 4, 1, 2, 3, 4, 8), 0 at padding
    train_vals = np.array([1, 2, 3, 4, 1, 2, 3, 4, 8.0])
    mean, std = train_vals.mean(), train_vals.std()
    when = out["hist:when"]
    assert when.dtype == torch.float32
    np.testing.assert_allclose(when[3].numpy(), (np.array([2, 3, 4]) - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(when[0].numpy(), [0, (1 - mean) / std, (2 - mean) / std], rtol=1e-6)
    assert when[2].tolist() == [0, 0, 0]
    rep = pre.reports["data"]
    assert rep["oov"]["hist"] == {"rows": 6, "oov": 1, "missing": 1, "tokens": 11, "oov_tokens": 1}
    assert rep["truncated"]["hist"] == {"rows": 6, "truncated": 1, "max_len": 3}


def test_sequence_own_vocabulary_fitted_on_training_tokens_only():
    frame = _clicks()
    pre = Preprocessor({"hist": "sequence"}, [], sequences={"hist": SequenceSpec(max_len=2)})
    pre.fit(frame, rows=np.arange(2))  # training tokens: a, b, b, c -> b (2), then a, c
    assert pre.vocab["hist"] == ["b", "a", "c"] and pre.feature_info()["hist"].cardinality == 4
    assert pre.transform(frame, with_labels=False)["hist"].tolist() == [
        [3, 2], [2, 4], [0, 0], [2, 3], [0, 2], [1, 3]]


@pytest.mark.parametrize("cell, why", [
    ("[12, 7]", "'[12, 7]'"), ("12,7", "'12,7'"), ("12||7", "'12||7'"), ("12 7", "'12 7'"), ("|12", "'|12'")])
def test_malformed_sequence_cell_names_file_column_and_row(cell, why):
    frame = _clicks()
    frame.loc[3, "hist"] = cell
    pre = Preprocessor({"hist": "sequence"}, [])
    with pytest.raises(DataError, match=rf"clicks.csv: sequence column 'hist' holds a malformed cell at row 4: "
                                        + re.escape(why)):
        pre.fit(frame, "clicks.csv")
    pre.fit(_clicks(), "clicks.csv")
    with pytest.raises(DataError, match=r"clicks.csv: sequence column 'hist' holds a malformed cell at row 4"):
        pre.transform(frame, "clicks.csv", rows=np.array([0, 3]))  # a subset's positions map back to file rows
    ok = pd.DataFrame({"hist": ["Children's|Film-Noir|x(1)|a.b"]})  # ids may hold quotes, dashes, dots
    assert pre.transform(ok, with_labels=False)["hist"].tolist() == [[0] * 46 + [1, 1, 1, 1]]


def test_malformed_side_field_names_column_and_row():
    frame = _clicks()
    spec = {"hist": SequenceSpec(fields=("when",))}
    bad = frame.copy()
    bad.loc[1, "when"] = "3|x"
    with pytest.raises(DataError, match=r"f.csv: sequence column 'when' holds a malformed cell at row 2: '3\|x'.*"
                                        "finite numbers"):
        Preprocessor({"hist": "sequence"}, [], sequences=spec).fit(bad, "f.csv")
    bad = frame.copy()
    bad.loc[4, "when"] = "8|9"
    with pytest.raises(DataError, match=r"row 5: '8\|9'.*that row has 2 value\(s\) for 1 id\(s\)"):
        Preprocessor({"hist": "sequence"}, [], sequences=spec).fit(bad, "f.csv")


def test_parquet_list_cells_are_read_as_they_are(tmp_path):
    frame = pd.DataFrame({"h": [[1, 2], [], None, [3, 1, 2, 2]], "w": [[1.0, 2.0], [], None, [1.0, 2.0, 3.0, 4.0]]})
    frame.to_parquet(tmp_path / "h.parquet")
    back = pd.read_parquet(tmp_path / "h.parquet")  # cells come back as numpy arrays
    pre = Preprocessor({"h": "sequence"}, [], sequences={"h": SequenceSpec(max_len=3, fields=("w",))}).fit(back)
    assert pre.vocab["h"] == ["2", "1", "3"]  # 2 (3 times), 1 (twice), 3
    out = pre.transform(back, with_labels=False)
    assert out["h"].tolist() == [[0, 3, 2], [0, 0, 0], [0, 0, 0], [3, 2, 2]]
    mean, std = np.mean([1, 2, 1, 2, 3, 4.0]), np.std([1, 2, 1, 2, 3, 4.0])
    np.testing.assert_allclose(out["h:w"][3].numpy(), (np.array([2, 3, 4.0]) - mean) / std, rtol=1e-6)


def test_state_dict_round_trip_and_predict_builds_histories_from_the_input(tmp_path):
    log = pd.DataFrame({"u": [1, 1, 2, 1, 2], "it": [10, 11, 10, 12, 13], "t": [1, 2, 1, 2, 5],
                        "r": [1.0, 2, 3, 4, 5]})
    spec = SequenceSpec(max_len=2, share_with="it", fields=("r", "time_gap"), of="it", user="u", timestamp="t")
    pre = Preprocessor({"it": "categorical", "h": "sequence"}, [], sequences={"h": spec}).fit(log)
    out = pre.transform(log, with_labels=False)
    # item codes: 10 -> 1, then 11, 12, 13 -> 2, 3, 4; row 1 (u1, t=2) sees row 0 (t=1) only: not row 3 (t=2)
    assert out["h"].tolist() == [[0, 0], [0, 2], [0, 0], [0, 2], [0, 2]]
    gap = out["h:time_gap"]  # 1 (row 1), 1 (row 3), 4 (row 4): mean 2, std sqrt(2)
    np.testing.assert_allclose(gap[:, 1].numpy(), [0, -1 / np.sqrt(2), 0, -1 / np.sqrt(2), 2 / np.sqrt(2)], rtol=1e-6)
    torch.save(pre.state_dict(), tmp_path / "pre.pt")
    back = Preprocessor.from_state_dict(torch.load(tmp_path / "pre.pt", weights_only=True))
    again = back.transform(log, with_labels=False)
    assert back.sequences == pre.sequences and back.feature_info() == pre.feature_info()
    assert all(torch.equal(out[k], again[k]) for k in out)
    # without given histories, a subset of rows is its own log: row 3 (u1, t=2) no longer sees row 0
    sub = back.transform(log, with_labels=False, rows=np.array([1, 3, 4]))
    assert sub["h"].tolist() == [[0, 0], [0, 0], [0, 0]]
    assert back.transform(log, with_labels=False, rows=np.array([0, 3]))["h"].tolist() == [[0, 0], [0, 2]]
    with pytest.raises(DataError, match="required column 'u' is missing"):
        back.transform(log.drop(columns=["u"]), with_labels=False)


# -- recipe keys and the data module ---------------------------------------------------------------


def _log_csv(tmp_path, n=60, seed=0):
    g = np.random.default_rng(seed)
    frame = pd.DataFrame({"user": g.integers(0, 6, n), "item": g.integers(0, 15, n), "ts": g.integers(0, 40, n),
                          "rating": g.integers(1, 6, n).astype(float)})
    frame["like"] = (frame["rating"] >= 4).astype(float)
    path = tmp_path / "log.csv"
    frame.to_csv(path, index=False)
    return path, frame


def _recipe(path, sequences, split="random", features=("user", "item", "hist")) -> dict:
    return {
        "seed": 1,
        "data": {"dataset": {"name": "csv", "path": str(path), "labels": ["rating", "like"],
                             "features": {"user": "categorical", "item": "categorical"},
                             "user": "user", "item": "item", "timestamp": "ts"},
                 "split": {"name": split, "val": 0.2, "test": 0.2}, "batch_size": 16, "sequences": sequences},
        "tasks": {"like": {"type": "binary", "label": "like"}},
        "model": {"encoders": [{"name": "embedding", "features": list(features), "dim": 4}],
                  "backbone": {"name": "shared-bottom", "hidden": [8]}, "tower": {"name": "mlp", "hidden": [4]}},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
        "logger": {"name": "none"},
    }


def _setup(recipe: dict):
    from mtlframe.testing import tiny_datamodule

    return tiny_datamodule(recipe)


@pytest.mark.parametrize("split", ["random", "time"])
def test_data_module_builds_the_leak_free_history_of_a_flat_log(tmp_path, split, capsys):
    path, frame = _log_csv(tmp_path)
    dm = _setup(_recipe(path, {"hist": {"of": "item", "share_with": "item", "max_len": 3, "fields": ["rating"]}},
                        split))
    pre = dm.preprocessor
    vocab = [int(v) for v in pre.vocab["item"]]
    users, ts, items = frame["user"].to_numpy(), frame["ts"].to_numpy(), frame["item"].to_numpy()
    ranks = split_ranks(dm.split_index, len(frame))
    r_mean, r_std = pre.seq_stats["hist:rating"]
    for k, rows in dm.split_index.items():
        ids, side = dm.splits[k]["hist"], dm.splits[k]["hist:rating"]
        assert ids.shape == (len(rows), 3) and ids.dtype == torch.int32
        for i, r in enumerate(rows):
            expected, _ = _brute_history(users, ts, ranks, r, 3)
            want = [0 if p < 0 else (vocab.index(items[p]) + 2 if items[p] in vocab else 1) for p in expected]
            assert ids[i].tolist() == want, (k, r)
            # side fields aligned with their ids
            want_side = [0.0 if p < 0 else (frame["rating"][p] - r_mean) / r_std for p in expected]
            np.testing.assert_allclose(side[i].numpy(), want_side, rtol=1e-5, atol=1e-6)
    # the training histories hold training items only: never the out-of-vocabulary code
    assert not (dm.splits["train"]["hist"] == 1).any()
    info = dm.feature_info()["hist"]
    assert (info.type, info.cardinality, info.share_with, info.fields) == (
        "sequence", dm.feature_info()["item"].cardinality, "item", ("rating",))
    truncated = sum(r["truncated"]["hist"]["truncated"] for r in pre.reports.values())
    assert truncated > 0 and f"feature 'hist': {truncated / len(frame):.1%} of rows ({truncated} of 60) truncated " \
                             "to the 3 most recent" in capsys.readouterr().out


def test_sequence_recipe_mistakes_are_recipe_errors_with_paths(tmp_path):
    path, _ = _log_csv(tmp_path)
    with pytest.raises(RecipeError, match=r"data.sequences.hist.share_with .*'rating' is not a categorical feature"):
        _setup(_recipe(path, {"hist": {"of": "item", "share_with": "rating"}}))
    with pytest.raises(RecipeError, match=r"data.sequences.hist.of .*no column 'itme'.*did you mean 'item'"):
        _setup(_recipe(path, {"hist": {"of": "itme"}}))
    with pytest.raises(RecipeError, match=r"data.sequences.hist.fields\[0\] .*no column 'ratng'"):
        _setup(_recipe(path, {"hist": {"of": "item", "fields": ["ratng"]}}))
    with pytest.raises(RecipeError, match=r"data.sequences.user .*'user' is already a column"):
        _setup(_recipe(path, {"user": {"of": "item"}}))
    with pytest.raises(RecipeError, match=r"data.sequences.hist .*no sequence column 'hist'"):
        _setup(_recipe(path, {"hist": {"max_len": 5}}))
    recipe = _recipe(path, {"hist": {"of": "item"}})
    del recipe["data"]["dataset"]["timestamp"]
    with pytest.raises(RecipeError, match=r"data.sequences.hist.of .*declares no timestamp column"):
        _setup(recipe)


def test_csv_sequence_column_through_the_data_module(tmp_path):
    frame = pd.DataFrame({"user": ["u1", "u2", "u1", "u3"] * 5, "item": ["007", "8", "9", "007"] * 5,
                          "recent": ["007|8", "", "9|007|8", "x"] * 5, "like": [1, 0, 1, 0] * 5})
    path = tmp_path / "clicks.csv"
    frame.to_csv(path, index=False)
    recipe = _recipe(path, {"recent": {"share_with": "item", "max_len": 2}}, features=("user", "item", "recent"))
    recipe["data"]["dataset"] = {"name": "csv", "path": str(path), "labels": ["like"],
                                 "features": {"user": "categorical", "item": "categorical", "recent": "sequence"}}
    recipe["data"]["sequences"]["recent"]["fields"] = ["when", "time_gap"]
    with pytest.raises(RecipeError, match=r"data.sequences.recent.fields\[0\] .*no column 'when'(.|\n)*"
                                          r"data.sequences.recent.fields\[1\] .*'time_gap' is a field of a history"):
        _setup(recipe)
    del recipe["data"]["sequences"]["recent"]["fields"]
    dm = _setup(recipe)
    codes = {v: i + 2 for i, v in enumerate(dm.preprocessor.vocab["item"])}  # '007' keeps its zeros
    assert set(codes) == {"007", "8", "9"}
    want = {"007|8": [codes["007"], codes["8"]], "": [0, 0], "9|007|8": [codes["007"], codes["8"]], "x": [0, 1]}
    for k, rows in dm.split_index.items():
        assert dm.splits[k]["recent"].tolist() == [want[frame["recent"].fillna("")[r]] for r in rows]
    frame.loc[6, "recent"] = "9;007"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=rf"{path}: sequence column 'recent' holds a malformed cell at row 7: '9;007'"):
        _setup(recipe)


def test_sequence_data_benchmark_runs_on_movielens(ml100k, tmp_path):
    from benchmarks.sequence_data import main

    assert main(["--data", str(ml100k), "--repeats", "1", "--epochs", "1", "--output", str(tmp_path)]) == 0
    import json

    result = json.loads((tmp_path / "results.json").read_text())
    assert result["rows"] == 80_000 and result["max_len"] == 50 and result["rows_per_second"] > 0
    assert 0.5 < result["truncated_share"] < 0.7  # ML-100K users are heavy raters: most rows see 50+ earlier ones


# -- through a whole run, with a throwaway encoder (the package's sequence encoders are tested on their own)


class _MeanHistory(torch.nn.Module):
    """Test-only: masked mean of a sequence's id embeddings ``[B, L] -> [B, dim]``."""

    accepts = frozenset({"sequence"})
    injected = ("feature_info",)
    per_task: tuple[str, ...] = ()

    def __init__(self, features: list[str], dim: int = 4, *, feature_info) -> None:
        super().__init__()
        self.features = list(features)
        info = feature_info[self.features[0]]
        self.table = torch.nn.Embedding(info.cardinality + 1, dim, padding_idx=0)
        self.output_dim = dim

    def featurize(self, columns):
        return {f: torch.as_tensor(columns[f]) for f in self.features}

    def forward(self, batch):
        ids = batch[self.features[0]].long()
        mask = (ids > 0).unsqueeze(-1).float()
        return (self.table(ids) * mask).sum(1) / mask.sum(1).clamp(min=1)

    def forward_tasks(self, batch):
        return {}

    def shared_parameters(self):
        return self.parameters()

    def feature_slices(self):
        return None


def test_a_history_trains_checkpoints_and_predicts(tmp_path, monkeypatch):
    import mtlframe.registry as registry_mod
    from mtlframe.hookspecs import hookimpl
    from mtlframe.registry import ComponentSpec, build_registry
    from mtlframe.run import load_checkpoint, predict_frame, train
    import types

    plugin = types.ModuleType("seq_test_plugin")
    plugin.mtlframe_encoders = hookimpl(lambda: [ComponentSpec("test-mean-history", _MeanHistory, "test only")])
    monkeypatch.setattr(registry_mod, "_REGISTRY", build_registry(load_entry_points=False, extra_plugins=[plugin],
                                                                  strict=True))
    path, frame = _log_csv(tmp_path, n=120)
    recipe = _recipe(path, {"hist": {"of": "item", "share_with": "item", "max_len": 4}}, features=("user", "item"))
    recipe["model"]["encoders"].append({"name": "test-mean-history", "features": ["hist"], "dim": 4})
    result = train(recipe_from_dict(recipe, "<test recipe>"), tmp_path / "run", progress=False)
    loaded = load_checkpoint(result.best_checkpoint)
    assert loaded.preprocessor.sequences["hist"].of == "item"
    report: dict = {}
    pred = predict_frame(loaded, frame, report=report)
    assert len(pred) == len(frame) and np.isfinite(pred["like"].to_numpy()).all()
    assert report["truncated"]["hist"]["rows"] == len(frame)


def test_a_missing_side_value_or_timestamp_of_the_log_names_column_and_row():
    log = pd.DataFrame({"u": [1, 1, 1], "it": [10, 11, 12], "t": [1.0, 2, 3], "r": [1.0, np.nan, 4]})
    spec = SequenceSpec(max_len=2, fields=("r",), of="it", user="u", timestamp="t")
    with pytest.raises(DataError, match=r"log.csv: column 'r' \(side field of the history 'h'\) has 1 missing or "
                                        r"non-numeric value\(s\) in the histories, e.g. at row 2"):
        Preprocessor({"h": "sequence"}, [], sequences={"h": spec}).fit(log, "log.csv")
    log.loc[1, "r"], log.loc[2, "t"] = 2.0, np.nan
    with pytest.raises(DataError, match=r"log.csv: timestamp column 't' has 1 missing value\(s\) at row 3"):
        Preprocessor({"h": "sequence"}, [], sequences={"h": spec}).fit(log, "log.csv")
