"""``mtlframe export``: ONNX / TorchScript graphs with named outputs, the preprocessor contract read
back without mtlframe, the self-check, refusals (docs/export.md)."""
from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("onnxruntime")

RECIPE = """
seed: 3
data:
  dataset: {{name: csv, path: {csv}, features: {{user: categorical, genre: categorical, age: numeric,
            tags: multi_categorical, hist: sequence, title: text, item: categorical}},
            labels: [click, rating, kind]}}
  split: {{name: random, val: 0.1, test: 0.2}}
  batch_size: 32
  fill_missing: {{age: median}}
  clip: {{age: [18, 70]}}
  sequences: {{hist: {{max_len: 4, share_with: item}}}}
tasks:
{tasks}
model:
  encoders:
    - {{name: embedding, features: [user, genre, tags, item], dim: 4}}
    - {{name: numeric, features: [age]}}
    - {{name: bag-of-words, features: [title], dim: 4, num_buckets: 64, max_tokens: 12}}
    - {{name: sequence-pool, features: [hist], dim: 4}}
  backbone: {{name: mmoe, num_experts: 2, expert_hidden: [8]}}
  tower: {{name: mlp, hidden: [4]}}
trainer: {{max_epochs: 1}}
logger: {{name: none}}
checkpoint: {{monitor: train/loss_epoch}}
"""
TASKS = {"click": "  click: {type: binary, label: click}",
         "rating": "  rating: {type: regression, label: rating}",
         "kind": "  kind: {type: multiclass, label: kind}"}
WORDS = ["red", "blue", "dress", "fits", "well", "too", "small", "don't", "love", "it"]


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    f = pd.DataFrame({"user": rng.integers(0, 25, n), "genre": rng.choice(["a", "b", "c", " d "], n),
                      "age": rng.integers(15, 80, n).astype(float), "item": rng.integers(0, 12, n)})
    f.loc[rng.random(n) < 0.1, "age"] = np.nan
    f["tags"] = ["|".join(rng.choice(["x", "y", "z", "w"], rng.integers(0, 4), replace=False)) for _ in range(n)]
    f["hist"] = ["|".join(map(str, rng.integers(0, 14, rng.integers(0, 7)))) for _ in range(n)]
    f["title"] = [" ".join(rng.choice(WORDS, rng.integers(0, 6))).capitalize() for _ in range(n)]
    f["click"] = (rng.random(n) < 0.4).astype(float)
    f["rating"] = rng.normal(3, 1, n).round(1)
    f["kind"] = rng.integers(0, 3, n)
    return f


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """One trained checkpoint (tasks click, rating, kind) and a copy whose saved recipe lists the
    tasks in another order (kind, click, rating): the model is rebuilt in that order."""
    from mtlframe.recipe import load_recipe
    from mtlframe.run import train

    folder = tmp_path_factory.mktemp("export")
    _frame(240, 0).to_csv(folder / "d.csv", index=False)
    (folder / "a.yaml").write_text(RECIPE.format(csv=folder / "d.csv", tasks="\n".join(TASKS.values())))
    first = train(load_recipe(folder / "a.yaml"), folder / "a", progress=False).best_checkpoint
    state = torch.load(first, map_location="cpu", weights_only=True)
    tasks = state["mtlframe"]["recipe"]["tasks"]
    state["mtlframe"]["recipe"]["tasks"] = {t: tasks[t] for t in ("kind", "click", "rating")}
    torch.save(state, folder / "b.ckpt")
    return {"a": (first, ["click", "rating", "kind"]), "b": (folder / "b.ckpt", ["kind", "click", "rating"])}


@pytest.fixture(scope="module")
def exported(ckpts, tmp_path_factory):
    from mtlframe.export import export_model

    root = tmp_path_factory.mktemp("exported")
    return {name: export_model(ck, "onnx", root / name, rows=40) for name, (ck, _) in ckpts.items()}


def _predict(ckpt, frame):
    from mtlframe.export import predict_outputs
    from mtlframe.run import load_checkpoint

    return predict_outputs(load_checkpoint(ckpt), frame)


# -- a server's side: raw rows -> inputs from preprocessor.json alone (no mtlframe import) -----------

def _vocab(entry: dict, folder: Path) -> dict:
    if "values" in entry:
        values = entry["values"]
    else:
        import pyarrow.parquet as pq
        values = pq.read_table(folder / entry["file"]).column("value").to_pylist()
    return {v: i for i, v in enumerate(values)}


