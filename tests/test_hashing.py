"""Hashed categorical features (``data.hash_buckets``) and per-column vocabulary cut-offs
(``data.min_count: {col: n}``, ``data.max_vocab``): the hash recomputed from its description alone,
the canonical form of a value, the collision report, the streamed fit equal to the in-memory one,
a trained checkpoint that predicts the same after reload and through the ONNX contract."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from mtlframe.errors import DataError, RecipeError
from mtlframe.preprocess import (HASH_KEY, LabelSpec, Preprocessor, collision_report, hash_codes, stable_hash)

M64 = (1 << 64) - 1


# -- the hash, written from its published description (no pandas, no mtlframe) -------------------------

def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & M64


def siphash24(key: bytes, msg: bytes) -> int:
    """SipHash-2-4 (Aumasson & Bernstein 2012), as the paper's pseudo-code gives it."""
    k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:16], "little")
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D, k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]

    def sipround() -> None:
        v[0] = (v[0] + v[1]) & M64; v[1] = _rotl(v[1], 13) ^ v[0]; v[0] = _rotl(v[0], 32)  # noqa: E702
        v[2] = (v[2] + v[3]) & M64; v[3] = _rotl(v[3], 16) ^ v[2]  # noqa: E702
        v[0] = (v[0] + v[3]) & M64; v[3] = _rotl(v[3], 21) ^ v[0]  # noqa: E702
        v[2] = (v[2] + v[1]) & M64; v[1] = _rotl(v[1], 17) ^ v[2]; v[2] = _rotl(v[2], 32)  # noqa: E702

    tail = len(msg) % 8
    for i in range(0, len(msg) - tail, 8):
        m = int.from_bytes(msg[i:i + 8], "little")
        v[3] ^= m
        sipround(), sipround()
        v[0] ^= m
    last = ((len(msg) & 0xFF) << 56) | int.from_bytes(msg[len(msg) - tail:], "little")
    v[3] ^= last
    sipround(), sipround()
    v[0] ^= last
    v[2] ^= 0xFF
    for _ in range(4):
        sipround()
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def _mul(x: int, c: str) -> int:
    return (x * int(c, 16)) & M64


def code_from_contract(entry: dict, text: str | None) -> int:
    """A hashed input's code from its ``preprocessor.json`` entry alone (a server's side)."""
    if text is None:
        return entry["missing_code"] if "missing_code" in entry else 0
    h = entry["hash"]
    x = siphash24(h["key"].encode(h["key_encoding"]), text.encode(h["encoding"]))
    for step in h["finalizer"].split(";"):  # "x ^= x >> 30", "x = x * 0x... mod 2^64"
        step = step.strip()
        if step.startswith("x ^= x >> "):
            x ^= x >> int(step.rsplit(" ", 1)[1])
        else:
            x = _mul(x, step.split("*")[1].split()[0])
    return 1 + x % h["num_buckets"]


def test_siphash_written_here_matches_the_papers_test_vector():
    # SipHash paper, appendix A: key 00..0f, message 00..0e -> a129ca6149be45e5
    assert siphash24(bytes(range(16)), bytes(range(15))) == 0xA129CA6149BE45E5


def test_stable_hash_is_the_documented_function_and_does_not_drift():
    from mtlframe.export import HASH_SPEC

    texts = ["7", "-3", "", "abc", "héllo wörld, longer than eight bytes", "user:123456789"]
    got = stable_hash(np.array(texts, dtype=object))
    entry = {"hash": {**HASH_SPEC, "num_buckets": 1 << 62}}
    for t, h in zip(texts, got.tolist()):
        assert 1 + h % (1 << 62) == code_from_contract(entry, t), t
    # pinned codes: a change of hash (pandas' key, the finalizer) would silently remap every
    # checkpoint's ids; this catches it
    assert hash_codes(pd.Series(["7", "-3", "12"]), 1000).tolist() == [353, 281, 366]
    assert HASH_KEY == "0123456789123456"


