"""Load test of ``mtlframe serve`` on loopback: requests/s and latency at 1, 8 and 64 concurrent clients.

    python -m benchmarks.serve_load [--checkpoint CKPT] [--requests 2000] [--seconds 20]

Without ``--checkpoint`` it first trains ``recipes/quickstart.yaml`` (the clothing reviews, three
tasks, MMoE) for ``--epochs`` epochs; the speed does not depend on how well the model predicts.
Then it starts ``mtlframe serve`` in a subprocess on a free port of 127.0.0.1 (never another
address), and for each client count runs at most ``--requests`` requests or ``--seconds`` seconds
(whichever ends first, after ``--warmup`` requests not counted), each request one row of the
dataset (``--rows`` rows per request) sent by an asyncio httpx client:

* ``clean``: good requests only; reported: requests/s, p50 / p99 latency, errors (any answer other
  than 200: must be 0), and the model calls (mean requests per forward pass, from ``/health``).
* ``mixed`` (the largest client count): every ``--bad-every``-th request is bad (malformed JSON,
  NaN, an unknown column, a wrong type, a missing column, an empty list, in turn): each must get
  a 4xx, and every good request a 200 with the predictions the 1-client run got for the same row
  (max abs difference reported; more than 1e-5 counts as an error).

Writes ``results.json`` and prints a Markdown table (``docs/serving.md``). Exits 1 when any error
was counted. The server is stopped on every path (terminate, then kill after 10 s).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BAD_KINDS = ("malformed", "nan", "unknown-column", "wrong-type", "missing-column", "empty-list")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(checkpoint: str, n: int, seed: int = 0) -> tuple[list[dict], list[str], dict[str, str]]:
    """``n`` rows of the checkpoint's dataset as JSON objects (the model's input columns only)."""
    import numpy as np

    from mtlframe.build import Builder
    from mtlframe.run import load_checkpoint
    from mtlframe.serve import RowSchema

    loaded = load_checkpoint(checkpoint)
    schema = RowSchema.of(loaded.preprocessor)
    frame = Builder(loaded.recipe).dataset().load().frame
    pick = np.random.default_rng(seed).choice(len(frame), size=min(n, len(frame)), replace=False)
    rows = json.loads(frame.iloc[pick][schema.required].to_json(orient="records"))
    return rows, schema.required, schema.kinds


def _bad(kind: str, row: dict, kinds: dict[str, str]) -> bytes:
    numeric = next((c for c, k in kinds.items() if k == "numeric" and c in row), None)
    first = next(iter(row))
    if kind == "malformed":
        return json.dumps(row).encode()[:-3]
    if kind == "nan":
        col = numeric or first
        return json.dumps({**row, col: "@NAN@"}).replace('"@NAN@"', "NaN").encode()
    if kind == "unknown-column":
        return json.dumps({**row, "no_such_column": 1}).encode()
    if kind == "wrong-type":
        return json.dumps({**row, (numeric or first): {"an": "object"}}).encode()
    if kind == "missing-column":
        return json.dumps({c: v for c, v in row.items() if c != first}).encode()
    return b"[]"


async def _load(url: str, rows: list[dict], kinds: dict[str, str], clients: int, requests: int, seconds: float,
                warmup: int, per_request: int, bad_every: int = 0, reference: dict | None = None) -> dict:
    import httpx

    out = {"latencies": [], "errors": 0, "bad": 0, "bad_4xx": 0, "good": 0, "max_diff": 0.0, "answers": {},
           "error_samples": []}

    def error(what: str) -> None:
        out["errors"] += 1
        if len(out["error_samples"]) < 5:
            out["error_samples"].append(what[:300])
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for i in range(warmup):
            await client.post("/predict", json=rows[i % len(rows)])
        before = (await client.get("/health")).json()["batches"]
        counter = iter(range(requests))
        start = time.perf_counter()
        deadline = start + seconds

        async def worker():
            # a client (one keep-alive connection) per worker: one pool shared by 64 workers spends
            # more time in httpx's pool than the server spends on a request
            async with httpx.AsyncClient(base_url=url, timeout=120) as own:
                await own_loop(own)

        async def own_loop(client):
            for i in counter:
                if time.perf_counter() > deadline:
                    return
                first = (i * per_request) % len(rows)
                chunk = [rows[(first + j) % len(rows)] for j in range(per_request)]
                bad = bad_every > 0 and i % bad_every == bad_every - 1
                body = _bad(BAD_KINDS[(i // bad_every) % len(BAD_KINDS)], chunk[0], kinds) if bad else \
                    json.dumps(chunk).encode()
                t0 = time.perf_counter()
                try:
                    r = await client.post("/predict", content=body, headers=headers)
                except httpx.HTTPError as exc:
                    error(f"{type(exc).__name__}: {exc}")
                    continue
                out["latencies"].append(time.perf_counter() - t0)
                if bad:
                    out["bad"] += 1
                    if 400 <= r.status_code < 500 and "error" in r.json():
                        out["bad_4xx"] += 1
                    else:
                        error(f"bad request answered {r.status_code}: {r.text}")
                    continue
                out["good"] += 1
                if r.status_code != 200:
                    error(f"good request answered {r.status_code}: {r.text}")
                    continue
                preds = r.json()["predictions"]
                if reference is None:
                    out["answers"][first] = preds
                elif first in reference:
                    diff = max(abs(a - b) for p, q in zip(preds, reference[first]) for a, b in
                               ((p[k], q[k]) for k in p) if isinstance(a, (int, float)))
                    out["max_diff"] = max(out["max_diff"], diff)
                    if diff > 1e-5:
                        error(f"row {first}: predictions differ from the 1-client run's by {diff:g}")

        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - start
        after = (await client.get("/health")).json()["batches"]
    lat = sorted(out["latencies"])
    calls = after["calls"] - before["calls"]
    done = len(lat)
    return {"clients": clients, "requests": done, "seconds": round(elapsed, 3),
            "requests_per_s": round(done / elapsed, 1) if elapsed > 0 else None,
            "p50_ms": round(1000 * statistics.median(lat), 2) if lat else None,
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2) if lat else None,
            "errors": out["errors"], "good": out["good"], "bad": out["bad"], "bad_answered_4xx": out["bad_4xx"],
            "model_calls": calls,
            "requests_per_call": round((after["requests"] - before["requests"]) / calls, 2) if calls else None,
            "max_abs_diff_vs_1_client": out["max_diff"] if reference is not None else None,
            "error_samples": out["error_samples"],
            "_answers": out["answers"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="a trained checkpoint (default: train the quickstart)")
    p.add_argument("--recipe", default=str(REPO / "recipes" / "quickstart.yaml"))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--clients", default="1,8,64", help="client counts, comma-separated")
    p.add_argument("--requests", type=int, default=2000, help="most requests per client count")
    p.add_argument("--seconds", type=float, default=20.0, help="most seconds per client count")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--rows", type=int, default=1, help="rows per request")
    p.add_argument("--bad-every", type=int, default=4, help="in the mixed run, every N-th request is bad")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--batch-timeout", type=float, default=0.005)
    p.add_argument("--startup-timeout", type=float, default=180.0)
    p.add_argument("--output", default="runs/bench-serve")
    args = p.parse_args(argv)

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint
    if checkpoint is None:
        from mtlframe.recipe import load_recipe
        from mtlframe.run import train

        overrides = [f"trainer.max_epochs={args.epochs}", "logger.name=none", "early_stopping=null"]
        checkpoint = str(train(load_recipe(args.recipe, overrides), out / "run", progress=False,
                               overwrite=True).best_checkpoint)
    rows, columns, kinds = _rows(checkpoint, 512)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mtlframe.cli", "serve", "--checkpoint", checkpoint, "--host", "127.0.0.1",
           "--port", str(port), "--max-batch-size", str(args.max_batch_size),
           "--batch-timeout", str(args.batch_timeout)]
    log = open(out / "server.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    results = []
    try:
        import httpx

        start = time.perf_counter()
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with status {server.returncode}; see {out / 'server.log'}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - start > args.startup_timeout:
                raise SystemExit(f"the server did not answer /health in {args.startup_timeout:.0f} s")
            time.sleep(0.25)
        startup = time.perf_counter() - start
        clients = [int(c) for c in args.clients.split(",")]
        reference = None
        for c in clients:
            r = asyncio.run(_load(url, rows, kinds, c, args.requests, args.seconds, args.warmup, args.rows))
            answers = r.pop("_answers")
            if reference is None:
                reference = answers
            results.append({"run": "clean", **r})
            print(json.dumps(results[-1]), flush=True)
        c = max(clients)
        r = asyncio.run(_load(url, rows, kinds, c, args.requests, args.seconds, args.warmup, args.rows,
                              bad_every=args.bad_every, reference=reference))
        r.pop("_answers")
        results.append({"run": f"mixed (1 in {args.bad_every} bad)", **r})
        print(json.dumps(results[-1]), flush=True)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        log.close()
    info = {"checkpoint": checkpoint, "command": " ".join(["python -m benchmarks.serve_load", *(argv or sys.argv[1:])]),
            "server": " ".join(cmd[2:]), "startup_s": round(startup, 2), "cpus": os.cpu_count(),
            "python": platform.python_version(), "rows_per_request": args.rows,
            "load_average_after": os.getloadavg(), "results": results}
    (out / "results.json").write_text(json.dumps(info, indent=2))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nserver up in {startup:.1f} s; {os.cpu_count()} CPUs (load average {load}); "
          f"{args.rows} row(s) per request\n")
    print("| run | clients | requests | requests/s | p50 ms | p99 ms | errors | bad -> 4xx | requests per model call |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['run']} | {r['clients']} | {r['requests']} | {r['requests_per_s']} | {r['p50_ms']} "
              f"| {r['p99_ms']} "
              f"| {r['errors']} | {r['bad_answered_4xx']} / {r['bad']} | {r['requests_per_call']} |")
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