def _text_key(v, value_type: str):
    """A raw categorical cell as the contract compares it: None when missing."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, float) and v == int(v):
        v = int(v)
    if value_type == "int":
        try:
            return int(str(v).strip())
        except ValueError:
            return None
    s = str(v).strip()
    return s or None


def map_from_contract(folder: Path, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    spec = json.loads((folder / "preprocessor.json").read_text())
    feeds = {}
    for inp in spec["inputs"]:
        kind, col = inp["kind"], inp.get("column")
        if kind == "text_vector":      # looked up in text/<input>.parquet by the caller
            continue
        cells = frame[col].tolist() if col else None
        if kind == "categorical":
            voc, vt = _vocab(inp["vocabulary"], folder), inp["vocabulary"]["value_type"]
            feeds[inp["name"]] = np.array([voc.get(_text_key(v, vt), -1) + 1 for v in cells], dtype=np.int64)
        elif kind == "numeric":
            out = []
            for v in cells:
                x = float(v) if v is not None and v == v and not np.isinf(float(v)) else inp["fill"]
                if x is None:
                    raise ValueError(f"{col}: missing value and no fill")
                if inp["clip"]:
                    x = min(max(x, inp["clip"][0]), inp["clip"][1])
                out.append((x - inp["mean"]) / inp["std"])
            feeds[inp["name"]] = np.array(out, dtype=np.float32)
        elif kind in ("multi_categorical", "sequence", "text_hashed"):
            rows = []
            for v in cells:
                text = "" if v is None or (isinstance(v, float) and v != v) else str(v)
                if kind == "text_hashed":
                    tok = inp["tokenizer"]
                    words = re.findall(tok["token_regex"], text.lower())
                    toks = list(words)
                    for n in range(2, tok["ngrams"] + 1):
                        toks += [tok["ngram_join"].join(words[i:i + n]) for i in range(len(words) - n + 1)]
                    h = inp["hash"]
                    rows.append([zlib.crc32((h["salt"] + t).encode(h["encoding"])) % h["num_buckets"] + 1
                                 for t in toks[:inp["max_tokens"]]])
                    continue
                voc = _vocab(inp["vocabulary"], folder)
                vt = inp["vocabulary"]["value_type"]
                parts = [p.strip() for p in text.split(inp["separator"])] if text.strip() else []
                codes = [0 if p == "" else voc.get(_text_key(p, vt), -1) + 2 for p in parts]
                if kind == "sequence":
                    rows.append(codes[-inp["max_len"]:])
                else:
                    rows.append([c for c in codes[:inp["max_len"]] if c])
            width = inp["max_len"] if kind == "sequence" else max(1, max(map(len, rows)))
            arr = np.zeros((len(rows), width), dtype=np.int64)
            for i, r in enumerate(rows):
                if r:
                    if inp["padding"] == "left":
                        arr[i, width - len(r):] = r
                    else:
                        arr[i, :len(r)] = r
            feeds[inp["name"]] = arr
        else:
            raise ValueError(f"kind {kind} not handled by this test server")
    return feeds


def _run_onnx(path: Path, feeds: dict, shuffle: bool = True) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = list(feeds)[::-1] if shuffle else list(feeds)    # feed order does not matter: inputs are named
    outs = sess.run(None, {k: feeds[k] for k in names})
    return dict(zip([o.name for o in sess.get_outputs()], outs))


# -- tests --------------------------------------------------------------------------------------------

def test_onnx_outputs_are_named_after_the_tasks_in_recipe_order_and_match_predict_by_name(ckpts, exported):
    raw = _frame(60, 7)
    for name, (ckpt, order) in ckpts.items():
        res = exported[name]
        spec = json.loads((res.output / "preprocessor.json").read_text())
        assert res.outputs == order and spec["output_order"] == order
        assert [o["name"] for o in spec["outputs"]] == order
        want = _predict(ckpt, raw)
        got = _run_onnx(res.model_file, map_from_contract(res.output, raw))
        assert list(got) == order                                  # the ONNX file's own output names
        for t in order:                                            # matched by name, not position
            assert got[t].shape == want[t].shape
            assert np.abs(got[t] - want[t]).max() < 1e-5, t
        kind = next(o for o in spec["outputs"] if o["name"] == "kind")
        assert kind["classes"] == ["0", "1", "2"] and kind["shape"] == ["batch", 3]
        assert np.allclose(got["kind"].sum(1), 1.0, atol=1e-5)
        assert res.max_abs_diff.keys() == set(order) and max(res.max_abs_diff.values()) < 1e-5


def test_contract_maps_raw_values_as_documented(exported):
    folder = exported["a"].output
    spec = {i["name"]: i for i in json.loads((folder / "preprocessor.json").read_text())["inputs"]}
    assert [i for i in spec] == ["user", "genre", "tags", "item", "age", "title", "hist"]
    assert spec["genre"]["vocabulary"]["value_type"] == "string" and spec["user"]["vocabulary"]["size"] == 25
    assert spec["age"]["clip"] == [18.0, 70.0] and spec["age"]["fill"] is not None
    assert spec["hist"]["padding"] == "left" and spec["hist"]["max_len"] == 4 and spec["hist"]["share_with"] == "item"
    assert spec["title"]["hash"]["salt"] == "title\x00" and spec["title"]["hash"]["num_buckets"] == 64
    raw = pd.DataFrame({"user": [3, 999], "genre": ["d", None], "age": [np.nan, 200.0], "item": [5, -1],
                        "tags": ["x|nope", ""], "hist": ["1|2|3|4|5", ""], "title": ["Too small", None]})
    feeds = map_from_contract(folder, raw)
    genre = spec["genre"]["vocabulary"]["values"]
    assert feeds["genre"].tolist() == [genre.index("d") + 1, 0]    # " d " stripped in training; missing -> 0
    assert feeds["user"][1] == 0                                     # unseen -> OOV code 0
    z_high = (70.0 - spec["age"]["mean"]) / spec["age"]["std"]       # 200 clipped to 70
    assert feeds["age"][1] == pytest.approx(z_high, rel=1e-6)
    assert feeds["hist"][1].tolist() == [0, 0, 0, 0] and feeds["hist"][0][0] != 0  # 4 most recent of 5
    expected = [zlib.crc32(("title\x00" + t).encode()) % 64 + 1 for t in ("too", "small", "too small")]
    assert spec["title"]["max_tokens"] == 12
    assert feeds["title"][0, :3].tolist() == expected and feeds["title"][1].tolist() == [0, 0, 0]
    from mtlframe.export import export_inputs, graph_inputs
    from mtlframe.run import load_checkpoint

    loaded = load_checkpoint(json.loads((folder / "export.json").read_text())["checkpoint"])
    ours = export_inputs(loaded, raw, graph_inputs(loaded))
    for k, v in feeds.items():                                       # the JSON-only mapping == mtlframe's
        assert np.array_equal(ours[k][:, :v.shape[1]] if v.ndim == 2 else ours[k], v), k


@pytest.mark.parametrize("batch", [1, 7, 1024])
def test_onnx_runs_at_dynamic_batch_sizes(ckpts, exported, batch):
    ckpt, order = ckpts["b"]
    raw = _frame(batch, 11)
    got = _run_onnx(exported["b"].model_file, map_from_contract(exported["b"].output, raw))
    want = _predict(ckpt, raw)
    for t in order:
        assert got[t].shape[0] == batch and np.abs(got[t] - want[t]).max() < 1e-5, t


def test_a_categorical_code_outside_its_vocabulary_is_read_as_out_of_vocabulary(ckpts, exported):
    """The categorical inputs share one table: a code past a feature's vocabulary read the next
    feature's rows, and -1 the table's last row -- a server's off-by-one gave other numbers silently."""
    res = exported["b"]
    spec = json.loads((res.output / "preprocessor.json").read_text())
    feeds = map_from_contract(res.output, _frame(4, 11))
    for inp in (i for i in spec["inputs"] if i["kind"] == "categorical"):
        size = inp["vocabulary"]["size"]
        bad = dict(feeds, **{inp["name"]: np.array([size + 1, -1, size, 0], dtype=np.int64)})
        oov = dict(feeds, **{inp["name"]: np.array([0, 0, size, 0], dtype=np.int64)})   # size: the last entry
        got, want = _run_onnx(res.model_file, bad), _run_onnx(res.model_file, oov)
        for t in want:
            np.testing.assert_array_equal(got[t], want[t], err_msg=f"{inp['name']} -> {t}")