def test_canonical_form_an_int_and_a_string_id_are_one_id():
    want = [353, 281, 366]
    for s in [pd.Series([7, -3, 12]), pd.Series(["7", " -3 ", "12"]), pd.Series([7.0, -3.0, 12.0]),
              pd.Series([7, -3, 12], dtype="Int64"), pd.Series([7, "-3", 12.0], dtype=object),
              pd.Series(["7", "-3", "12"], dtype="category"), pd.Series(np.array([7, -3, 12], dtype=np.int32))]:
        assert hash_codes(s, 1000).tolist() == want, s.dtype
    # value by value: a float column holding 7.5 still writes 7.0 as "7" (the vocabulary path's
    # column-wide rule would write "7.0")
    assert hash_codes(pd.Series([7.0, 7.5, np.nan]), 1000)[[0, 2]].tolist() == [353, 0]
    # strings are taken as written: "7.0" and "007" are not the id 7; blanks and nulls are missing
    odd = hash_codes(pd.Series(["7.0", "007", "", "  ", None, True], dtype=object), 1000)
    assert 353 not in odd[:2] and odd[2:5].tolist() == [0, 0, 0]
    from mtlframe.export import HASH_SPEC

    entry = {"hash": {**HASH_SPEC, "num_buckets": 1000}}
    assert odd[[0, 1, 5]].tolist() == [code_from_contract(entry, t) for t in ("7.0", "007", "True")]


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"uid": [7, 8, 7, 9, 10, 11], "tags": ["a|b", " b ", "", None, "c|a", "d"],
                         "y": [0, 1, 0, 1, 1, 0]})


