"""``mtlframe prepare``: the streamed fit over a directory of Parquet files equals the in-memory
Preprocessor's fit on the same rows; the saved state carries a fingerprint that names a changed file."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mtlframe.cli import main
from mtlframe.errors import DataError, RecipeError
from mtlframe.prepare import STATE_NAME, fit_parquet, fingerprint, load_prepared
from mtlframe.preprocess import LabelSpec, Preprocessor
from mtlframe.testing import tiny_recipe

FEATURES = {"uid": "categorical", "nullid": "categorical", "city": "categorical", "price": "numeric",
            "age": "numeric", "tags": "multi_categorical", "note": "text"}
LABELS = [LabelSpec("click", "click", "binary"), LabelSpec("spend", "spend", "regression"),
          LabelSpec("kind", "kind", "multiclass")]


def _table(n: int = 90) -> pa.Table:
    rng = np.random.default_rng(0)
    uid = rng.integers(0, 30, n)  # many ties among 30 ids: the frequency order's tie-break matters
    nullid = [None if i % 11 == 0 else int(v) for i, v in enumerate(rng.integers(100, 120, n))]
    city = [None if i % 13 == 0 else "" if i % 17 == 0 else f" c{v} " for i, v in enumerate(rng.integers(0, 9, n))]
    price = rng.normal(50.0, 10.0, n)
    age = [None if i % 7 == 0 else float(v) for i, v in enumerate(rng.integers(18, 70, n))]
    tags = [None if i % 5 == 0 else "|".join(f"t{t}" for t in rng.integers(0, 6, 1 + i % 4)) for i in range(n)]
    note = [None if i % 3 == 0 else f"row {i}" for i in range(n)]
    click = [None if i % 9 == 0 else int(v) for i, v in enumerate(rng.integers(0, 2, n))]
    return pa.table({"uid": pa.array(uid, pa.int64()), "nullid": pa.array(nullid, pa.int64()),
                     "city": pa.array(city, pa.string()), "price": pa.array(price), "age": pa.array(age, pa.float64()),
                     "tags": pa.array(tags, pa.string()), "note": pa.array(note, pa.string()),
                     "click": pa.array(click, pa.int64()), "spend": pa.array(rng.gamma(2.0, 3.0, n)),
                     "kind": pa.array(rng.integers(0, 3, n), pa.int64())})


def _write(table: pa.Table, root, cuts=(0, 25, 60)) -> None:
    root.mkdir(exist_ok=True)
    bounds = [*cuts, table.num_rows]
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(table.slice(a, b - a), root / f"part-{i}.parquet")


def _pre(**kw) -> Preprocessor:
    return Preprocessor(FEATURES, LABELS, min_count=kw.get("min_count", 2), max_multi_len=3,
                        fill_missing={"age": "mean"}, clip={"price": (30.0, 65.0)})


def test_streamed_fit_equals_in_memory_fit(tmp_path):
    table = _table()
    _write(table, tmp_path / "d")
    # the in-memory path: the whole table as the parquet dataset reads it, every row a training row
    ref = _pre().fit(table.to_pandas(), "d")
    from mtlframe.prepare import StreamingFit
    seen = []
    update = StreamingFit.update
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StreamingFit, "update", lambda self, frame: (seen.append(len(frame)), update(self, frame)))
        got, rows = fit_parquet(_pre(), tmp_path / "d", batch_rows=7)  # 3 files, batches of 7: many merges
    assert rows == 90
    # never the whole table: files of 25, 35 and 30 rows, read 7 rows at a time
    assert seen == [7, 7, 7, 4, 7, 7, 7, 7, 7, 7, 7, 7, 7, 2]
    assert got.fitted
    assert list(ref.vocab) == list(got.vocab)
    np.testing.assert_array_equal(got.vocab["uid"], ref.vocab["uid"])  # int64 vocabulary, same order
    assert isinstance(got.vocab["uid"], np.ndarray) and got.vocab["uid"].dtype == np.int64
    assert got.vocab["nullid"] == ref.vocab["nullid"] and isinstance(ref.vocab["nullid"], list)  # nulls: strings
    assert got.vocab["city"] == ref.vocab["city"] and got.vocab["tags"] == ref.vocab["tags"]
    assert got.multi_len == ref.multi_len == {"tags": 3}
    assert got.classes == ref.classes == {"kind": ["0", "1", "2"]}
    assert set(got.stats) == {"price", "age"}
    for col in got.stats:
        assert got.stats[col] == pytest.approx(ref.stats[col], rel=1e-12)
    assert got.fill["age"] == pytest.approx(ref.fill["age"], rel=1e-12)
    # a worked value: min_count 2 drops the ids seen once
    counts = pd.Series(table.column("uid").to_numpy()).value_counts()
    assert len(got.vocab["uid"]) == int((counts >= 2).sum())
    # the two transform the same rows identically
    frame = table.to_pandas()
    a, b = ref.transform(frame, "d"), got.transform(frame, "d")
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_prepare_errors_name_column_and_row(tmp_path):
    table = _table()
    _write(table, tmp_path / "d")
    pre = Preprocessor(FEATURES, LABELS, fill_missing={}, clip={"price": (30.0, 65.0)})
    # every batch counted: ages missing at i % 7 == 0 of 90 rows -> 13, the first 5 named by file and
    # row within it (files of rows 0-24, 25-59: global row 28 is row 4 of part-1)
    with pytest.raises(DataError, match=r"numeric column 'age' has 13 missing value\(s\) of 90 .*13 empty/NaN.* at "
                                        r"\S*part-0.parquet rows 1, 8, 15, 22; \S*part-1.parquet row 4 \(and 8 more\)"):
        fit_parquet(pre, tmp_path / "d", batch_rows=20)
    # a value error names the file and the row within it (row 31 of the data = row 6 of part-1)
    bad = _table().to_pandas()
    bad["spend"] = bad["spend"].astype(object)
    bad.loc[30, "spend"] = float("inf")
    _write(pa.Table.from_pandas(bad.astype({"spend": float}), preserve_index=False), tmp_path / "inf")
    with pytest.raises(DataError, match=r"inf[/\\]part-1.parquet: regression label column 'spend' .* at row 6\b"):
        fit_parquet(_pre(), tmp_path / "inf")
    with pytest.raises(RecipeError, match=r"data.fill_missing.age \(<recipe>\): median needs every value"):
        fit_parquet(Preprocessor(FEATURES, LABELS, fill_missing={"age": "median"}), tmp_path / "d")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "_other.parquet").write_bytes(b"")  # '_' names are not data files
    with pytest.raises(DataError, match="empty: the directory holds no .parquet file"):
        fit_parquet(_pre(), tmp_path / "empty")
    ids = pa.table({"uid": pa.array([None, None], pa.int64()), "click": pa.array([0, 1]),
                    "spend": pa.array([1.0, 2.0]), "kind": pa.array([0, 1])})
    _write(ids, tmp_path / "e", cuts=(0,))
    with pytest.raises(DataError, match=r"feature column 'uid' \(categorical\) is empty: no value in any of the 2 rows"):
        fit_parquet(Preprocessor({"uid": "categorical"}, LABELS), tmp_path / "e")


def test_cli_prepare_saves_state_and_names_the_changed_file(tmp_path, capsys):
    data = tmp_path / "data"
    _write(_table(), data)
    recipe = tiny_recipe(**{"data.dataset": {"name": "parquet", "path": str(data),
                                             "features": {"uid": "categorical", "price": "numeric"},
                                             "labels": ["click", "spend"]},
                            "model.encoders": [{"name": "embedding", "features": ["uid"], "dim": 4},
                                               {"name": "numeric", "features": ["price"]}],
                            "tasks": {"click": {"type": "binary", "label": "click"},
                                      "spend": {"type": "regression", "label": "spend"}}})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["prepare", str(path), "data.min_count=3"]) == 0
    state = data / STATE_NAME
    pre = load_prepared(state, data)
    out = " ".join(capsys.readouterr().out.split())
    assert f"fitted on 90 rows of 3 file(s); vocabularies: uid {len(pre.vocab['uid'])}" in out
    assert pre.min_count == 3 and set(pre.vocab) == {"uid"} and set(pre.stats) == {"price"}
    assert fingerprint(data) == fingerprint(data) and sorted(fingerprint(data)) == [f"part-{i}.parquet" for i in range(3)]
    # the state itself (a '_' name) is not one of the data files
    assert STATE_NAME not in fingerprint(data)
    # --output elsewhere
    assert main(["prepare", str(path), "--output", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / STATE_NAME).is_file()
    # the state reused by a recipe with another min_count: the key and both values named
    from mtlframe.prepare import recipe_preprocessor
    from mtlframe.recipe import load_recipe
    same, _ = recipe_preprocessor(load_recipe(path, ["data.min_count=3"]))
    assert load_prepared(state, data, expect=same).vocab["uid"].tolist() == pre.vocab["uid"].tolist()
    other, _ = recipe_preprocessor(load_recipe(path))
    with pytest.raises(DataError, match=r"other settings.*\n  data.min_count: prepared with 3, the recipe has 1"):
        load_prepared(state, data, expect=other)
    # a history feature (data.sequences) is refused at its recipe key, with the recipe file named
    hist = dict(recipe, data={**recipe["data"], "sequences": {"hist": {"of": "uid"}}})
    hist["model"] = {**recipe["model"], "encoders": [*recipe["model"]["encoders"],
                                                     {"name": "sequence-pool", "features": ["hist"], "dim": 4}]}
    (tmp_path / "h.yaml").write_text(yaml.safe_dump(hist))
    assert main(["prepare", str(tmp_path / "h.yaml")]) == 2
    assert "does not fit sequence features yet ('hist')" in capsys.readouterr().err
    # a rewritten file of the same size: its modification time names it
    st = (data / "part-1.parquet").stat()
    os.utime(data / "part-1.parquet", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    pq.write_table(_table(5), data / "part-9.parquet")
    with pytest.raises(DataError, match=r"(?s)stale.*part-1.parquet: modified.*part-9.parquet: added.*mtlframe prepare"):
        load_prepared(state, data)


def test_prepare_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    import sys
    _write(_table(), tmp_path / "d")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # simulate pyarrow not installed
    with pytest.raises(DataError, match=r"pip install 'mtlframe\[parquet\]'"):
        fit_parquet(_pre(), tmp_path / "d")


def test_files_changed_during_the_pass_are_refused_and_nothing_is_saved(tmp_path, monkeypatch):
    import mtlframe.prepare as prep
    from mtlframe.recipe import recipe_from_dict
    data = tmp_path / "data"
    _write(_table(), data)
    recipe = recipe_from_dict(tiny_recipe(**{
        "data.dataset": {"name": "parquet", "path": str(data), "features": {"uid": "categorical"}, "labels": ["click"]},
        "model.encoders": [{"name": "embedding", "features": ["uid"], "dim": 4}],
        "tasks": {"click": {"type": "binary", "label": "click"}}}))
    fit = prep.read_parquet_fit

    def fit_then_append(pre, root, batch_rows):  # a writer adds a file while prepare reads
        out = fit(pre, root, batch_rows)
        pq.write_table(_table(5), data / "part-3.parquet")
        return out
    monkeypatch.setattr(prep, "read_parquet_fit", fit_then_append)
    with pytest.raises(DataError, match=r"(?s)files changed while mtlframe prepare read them \(nothing saved\).*"
                                        r"part-3.parquet: added"):
        prep.prepare(recipe)
    assert not (data / STATE_NAME).exists()


def test_memory_of_the_pass_does_not_grow_with_the_file(tmp_path, monkeypatch):
    """One file of 16 row groups, read in batches of one row group: the bytes pyarrow holds while
    a batch is fitted stay within a few row groups (pyarrow's default pre-buffering kept every
    row group read so far: the peak was the whole file)."""
    import mtlframe.prepare as prep
    from mtlframe.prepare import StreamingFit

    rng = np.random.default_rng(0)
    n, group = 16 * 65536, 65536
    table = pa.table({f"x{j}": rng.standard_normal(n) for j in range(8)} | {"y": rng.integers(0, 2, n)})
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=group)
    group_bytes = table.nbytes // 16
    del table
    held: list[int] = []
    update = StreamingFit.update

    def record(self, frame):
        held.append(pa.total_allocated_bytes())
        return update(self, frame)
    monkeypatch.setattr(StreamingFit, "update", record)
    pre = Preprocessor({f"x{j}": "numeric" for j in range(8)}, [LabelSpec("y", "y", "binary")])
    before = pa.total_allocated_bytes()
    fit_parquet(pre, tmp_path, batch_rows=group)
    assert len(held) == 16 and max(held) - before < 6 * group_bytes, (max(held) - before, group_bytes)
    assert held[-1] - held[0] < group_bytes      # flat from the first batch to the last
    assert prep.fit_parquet is fit_parquet


def test_prepare_of_a_dataset_that_is_not_parquet_names_the_key(tmp_path):
    """A CSV recipe: refused at data.dataset.name, not with pyarrow's 'magic bytes' message."""
    import mtlframe.prepare as prep
    from mtlframe.recipe import recipe_from_dict

    (tmp_path / "rows.csv").write_text("uid,click\n1,0\n2,1\n", encoding="utf-8")
    recipe = recipe_from_dict(tiny_recipe(**{
        "data.dataset": {"name": "csv", "path": str(tmp_path / "rows.csv"), "features": {"uid": "categorical"},
                         "labels": ["click"]},
        "model.encoders": [{"name": "embedding", "features": ["uid"], "dim": 4}],
        "tasks": {"click": {"type": "binary", "label": "click"}}}))
    with pytest.raises(RecipeError, match=r"data.dataset.name.*the dataset must be \{name: parquet, path: DIR\}, "
                                          r"not 'csv'"):
        prep.prepare(recipe)