def test_torchscript_export_gives_named_outputs_equal_to_predict(ckpts, tmp_path):
    from mtlframe.export import export_model

    ckpt, order = ckpts["a"]
    res = export_model(ckpt, "torchscript", tmp_path / "ts", rows=30)
    module = torch.jit.load(str(res.model_file))
    raw = _frame(9, 5)
    feeds = map_from_contract(res.output, raw)
    spec = json.loads((res.output / "preprocessor.json").read_text())
    out = module(*[torch.from_numpy(feeds[k]) for k in spec["input_order"]])   # no gradients kept
    want = _predict(ckpt, raw)
    assert set(out) == set(order)
    for t in order:
        assert np.abs(out[t].numpy() - want[t]).max() < 1e-5, t


def test_a_self_check_mismatch_fails_the_export_and_leaves_nothing(ckpts, tmp_path):
    import onnx
    from onnx import numpy_helper

    from mtlframe.cli import main
    from mtlframe.export import ExportError, export_model

    def corrupt(path: Path) -> None:   # shift the weights of the last layer of some tower
        model = onnx.load(str(path))
        init = [i for i in model.graph.initializer if "towers.rating" in i.name and i.name.endswith("bias")][-1]
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 0.5, init.name))
        onnx.save(model, str(path))

    ckpt, _ = ckpts["a"]
    with pytest.raises(ExportError, match=r"task 'rating'.*differs from mtlframe predict by 0\.5"):
        export_model(ckpt, "onnx", tmp_path / "bad", rows=20, _corrupt=corrupt)
    assert list(tmp_path.iterdir()) == []                            # no output, no temp folder
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "export.json").write_text("{}")            # an earlier export
    (tmp_path / "old" / "keep.txt").write_text("x")
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(tmp_path / "old"), "--rows", "5"]) == 2
    with pytest.raises(ExportError):                                 # --overwrite keeps the old one on failure
        export_model(ckpt, "onnx", tmp_path / "old", rows=20, overwrite=True, _corrupt=corrupt)
    assert [p.name for p in tmp_path.iterdir()] == ["old"] and (tmp_path / "old" / "keep.txt").exists()