def test_hashed_feature_fit_transform_table_size_and_state():
    pre = Preprocessor({"uid": "categorical", "tags": "multi_categorical"}, [LabelSpec("y", "y", "binary")],
                       hash_buckets={"uid": 1000, "tags": 1000}, min_count=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 5 distinct ids in 1,000 buckets: no warning
        pre.fit(_frame())
    assert "uid" not in pre.vocab and "tags" not in pre.vocab  # no vocabulary, min_count does not apply
    out = pre.transform(_frame())
    entry = {"hash": {"key": HASH_KEY, "key_encoding": "ascii", "encoding": "utf-8", "num_buckets": 1000,
                      "finalizer": "x ^= x >> 30; x = x * 0xBF58476D1CE4E5B9 mod 2^64; x ^= x >> 27; "
                                   "x = x * 0x94D049BB133111EB mod 2^64; x ^= x >> 31"}}
    assert out["uid"].tolist() == [code_from_contract(entry, str(v)) for v in [7, 8, 7, 9, 10, 11]]
    assert out["uid"].dtype == torch.int32
    a, b, c, d = (code_from_contract(entry, t) for t in "abcd")
    assert out["tags"].tolist() == [[a, b], [b, 0], [0, 0], [0, 0], [c, a], [d, 0]]
    info = pre.feature_info()
    assert info["uid"].cardinality == 1001 and info["tags"].cardinality == 1001 and info["tags"].max_len == 2
    assert pre.reports["data"]["oov"]["tags"] == {"rows": 6, "oov": 0, "missing": 2}
    # 5 distinct ids -> expected share 1 - (1 - 1/1000)^4
    assert pre.hash_report["uid"]["distinct"] == 5 and not pre.hash_report["uid"]["estimated"]
    assert pre.hash_report["uid"]["expected_share"] == pytest.approx(1 - 0.999 ** 4, rel=1e-12)
    again = Preprocessor.from_state_dict(torch.load(_saved(pre.state_dict()), weights_only=True))
    for k, v in again.transform(_frame()).items():
        assert torch.equal(v, out[k]), k
    assert again.feature_info() == info


def _saved(obj):
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_collision_report_numbers_and_the_loud_warning():
    # 4 distinct values in 10 buckets: 1 - 0.9^3 = 27.1 % expected to share a bucket; 299 buckets for <= 1 %
    rep = collision_report(10, 4, 4)
    assert rep["expected_share"] == pytest.approx(0.271, abs=1e-12) and rep["buckets_for_1pct"] == 299
    assert collision_report(299, 4, 4)["expected_share"] <= 0.01 < collision_report(298, 4, 4)["expected_share"]
    # streamed: distinct estimated by linear counting from the buckets used: -N ln(1 - k/N)
    est = collision_report(1000, None, 394)
    assert est["estimated"] and est["distinct"] == round(-1000 * np.log(1 - 0.394)) == 501
    assert collision_report(10, None, 10)["distinct"] == round(10 * np.log(10))  # every bucket used
    frame = pd.DataFrame({"uid": np.arange(200), "y": np.arange(200) % 2})
    pre = Preprocessor({"uid": "categorical"}, [LabelSpec("y", "y", "binary")], hash_buckets={"uid": 100})
    with pytest.warns(UserWarning, match=r"HASH COLLISIONS: hashed feature 'uid': 200 distinct value\(s\) in 100 "
                                         r"buckets \(\d+ used\); expected share .*: 86\.\d%.*data.hash_buckets.uid "
                                         r"\(>= 19,8\d\d buckets for 1%\)"):
        pre.fit(frame)


def test_max_vocab_and_per_column_min_count():
    # counts: a 3, c 2, b 2, e 2, d 1; ties in first-appearance order: c, b, e
    values = ["c", "a", "b", "a", "c", "a", "b", "e", "e", "d"]
    frame = pd.DataFrame({"x": values, "z": values, "w": values, "y": [0, 1] * 5})
    feats = {"x": "categorical", "z": "categorical", "w": "multi_categorical"}
    pre = Preprocessor(feats, [LabelSpec("y", "y", "binary")], min_count={"z": 3}, max_vocab={"x": 2, "w": 3})
    pre.fit(frame)
    assert pre.vocab == {"x": ["a", "c"], "z": ["a"], "w": ["a", "c", "b"]}
    assert pre.transform(frame)["x"].tolist() == [2, 1, 0, 1, 2, 1, 0, 0, 0, 0]
    assert pre.feature_info()["x"].cardinality == 3 and pre.feature_info()["w"].cardinality == 5


def test_streamed_fit_equals_in_memory_fit_with_hashing_and_cut_offs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtlframe.prepare import fit_parquet

    rng = np.random.default_rng(1)
    n = 120
    uid = rng.integers(0, 400, n)
    item = [f" i{v} " for v in rng.integers(0, 25, n)]
    tags = ["|".join(f"t{t}" for t in rng.integers(0, 9, 1 + i % 3)) for i in range(n)]
    table = pa.table({"uid": pa.array(uid, pa.int64()), "item": pa.array(item), "tags": pa.array(tags),
                      "city": pa.array([f"c{v}" for v in rng.integers(0, 12, n)]),
                      "y": pa.array(rng.integers(0, 2, n), pa.int64())})
    (tmp_path / "d").mkdir()
    for i, (a, b) in enumerate([(0, 50), (50, 120)]):
        pq.write_table(table.slice(a, b - a), tmp_path / "d" / f"part-{i}.parquet")

    def pre():
        return Preprocessor({"uid": "categorical", "item": "categorical", "tags": "multi_categorical",
                             "city": "categorical"}, [LabelSpec("y", "y", "binary")], max_multi_len=4,
                            hash_buckets={"uid": 50, "tags": 64}, min_count={"item": 3}, max_vocab={"item": 6, "city": 5})

    frame = table.to_pandas()
    with pytest.warns(UserWarning, match="HASH COLLISIONS: hashed feature 'uid'"):
        ref = pre().fit(frame)
    with pytest.warns(UserWarning, match="HASH COLLISIONS: hashed feature 'uid': ~"):
        got, _ = fit_parquet(pre(), tmp_path / "d", batch_rows=16)
    assert got.vocab == ref.vocab and len(ref.vocab["item"]) == 6 and len(ref.vocab["city"]) == 5
    assert got.multi_len == ref.multi_len
    for col in ("uid", "tags"):  # buckets used: exact in both; distinct: exact in memory, estimated streamed
        assert got.hash_report[col]["used"] == ref.hash_report[col]["used"]
    assert ref.hash_report["uid"]["distinct"] == len(set(uid.tolist()))
    assert got.feature_info() == ref.feature_info()
    a, b = ref.transform(frame), got.transform(frame)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_recipe_keys_are_checked_at_their_key():
    from mtlframe.recipe import recipe_from_dict
    from mtlframe.testing import tiny_recipe

    feats = {"x_000": "numeric", "cat_0": "categorical", "hist": "sequence"}
    cfg = recipe_from_dict(tiny_recipe(**{"data.hash_buckets": {"x_000": 8, "cat_O": 8},
                                          "data.max_vocab": {"x_001": 3}})).config.data
    problems = dict(cfg.feature_key_problems(feats))
    assert problems["data.hash_buckets.x_000"].startswith("'x_000' is not a categorical or multi-categorical feature")
    assert "did you mean 'cat_0'?" in problems["data.hash_buckets.cat_O"]
    assert "data.max_vocab.x_001" in problems
    with pytest.raises(RecipeError, match=r"data.hash_buckets \(<recipe>\): 'cat_0' is in both data.hash_buckets and data.max_vocab"):
        recipe_from_dict(tiny_recipe(**{"data.hash_buckets": {"cat_0": 8}, "data.max_vocab": {"cat_0": 3}}))
    with pytest.raises(RecipeError, match=r"data.hash_buckets.*'cat_0': 0 is not a count >= 1"):
        recipe_from_dict(tiny_recipe(**{"data.hash_buckets": {"cat_0": 0}}))
    with pytest.raises(RecipeError, match=r"data.hash_buckets.*'cat_0': 9,223,372,036,854,775,807 buckets is more "
                                          r"than 2,147,483,646 \(2\^31 - 2\).*torchrec-embedding"):
        recipe_from_dict(tiny_recipe(**{"data.hash_buckets": {"cat_0": 2**63 - 1}}))
    recipe_from_dict(tiny_recipe(**{"data.hash_buckets": {"cat_0": 2**31 - 2}}))  # the largest accepted
    with pytest.raises(DataError, match=r"data.hash_buckets: 'x' is not a categorical"):
        Preprocessor({"x": "numeric"}, [], hash_buckets={"x": 4})


def test_a_hashed_checkpoint_predicts_the_same_after_reload_and_through_its_contract(tmp_path):
    pytest.importorskip("onnxruntime")
    from mtlframe.export import export_model, predict_outputs
    from mtlframe.recipe import recipe_from_dict
    from mtlframe.run import load_checkpoint, train
    from mtlframe.testing import tiny_recipe

    recipe = recipe_from_dict(tiny_recipe(**{"data.hash_buckets": {"cat_0": 7}, "data.dataset.num_rows": 400}))
    with pytest.warns(UserWarning, match=r"HASH COLLISIONS: hashed feature 'cat_0': 19 distinct value\(s\) in 7 buckets"):
        result = train(recipe, tmp_path / "run", progress=False)
    loaded = load_checkpoint(result.best_checkpoint)
    emb = next(m for m in loaded.model.modules() if isinstance(m, torch.nn.Embedding) and m.num_embeddings == 8)
    assert emb.num_embeddings == 8  # 7 buckets + row 0
    frame = pd.DataFrame({"cat_0": [3, "3", 3.0, None, 19], **{f"x_{i:03d}": [0.1] * 5 for i in range(8)}})
    before = predict_outputs(loaded, frame)
    after = predict_outputs(load_checkpoint(result.best_checkpoint), frame.copy())
    for t in before:
        np.testing.assert_array_equal(before[t], after[t])
        assert before[t][0] == before[t][1] == before[t][2]  # 3, "3", 3.0: one id
    res = export_model(result.best_checkpoint, "onnx", tmp_path / "exp", rows=20)
    spec = {i["name"]: i for i in json.loads((res.output / "preprocessor.json").read_text())["inputs"]}
    assert "vocabulary" not in spec["cat_0"] and spec["cat_0"]["hash"]["num_buckets"] == 7
    texts = ["3", "3", "3", None, "19"]  # the canonical texts, by the contract's "canonical" rule
    codes = [code_from_contract(spec["cat_0"], t) for t in texts]
    assert codes == loaded.preprocessor.transform(frame, with_labels=False)["cat_0"].tolist()


def test_a_ranking_id_feature_cannot_be_hashed():
    from mtlframe.recipe import recipe_from_dict
    from mtlframe.testing import tiny_recipe

    rec = tiny_recipe(**{"data.hash_buckets": {"cat_0": 8}},
                      ranking={"user_features": ["x_000"], "item_features": ["cat_0"]})
    with pytest.raises(RecipeError, match=r"data.hash_buckets.cat_0 \(<recipe>\): 'cat_0' is the ranking's item id "
                                          r"feature \(ranking.item_features\[0\]\)"):
        recipe_from_dict(rec)


def test_a_float_id_has_one_text_whatever_rows_it_is_read_with(tmp_path):
    """A vocabulary's text of 7.0 was decided by the whole column ("7.0" beside a 7.5, else "7"):
    predict on one row, a stream's batch or a prepared file without the 7.5 got another code."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtlframe.prepare import fit_parquet

    frame = pd.DataFrame({"c": [7.0, 8.0, 7.0, 7.5, 7.0, np.nan], "y": [0, 1, 0, 1, 1, 0]})
    pre = Preprocessor({"c": "categorical"}, [LabelSpec("y", "y", "binary")]).fit(frame)
    assert pre.vocab["c"] == ["7", "8", "7.5"]
    assert pre.transform(frame)["c"].tolist() == [1, 2, 1, 3, 1, 0]
    assert pre.transform(frame.iloc[[0]])["c"].tolist() == [1]  # alone: the same code
    request = pd.DataFrame({"c": pd.Series([7.0, "7", " 7.5 ", 8], dtype=object), "y": [0] * 4})  # a JSON request
    assert pre.transform(request)["c"].tolist() == [1, 1, 3, 2]
    (tmp_path / "d").mkdir()
    pq.write_table(pa.Table.from_pandas(frame.iloc[:3], preserve_index=False), tmp_path / "d" / "a.parquet")
    pq.write_table(pa.Table.from_pandas(frame.iloc[3:], preserve_index=False), tmp_path / "d" / "b.parquet")
    got, _ = fit_parquet(Preprocessor({"c": "categorical"}, [LabelSpec("y", "y", "binary")]), tmp_path / "d")
    assert got.vocab == pre.vocab
    # uint64 ids beyond int64 are compared as text, not wrapped to negative numbers
    big = pd.DataFrame({"c": np.array([2**64 - 1, 7, 7], dtype=np.uint64), "y": [0, 1, 0]})
    ids = Preprocessor({"c": "categorical"}, [LabelSpec("y", "y", "binary")]).fit(big)
    assert ids.vocab["c"] == ["7", "18446744073709551615"]


def test_cli_prepare_reports_collisions_and_a_state_with_other_buckets_is_named(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from mtlframe.cli import main
    from mtlframe.prepare import STATE_NAME, load_prepared, recipe_preprocessor
    from mtlframe.recipe import load_recipe
    from mtlframe.testing import tiny_recipe

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    uid = rng.integers(0, 1000, 300)
    pq.write_table(pa.table({"uid": pa.array(uid, pa.int64()),
                             "price": pa.array(rng.normal(size=300)), "click": pa.array(rng.integers(0, 2, 300))}),
                   data / "part-0.parquet")
    recipe = tiny_recipe(**{"data.dataset": {"name": "parquet", "path": str(data),
                                             "features": {"uid": "categorical", "price": "numeric"},
                                             "labels": ["click"]},
                            "model.encoders": [{"name": "embedding", "features": ["uid"], "dim": 4},
                                               {"name": "numeric", "features": ["price"]}],
                            "tasks": {"click": {"type": "binary", "label": "click"}}})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.warns(UserWarning, match="HASH COLLISIONS"):
        assert main(["prepare", str(path), "data.hash_buckets.uid=512"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    distinct = len(set(uid.tolist()))
    pre = load_prepared(data / STATE_NAME, data)
    used = pre.hash_report["uid"]["used"]
    assert pre.feature_info()["uid"].cardinality == 513 and "uid" not in pre.vocab
    assert (f"hashed feature 'uid': ~{round(-512 * np.log(1 - used / 512)):,} distinct value(s) in 512 buckets "
            f"({used} used)") in out
    assert abs(pre.hash_report["uid"]["distinct"] - distinct) < 0.1 * distinct  # linear counting, within 10 %
    other, _ = recipe_preprocessor(load_recipe(path, ["data.hash_buckets.uid=1024"]))
    with pytest.raises(DataError, match=r"data.hash_buckets: prepared with \{'uid': 512\}, the recipe has \{'uid': 1024\}"):
        load_prepared(data / STATE_NAME, data, expect=other)
    # a per-column key naming a column of another type is refused at its key (data.clip was dropped silently)
    assert main(["prepare", str(path), "data.clip.uid=[0, 1]"]) == 2
    assert "data.clip.uid" in capsys.readouterr().err
