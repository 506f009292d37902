"""``mtlframe serve``: predictions equal ``predict``'s, dynamic batching batches, bad requests get a
4xx naming the field (and do not disturb the good requests of their batch), ``/recommend`` equals
``mtlframe recommend``, ``/health``, a real uvicorn on a loopback port. One tiny ranking checkpoint."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

RECIPE = """
data:
  dataset: {{name: csv, path: {csv}, features: {{user: categorical, age: numeric, item: categorical,
            genre: categorical}}, labels: [watch, like], user: user, item: item, timestamp: ts}}
  split: {{name: time, val: 0.1, test: 0.1}}
  batch_size: 64
  sampler: {{name: uniform-negatives, task: watch, item_features: [item, genre], user_feature: user, ratio: 1}}
ranking: {{user_features: [user, age], item_features: [item, genre], rank_by: {{watch: 1.0, like: 0.5}}, candidates: 8}}
tasks:
  watch: {{type: retrieval, label: watch, dim: 8}}
  like: {{type: binary, label: like}}
model:
  encoders: [{{name: embedding, features: [user, item, genre], dim: 4}}, {{name: numeric, features: [age]}}]
  backbone: {{name: shared-bottom, hidden: [8]}}
trainer: {{max_epochs: 1}}
logger: {{name: none}}
checkpoint: {{monitor: train/loss_epoch}}
"""

ROWS = [{"user": 3, "age": 23.0, "item": 7, "genre": "g3"},
        {"user": 5, "age": 41.5, "item": 12, "genre": "g0"},
        {"user": 77777, "age": 30, "item": 2, "genre": "new-genre"}]   # unseen user and genre: OOV


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, toy_ranking_log):
    from mtlframe.recipe import load_recipe
    from mtlframe.run import train

    folder = tmp_path_factory.mktemp("serve")
    toy_ranking_log().to_csv(folder / "d.csv", index=False)
    (folder / "r.yaml").write_text(RECIPE.format(csv=folder / "d.csv"))
    best = train(load_recipe(folder / "r.yaml"), folder / "run", progress=False).best_checkpoint
    # the same model without its ranking: section (a checkpoint that cannot /recommend): its binary task only
    saved = torch.load(best, map_location="cpu", weights_only=True)
    for section, key in (("", "ranking"), ("tasks", "watch"), ("data", "sampler")):
        (saved["mtlframe"]["recipe"][section] if section else saved["mtlframe"]["recipe"]).pop(key)
    # and without the removed task's weights (its two-tower retrieval head): a checkpoint's weights
    # must fit the model its recipe builds
    saved["state_dict"] = {k: v for k, v in saved["state_dict"].items() if not k.startswith("model.retrieval.watch.")}
    torch.save(saved, folder / "plain.ckpt")
    saved["mtlframe"]["preprocessor"]["fill"] = {"age": 30.0}   # as if trained with data.fill_missing: {age: 30}
    torch.save(saved, folder / "filled.ckpt")
    return folder, best, folder / "plain.ckpt", folder / "filled.ckpt"


@pytest.fixture(scope="module")
def app(ckpt):
    from mtlframe.serve import build_server

    return build_server(ckpt[1], max_batch_size=16, batch_timeout=0.2)


def _call(app, requests, timeout=20.0):
    """Send ``[(method, path, body)]`` concurrently to the in-process app; the responses in order."""
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=timeout) as client:
            async def one(method, path, body):
                content = body if isinstance(body, bytes) else json.dumps(body).encode()
                return await client.request(method, path, content=content,
                                            headers={"content-type": "application/json"})
            return await asyncio.wait_for(asyncio.gather(*(one(*r) for r in requests)), timeout)
    return asyncio.run(go())


def test_predict_equals_predict_frame_with_oov_report_for_one_row_and_a_list(ckpt, app, tmp_path):
    from mtlframe.run import load_checkpoint, predict_frame, read_table

    pd.DataFrame(ROWS).to_csv(tmp_path / "rows.csv", index=False)
    report: dict = {}
    want = predict_frame(load_checkpoint(ckpt[1]), read_table(tmp_path / "rows.csv"), report=report)
    many, one = _call(app, [("POST", "/predict", ROWS), ("POST", "/predict", ROWS[1])])
    assert many.status_code == 200 and one.status_code == 200, (many.text, one.text)
    got = pd.DataFrame(many.json()["predictions"])
    assert list(got.columns) == ["watch", "like"]
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-6, atol=1e-7)
    assert one.json()["predictions"] == [many.json()["predictions"][1]]
    # the OOV report of predict: one row of three with an unseen user, one with an unseen genre
    assert many.json()["oov"] == {"user": 1, "genre": 1}
    assert {c: r["oov"] for c, r in report["oov"].items() if r["oov"]} == {"user": 1, "genre": 1}
    assert any("feature 'genre': 1 of 3 rows" in w for w in many.json()["warnings"])
    assert one.json()["oov"] == {} and one.json()["warnings"] == []


def test_concurrent_requests_share_one_model_call_and_each_gets_its_own_rows(ckpt, app):
    from mtlframe.serve import build_server

    stats = app.state.mtlframe.batcher.stats
    before = (stats.calls, stats.requests)
    empty_genre = {**ROWS[2], "genre": None}    # a missing category: not counted as out-of-vocabulary
    bodies = [ROWS[0], ROWS[1:], ROWS[2], ROWS, empty_genre]
    out = _call(app, [("POST", "/predict", b) for b in bodies])
    assert [r.status_code for r in out] == [200] * 5
    assert (stats.calls - before[0], stats.requests - before[1]) == (1, 5)    # five requests, one forward pass
    assert stats.sizes[-1] == 5 and stats.rows >= 8
    whole = out[3].json()["predictions"]
    assert out[0].json()["predictions"] == [whole[0]]
    assert out[1].json()["predictions"] == whole[1:]
    assert out[2].json()["predictions"] == [whole[2]]
    # each request's own out-of-vocabulary report, though they were preprocessed together
    assert [r.json()["oov"] for r in out] == [{}, {"user": 1, "genre": 1}, {"user": 1, "genre": 1},
                                              {"user": 1, "genre": 1}, {"user": 1}]
    # max_batch_size 1: no batching, one call per request
    single = build_server(ckpt[1], max_batch_size=1, batch_timeout=0.2)   # (loads the data again: ~1 s)
    out = _call(single, [("POST", "/predict", b) for b in bodies[:4]])
    assert [r.status_code for r in out] == [200] * 4
    assert single.state.mtlframe.batcher.stats.sizes == [1, 1, 1, 1]
    # the same values up to float rounding (a batch of 1 row and one of 7 sum in other orders)
    np.testing.assert_allclose(pd.DataFrame(out[3].json()["predictions"]).to_numpy(),
                               pd.DataFrame(whole).to_numpy(), rtol=1e-5, atol=1e-7)


BAD = [  # (body, status, field, words in the reason)
    (b"{\"user\": 3, \"age\": ", 400, "body", "malformed JSON at line 1"),
    (b"", 400, "body", "empty"),
    (b'{"user": 3, "age": NaN, "item": 7, "genre": "g3"}', 400, "body", "NaN is not valid JSON"),
    (b'[{"user": 3, "age": Infinity, "item": 7, "genre": "g3"}]', 400, "body", "Infinity"),
    (b'{"user": 3, "age": 1e999, "item": 7, "genre": "g3"}', 422, "body.age", "finite number"),
    (b'"a string"', 422, "body", "got a string"),
    (b"[]", 422, "body", "empty"),
    (b"[1, 2]", 422, "body[0]", "got a number"),
    (b'{"user": 3, "agee": 23, "item": 7, "genre": "g3"}', 422, "body.agee", "did you mean 'age'"),
    (b'{"user": 3, "item": 7, "genre": "g3"}', 422, "body.age", "missing column"),
    (b'{"user": 3, "age": "23", "item": 7, "genre": "g3"}', 422, "body.age", "takes a number"),
    (b'{"user": true, "age": 23, "item": 7, "genre": "g3"}', 422, "body.user", "got a boolean"),
    (b'{"user": 3, "age": 23, "item": [7], "genre": "g3"}', 422, "body.item", "got a list"),
    (b'[{"user": 3, "age": 23, "item": 7, "genre": "g3"}, {"user": 3, "age": 23, "item": 7, "genre": {}}]',
     422, "body[1].genre", "got an object"),
    (b'{"user": 3, "age": null, "item": 7, "genre": "g3"}', 422, "body.age", "missing"),   # no fill declared
    (json.dumps([ROWS[0]] * 6).encode(), 413, "body", "--max-rows 5"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "body", "nested too deeply"),    # was a 500 (RecursionError)
]


def test_bad_requests_get_a_4xx_naming_the_field_and_good_ones_in_the_same_batch_are_unharmed(ckpt):
    from mtlframe.serve import build_server

    app = build_server(ckpt[2], max_batch_size=64, batch_timeout=0.3, max_rows=5)
    good = ROWS[:2]
    out = _call(app, [("POST", "/predict", good)] + [("POST", "/predict", b[0]) for b in BAD]
                + [("POST", "/predict", good)])
    for (body, status, field, words), r in zip(BAD, out[1:-1]):
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert err["field"] == field and words in err["reason"], (body, err)
    assert out[0].status_code == 200 and out[-1].status_code == 200
    assert out[0].json() == out[-1].json()
    stats = app.state.mtlframe.batcher.stats
    # one batch: the two good requests and the one only the preprocessor refuses (age null without a
    # fill), redone request by request; the others never reached the model
    assert (stats.calls, stats.requests) == (1, 3)
    wrong = _call(app, [("GET", "/predict", b""), ("POST", "/nothing", b"{}")])
    assert [r.status_code for r in wrong] == [405, 404]


def test_a_body_over_the_limit_without_a_content_length_is_refused_while_it_is_read(app, monkeypatch):
    """A chunked body (no Content-Length) was read whole into memory, however large, before any limit."""
    import mtlframe.serve as serve_mod

    monkeypatch.setattr(serve_mod, "MAX_BODY", 1000)
    sent = []

    async def chunks():
        for _ in range(50):      # 50 x 100 bytes: the server stops reading after the 11th chunk
            sent.append(1)
            yield b" " * 100

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.post("/predict", content=chunks())
    r = asyncio.run(go())
    assert r.status_code == 413 and r.json()["error"] == {
        "field": "body", "reason": "the body is over 1,000 bytes; this server reads at most 1,000."}
    assert len(sent) < 50


def test_recommend_route_equals_mtlframe_recommend_and_refuses_bad_k_and_users(ckpt, app, tmp_path):
    from mtlframe.recommend import recommend
    from mtlframe.serve import build_server

    folder, best, plain, _ = ckpt
    pd.DataFrame({"user": [3, 17, 4242]}).to_csv(tmp_path / "u.csv", index=False)
    want = recommend(best, tmp_path / "u.csv", k=5, progress=False).frame
    r, one = _call(app, [("POST", "/recommend", {"user": [3, 17, 4242, 3], "k": 5}),
                         ("POST", "/recommend", {"user": 17, "k": 5})])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["user"] for x in results] == [3, 17, 4242]
    assert [x["source"] for x in results] == ["model", "model", "popularity"]
    for x in results:
        mine = want[want["user"] == x["user"]]
        assert [i["item"] for i in x["items"]] == mine["item"].tolist()
        assert [i["rank"] for i in x["items"]] == [1, 2, 3, 4, 5]
        np.testing.assert_allclose([i["score"] for i in x["items"]], mine["score"].to_numpy(), rtol=1e-6)
    assert one.json()["results"] == results[1]
    n_items = len(app.state.mtlframe.recommender.item_raw)
    bad = [({"user": 3, "k": 0}, "body.k", "from 1 to"), ({"user": 3, "k": n_items + 1}, "body.k", str(n_items)),
           ({"user": 3, "k": "5"}, "body.k", "got \"5\""), ({"k": 5}, "body.user", "missing"),
           ({"user": [], "k": 5}, "body.user", "empty"), ({"user": [3, 1.5]}, "body.user[1]", "got a number"),
           ({"user": 3, "n": 5}, "body.n", "unknown key"), ([3], "body", "send an object")]
    out = _call(app, [("POST", "/recommend", b) for b, _, _ in bad])
    for (body, field, words), resp in zip(bad, out):
        assert resp.status_code == 422, (body, resp.text)
        assert resp.json()["error"]["field"] == field and words in resp.json()["error"]["reason"], resp.json()
    no_ranking = build_server(plain, max_batch_size=4, batch_timeout=0.0)
    r404 = _call(no_ranking, [("POST", "/recommend", {"user": 3})])[0]
    assert r404.status_code == 404 and "without a ranking: section" in r404.json()["error"]["reason"]
    assert _call(no_ranking, [("GET", "/health", b"")])[0].json()["recommend"] is False
    # ranking.unknown_users: error -> 404 naming the unknown id
    saved = torch.load(best, map_location="cpu", weights_only=True)
    saved["mtlframe"]["recipe"]["ranking"]["unknown_users"] = "error"
    torch.save(saved, tmp_path / "strict.ckpt")
    strict = build_server(tmp_path / "strict.ckpt", max_batch_size=4, batch_timeout=0.0)
    r = _call(strict, [("POST", "/recommend", {"user": [3, 4242], "k": 2})])[0]
    assert r.status_code == 404 and r.json()["error"]["field"] == "body.user"
    assert "1 of 2 users in the request" in r.json()["error"]["reason"] and "4242" in r.json()["error"]["reason"]


def test_a_fill_in_one_request_of_a_batch_is_reported_to_that_request_only(ckpt):
    from mtlframe.serve import build_server

    app = build_server(ckpt[3], max_batch_size=8, batch_timeout=0.3)
    out = _call(app, [("POST", "/predict", {**ROWS[0], "age": None}), ("POST", "/predict", ROWS[1]),
                      ("POST", "/predict", ROWS[2]), ("POST", "/predict", {**ROWS[0], "age": 30.0})])
    assert [r.status_code for r in out] == [200] * 4
    stats = app.state.mtlframe.batcher.stats
    assert (stats.calls, stats.requests) == (1, 4)
    assert out[0].json()["warnings"] == ["numeric feature 'age': 1 missing value(s) filled (data.fill_missing of "
                                         "the checkpoint)"]
    assert out[1].json()["warnings"] == [] and out[1].json()["oov"] == {}
    assert out[2].json()["oov"] == {"user": 1, "genre": 1} and len(out[2].json()["warnings"]) == 2
    assert out[0].json()["predictions"] == out[3].json()["predictions"]   # filled with 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_uvicorn_on_a_loopback_port_answers_health_and_predict_and_stops(ckpt, app):
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            health = client.get("/health").json()
            pred = client.post("/predict", json=ROWS[0])
            bad = client.post("/predict", content=b"{oops", headers={"content-type": "application/json"})
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    assert not thread.is_alive()
    assert health["status"] == "ok" and health["tasks"] == {"watch": "retrieval", "like": "binary"}
    assert health["columns"] == ["user", "item", "genre", "age"] and health["recommend"] is True
    assert health["device"] == "cpu" and health["max_batch_size"] == 16
    assert pred.status_code == 200 and set(pred.json()["predictions"][0]) == {"watch", "like"}
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "body"


def test_serve_command_refuses_a_missing_gpu_and_bad_options_in_one_line(ckpt, capsys):
    from mtlframe.cli import main

    assert main(["serve", "--checkpoint", str(ckpt[1]), "--max-batch-size", "0"]) == 2
    assert "--max-batch-size must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(ckpt[1]), "--batch-timeout", "-1"]) == 2
    assert "--batch-timeout must be a number of seconds >= 0" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(ckpt[0] / "missing.ckpt"), "--port", "1"]) == 2
    assert "missing.ckpt" in capsys.readouterr().err
    with socket.socket() as taken:     # a port in use: said before the model is loaded, not uvicorn's exit 3
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--checkpoint", str(ckpt[1]), "--port", str(port)]) == 2
        assert f"--port {port}: 127.0.0.1:{port} is already in use" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["serve", "--checkpoint", str(ckpt[1]), "--accelerator", "cuda"]) == 2
        assert "torch sees no CUDA GPU" in capsys.readouterr().err