def test_overwrite_replaces_only_an_earlier_export_never_the_run_folder(tmp_path):
    """``--output RUN --overwrite`` deleted the whole run folder, the exported checkpoint with it."""
    from mtlframe.errors import MTLFrameError
    from mtlframe.export import export_model

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "best.ckpt"
    ckpt.write_bytes(b"weights")
    (run / "metrics.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    for output, why in ((run, "holds the checkpoint being exported"),
                        (run / "checkpoints", "holds the checkpoint being exported"),
                        (ckpt, "is the checkpoint being exported"),
                        (tmp_path / "notes.txt", "is a file, not an export folder"),
                        (tmp_path, "holds the checkpoint being exported")):
        with pytest.raises(MTLFrameError, match=re.escape(f"--output {output} {why}")):
            export_model(ckpt, "onnx", output, overwrite=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("a\n1\n")
    with pytest.raises(MTLFrameError, match=r"not an earlier export \(no export.json\)"):
        export_model(ckpt, "onnx", other, overwrite=True)
    assert ckpt.read_bytes() == b"weights" and (run / "metrics.json").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine" and (other / "data.csv").exists()


def test_unexportable_components_are_refused_by_recipe_key():
    from torch import nn

    from mtlframe.encoders.base import Encoder
    from mtlframe.export import ExportError, graph_inputs

    class TextEnc(nn.Module):
        features = ["review"]
        mode = "finetune"
    TextEnc.__module__ = "mtlframe_text.encoder"

    class Frozen(TextEnc):
        mode = "frozen"
        segments = "sentences"
    Frozen.__module__ = "mtlframe_text.encoder"

    class Hashing(Encoder):
        features = ["city"]

        def featurize(self, raw):
            return {}

    loaded = SimpleNamespace(
        preprocessor=SimpleNamespace(features={}, sequences={}), encoders=[TextEnc(), Frozen(), Hashing()],
        recipe=SimpleNamespace(config=SimpleNamespace(model=SimpleNamespace(
            encoders=[{"name": "text"}, {"name": "text"}, {"name": "city-hash"}]))))
    with pytest.raises(ExportError) as info:
        graph_inputs(loaded)
    msg = str(info.value)
    assert "model.encoders[0] (text, features review) is a text encoder in fine-tune mode" in msg
    assert "model.encoders[1] (text, features review) is a frozen text encoder with sentence segments" in msg
    assert "model.encoders[2] (city-hash, features city)" in msg and "featurize" in msg


def test_export_speed_section_times_the_three_forms_and_renders_a_table(ckpts, tmp_path, monkeypatch):
    from benchmarks import export_speed

    monkeypatch.setattr(export_speed, "CALLS", {1: 3, 1024: 2})
    ckpt, order = ckpts["a"]
    res = export_speed.measure(Path(ckpt), tmp_path, threads=1, repeats=1)
    assert res["tasks"] == order and set(res["batches"]) == {"1", "1024"}
    for b, r in res["batches"].items():
        assert set(r["latency_ms"]) == {"torch", "torchscript", "onnxruntime"}
        assert all(v > 0 for v in r["latency_ms"].values())
        assert r["rows_per_s"]["onnxruntime"] == pytest.approx(int(b) / r["latency_ms"]["onnxruntime"] * 1e3)
        assert r["onnx_speedup_vs_torch"] == pytest.approx(r["latency_ms"]["torch"] / r["latency_ms"]["onnxruntime"])
    lines = export_speed.export_markdown({"threads": 1, "repeats": 1, "models": {"tiny": res}})
    assert sum(line.startswith("| tiny |") for line in lines) == 2


def test_frozen_text_is_exported_as_precomputed_vectors_and_matches_predict(tmp_path, monkeypatch):
    """A frozen `text` encoder (mtlframe-text): its LM vector is a graph input; the vectors of the
    data's texts ship in text/<input>.parquet; looked up from there they give predict's numbers."""
    import importlib.util

    import pyarrow.parquet as pq

    pytest.importorskip("mtlframe_text")
    from mtlframe.export import export_model
    from mtlframe.recipe import load_recipe
    from mtlframe.run import train

    spec = importlib.util.spec_from_file_location(
        "text_conftest", Path(__file__).resolve().parents[1] / "plugins/mtlframe-text/tests/conftest.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    bert = helpers.make_tiny_bert(tmp_path / "bert", layers=1, hidden=16)
    monkeypatch.setenv("MTLFRAME_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    words = list(helpers.WORDS)
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"item": rng.integers(0, 10, 120),
                          "title": [" ".join(rng.choice(words, 3)) for _ in range(120)],
                          "click": (rng.random(120) < 0.5).astype(float)})
    frame.to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "r.yaml").write_text(f"""
data:
  dataset: {{name: csv, path: {tmp_path / 'd.csv'}, features: {{item: categorical, title: text}}, labels: [click]}}
  split: {{name: random, val: 0.1, test: 0.2}}
tasks:
  click: {{type: binary, label: click}}
model:
  encoders:
    - {{name: embedding, features: [item], dim: 4}}
    - {{name: text, features: [title], model: {bert}, dim: 3, normalize: true, progress: false}}
  backbone: {{name: shared-bottom, hidden: [4]}}
trainer: {{max_epochs: 1}}
logger: {{name: none}}
checkpoint: {{monitor: train/loss_epoch}}
""")
    ckpt = train(load_recipe(tmp_path / "r.yaml"), tmp_path / "run", progress=False).best_checkpoint
    res = export_model(ckpt, "onnx", tmp_path / "out", rows=20)
    contract = json.loads((res.output / "preprocessor.json").read_text())
    text = next(i for i in contract["inputs"] if i["kind"] == "text_vector")
    assert text["name"] == "text:title" and text["shape"] == ["batch", 16] and text["normalized_in_graph"] is True
    table = pq.read_table(res.output / text["vectors"]["file"]).to_pandas()
    assert set(frame["title"]) <= set(table["text"])               # every text of the data is precomputed
    vec = dict(zip(table["text"], table["vector"]))
    raw = frame.sample(9, random_state=0).reset_index(drop=True)
    feeds = {"item": map_from_contract(res.output, raw.drop(columns=["title"]))["item"],
             "text:title": np.stack([vec[t.strip()] for t in raw["title"]]).astype(np.float32)}
    got = _run_onnx(res.model_file, feeds)
    assert np.abs(got["click"] - _predict(ckpt, raw)["click"]).max() < 1e-5
    assert export_model(ckpt, "torchscript", tmp_path / "ts", rows=20).max_abs_diff["click"] < 1e-5


def test_cli_export_with_rows_from_a_file(ckpts, tmp_path, capsys):
    from mtlframe.cli import main

    ckpt, order = ckpts["a"]
    _frame(6, 3).drop(columns=["click", "rating", "kind"]).to_csv(tmp_path / "rows.csv", index=False)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--output", str(tmp_path / "ts"),
                 "--rows", "5", "--data", str(tmp_path / "rows.csv")]) == 0
    out = capsys.readouterr().out
    assert "model.pt (7 inputs, outputs click, rating, kind)" in out and "self-check on 5 held-out rows passed" in out
    meta = json.loads((tmp_path / "ts" / "export.json").read_text())
    assert meta["self_check"]["rows"] == 5 and meta["self_check"]["source"] == str(tmp_path / "rows.csv")
    assert sorted(p.name for p in (tmp_path / "ts").iterdir()) == ["export.json", "model.pt", "preprocessor.json"]


def test_missing_onnx_packages_name_the_extra(monkeypatch, tmp_path):
    import sys

    from mtlframe.errors import MTLFrameError
    from mtlframe.export import _write_onnx, onnx_session

    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MTLFrameError, match=r"pip install 'mtlframe\[export\]'"):
        _write_onnx(None, [], tmp_path / "m.onnx", ())
    with pytest.raises(MTLFrameError, match=r"pip install 'mtlframe\[export\]'"):
        onnx_session(tmp_path / "m.onnx")


def test_a_data_dependent_branch_fails_the_self_check_and_names_the_line(ckpts, tmp_path, monkeypatch):
    from mtlframe.export import ExportError, export_model
    from mtlframe.model import MultiTaskModel

    forward = MultiTaskModel.forward

    def branching(self, batch):   # the example inputs (zeros) take the other branch than real rows
        out = forward(self, batch)
        if bool((batch["num:age"] == 0).all()):
            return {k: v + 1 for k, v in out.items()}
        return out

    monkeypatch.setattr(MultiTaskModel, "forward", branching)
    with pytest.raises(ExportError) as info:
        export_model(ckpts["a"][0], "torchscript", tmp_path / "x", rows=10)
    msg = str(info.value)
    assert "task 'click'" in msg and "nothing was written" in msg
    assert "The tracer saw Python code that depends on the data" in msg and "test_export.py:" in msg
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("edit", ["missing", "extra", "renamed", "shape"])
def test_a_checkpoint_whose_weights_do_not_fit_its_model_is_refused_naming_the_keys(ckpts, tmp_path, edit):
    """A table left out of (or added to, renamed in, reshaped in) a checkpoint is an error naming
    the key and the likely cause -- never a model loaded with random weights for it."""
    from mtlframe.errors import CheckpointError
    from mtlframe.run import load_checkpoint

    state = torch.load(ckpts["a"][0], map_location="cpu", weights_only=True)
    sd = state["state_dict"]
    table = next(k for k in sd if k.startswith("model.encoders.0.") and k.endswith("weight"))
    if edit == "missing":
        del sd[table]
    elif edit == "extra":
        sd["model.encoders.0.extra.weight"] = torch.zeros(3, 4)
    elif edit == "renamed":
        sd[table.replace("model.encoders.0.", "model.encoders.0.old_")] = sd.pop(table)
    else:
        sd[table] = torch.zeros(sd[table].shape[0] + 1, sd[table].shape[1])
    state["mtlframe"]["providers"] = {**state["mtlframe"]["providers"], "encoder:embedding": "mtlframe 0.0.1"}
    torch.save(state, tmp_path / "edited.ckpt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "edited.ckpt")
    msg = str(err.value)
    short = table[len("model."):]
    assert str(tmp_path / "edited.ckpt") in msg
    assert {"missing": f"weights the checkpoint lacks (they would keep random initial values): {short}",
            "extra": "weights the model has no place for: encoders.0.extra.weight",
            "renamed": "weights the checkpoint lacks", "shape": f"size mismatch for {short}"}[edit] in msg
    if edit == "renamed":
        assert short.replace("encoders.0.", "encoders.0.old_") in msg and f"lacks (they would keep random " \
            f"initial values): {short}" in msg
    assert "encoder:embedding: mtlframe 0.0.1 then" in msg   # the likely cause: another version


def test_an_unedited_checkpoint_loads_its_weights_exactly(ckpts):
    from mtlframe.run import load_checkpoint

    state = torch.load(ckpts["a"][0], map_location="cpu", weights_only=True)["state_dict"]
    loaded = load_checkpoint(ckpts["a"][0]).model.state_dict()
    assert loaded and all(torch.equal(v, state["model." + k]) for k, v in loaded.items())
