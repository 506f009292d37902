"""Speed of full-ranking evaluation: every user scored against every item, seen items excluded,
top-K by ``torch.topk``, in user batches.

    python -m benchmarks.full_ranking_speed --data ../shared/data/ml-100k --output runs/full-ranking-speed

1. **ML-100K, 943 users x 1,682 items.** The ``user-random`` split (``--seed``) of mtlframe's
   MovieLens-100K table; random user and item vectors (``--dim``, default 64: the cost of ranking
   does not depend on the values). Timed: mtlframe's evaluator ``mtlframe.ranking.full_ranking``
   end to end on the test split (train + val items excluded; scores, exclusion masks, the
   tie-deterministic ``top_k``, every metric at ``--k``), and, as a floor, ``[Ub, d] @ [d, I]`` +
   mask + one ``torch.topk`` per batch. Median of ``--repeats`` after one warm-up.
2. **Large catalogue, measured, then extrapolated to 100k users x 1M items.** Random item matrix
   ``[d, I]`` (I = ``--items``, default 1,000,000); for each ``Ub`` in ``--user-batches``, one
   batch of ``full_ranking`` (``--seen`` random excluded items and 10 random positives per user):
   seconds per batch (median of ``--repeats``), the size of the ``[Ub, I]`` float32 score block,
   the process RSS rise while it runs (the evaluator holds the scores, a masked copy and a few
   bool ``[Ub, I]`` masks), and the phases apart: the matrix product, the exclusion mask,
   mtlframe's ``top_k`` (its deterministic tie rule) and a plain ``masked_fill`` + ``torch.topk``.
   The estimate for ``--users`` (default 100,000) users is
   ``ceil(users / Ub) x seconds per batch``: linear in users, as the batches are independent and
   of equal cost; the item matrix (``d x I x 4`` bytes) is held once.

Threads: ``--threads`` (default 1: the machine is shared; the estimate is per thread).
Writes ``OUTPUT/results.json`` and prints a Markdown summary.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import available_memory_bytes, log, markdown_table

MB = 1 << 20


def bare_topk(u: torch.Tensor, items_t: torch.Tensor, exclude: torch.Tensor, k: int) -> torch.Tensor:
    """The floor the evaluator is compared with: scores ``u [Ub, d] @ items_t [d, I]``, excluded
    items set to ``-inf`` (bool ``exclude [Ub, I]``), one ``torch.topk`` -- no tie rule, no metrics."""
    return torch.topk((u @ items_t).masked_fill_(exclude, float("-inf")), k, dim=1).indices


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def ml100k(data: str, dim: int, user_batch: int, ks: list[int], repeats: int, seed: int) -> dict:
    """943 x 1,682: mtlframe's ``full_ranking`` on the test split (train + val excluded)."""
    from mtlframe.datamodule import split_indices
    from mtlframe.datasets.movielens import MovieLens100K
    from mtlframe.ranking import CSR, full_ranking

    table = MovieLens100K(path=data).load()
    idx = split_indices(table, "user-random", 0.1, 0.1, seed)
    f = table.frame
    users, u_code = np.unique(f["user_id"].to_numpy(), return_inverse=True)
    items, i_code = np.unique(f["item_id"].to_numpy(), return_inverse=True)
    n_users, n_items = len(users), len(items)

    def csr(rows: np.ndarray) -> CSR:
        return CSR.from_pairs(torch.from_numpy(u_code[rows]), torch.from_numpy(i_code[rows]), n_users)

    seen = csr(np.concatenate([idx["train"], idx["val"]]))
    positives = csr(idx["test"])
    popularity = torch.bincount(torch.from_numpy(i_code[idx["train"]]), minlength=n_items).float()
    g = torch.Generator().manual_seed(seed)
    U, Vt = torch.randn(n_users, dim, generator=g), torch.randn(dim, n_items, generator=g)
    all_users = torch.arange(n_users)

    def evaluator():
        return full_ranking(lambda b: U[b] @ Vt, all_users, positives, seen, n_items, ks,
                            popularity=popularity, user_batch=user_batch)

    def floor():
        for s in range(0, n_users, user_batch):
            e = min(s + user_batch, n_users)
            bare_topk(U[s:e], Vt, seen.dense(s, e, n_items), max(ks))

    t_eval, eval_all = _median_time(evaluator, repeats)
    t_floor, floor_all = _median_time(floor, repeats)
    return {"users": n_users, "items": n_items, "dim": dim, "user_batch": user_batch, "ks": ks,
            "excluded_pairs": int(seen.indices.numel()), "test_pairs": int(positives.indices.numel()),
            "evaluator_s": t_eval, "evaluator_s_all": eval_all, "evaluator_users_per_s": n_users / t_eval,
            "floor_s": t_floor, "floor_s_all": floor_all}


def large(n_items: int, dim: int, user_batches: list[int], seen: int, ks: list[int], repeats: int, users: int,
          seed: int) -> list[dict]:
    """One user batch of ``full_ranking`` against ``n_items`` items, per ``Ub``: time and memory."""
    from benchmarks.common import PeakRSS
    from mtlframe.ranking import CSR, full_ranking, top_k

    g = torch.Generator().manual_seed(seed)
    Vt = torch.randn(dim, n_items, generator=g)
    popularity = torch.ones(n_items)
    out = []
    for ub in user_batches:
        block = ub * n_items * 4
        have = available_memory_bytes()
        if have and 16 * ub * n_items > have:  # ~14 bytes per (user, item) at the evaluator's peak
            out.append({"user_batch": ub, "status": f"not run: ~{16 * ub * n_items / MB:,.0f} MB wanted, "
                                                    f"{have / MB:,.0f} MB available"})
            continue
        U = torch.randn(ub, dim, generator=g)
        rows = torch.arange(ub).repeat_interleave(seen)
        exclude = CSR.from_pairs(rows, torch.randint(0, n_items, (ub * seen,), generator=g), ub)
        positives = CSR.from_pairs(torch.arange(ub).repeat_interleave(10),
                                   torch.randint(0, n_items, (ub * 10,), generator=g), ub)
        batch = torch.arange(ub)

        def one_batch():
            return full_ranking(lambda b: U[b] @ Vt, batch, positives, exclude, n_items, ks,
                                popularity=popularity, user_batch=ub)

        one_batch()  # warm-up outside the memory probe
        with PeakRSS() as mem:
            t, times = _median_time(one_batch, repeats)
        t_mm, _ = _median_time(lambda: U @ Vt, repeats)
        t_mask, _ = _median_time(lambda: exclude.dense(0, ub, n_items), repeats)
        ex = exclude.dense(0, ub, n_items)
        t_floor, _ = _median_time(lambda: bare_topk(U, Vt, ex, max(ks)), repeats)
        scores = U @ Vt
        t_topk, _ = _median_time(lambda: top_k(scores, max(ks), ex), repeats)            # mtlframe's, tie rule
        t_plain, _ = _median_time(lambda: torch.topk(scores.masked_fill(ex, float("-inf")), max(ks), dim=1),
                                  repeats)
        del ex, scores
        n_batches = math.ceil(users / ub)
        res = {"user_batch": ub, "items": n_items, "dim": dim, "seen_per_user": seen, "ks": ks,
               "batch_s": t, "batch_s_all": times, "matmul_s": t_mm, "floor_s": t_floor, "mask_s": t_mask,
               "top_k_s": t_topk, "plain_topk_s": t_plain,
               "block_mb": block / MB, "item_matrix_mb": Vt.numel() * 4 / MB,
               "rss_rise_mb": mem.delta / MB, "rss_rise_per_block": mem.delta / block,
               "users_per_s": ub / t, "estimate_users": users, "estimate_batches": n_batches,
               "estimate_s": n_batches * t, "status": "ok"}
        out.append(res)
        log(f"[large] Ub={ub} I={n_items:,}: {t * 1e3:.0f} ms/batch (matmul {t_mm * 1e3:.0f}, matmul+mask+topk "
            f"{t_floor * 1e3:.0f}; top_k {t_topk * 1e3:.0f} vs masked_fill + torch.topk {t_plain * 1e3:.0f}), "
            f"[Ub, I] block {block / MB:,.0f} MB, RSS rise {mem.delta / MB:,.0f} MB "
            f"-> {users:,} users in {n_batches * t:,.0f} s")
    return out


def markdown(res: dict) -> str:
    env = res["environment"]
    m = res["ml100k"]
    lines = [f"Command: `{env['command']}`", "",
             f"Machine: {env['cpus']} CPU cores (shared), {env['threads']} torch thread(s), torch {env['torch']}, "
             f"{env['processor']}.", "",
             f"ML-100K test split (user-random, seed {env['seed']}), {m['users']} users x {m['items']} items, "
             f"d={m['dim']}, "
             f"user batch {m['user_batch']}, K={m['ks']}, {m['excluded_pairs']:,} train+val pairs excluded: "
             f"`full_ranking` {m['evaluator_s'] * 1e3:.1f} ms (median of {len(m['evaluator_s_all'])}), "
             f"{m['evaluator_users_per_s']:,.0f} users/s; matmul + mask + one `torch.topk` alone "
             f"{m['floor_s'] * 1e3:.1f} ms.", ""]
    header = ["Ub", "I", "s / batch (`full_ranking`)", "matmul s", "exclusion mask s", "`top_k` s",
              "masked_fill + `torch.topk` s", "[Ub, I] float32 block MB", "RSS rise MB", "users/s", "estimate"]
    rows = []
    for r in res["large"]:
        if r["status"] != "ok":
            rows.append([str(r["user_batch"])] + [""] * 9 + [r["status"]])
            continue
        rows.append([str(r["user_batch"]), f"{r['items']:,}", f"{r['batch_s']:.2f}", f"{r['matmul_s']:.2f}",
                     f"{r['mask_s']:.2f}", f"{r['top_k_s']:.2f}", f"{r['plain_topk_s']:.2f}", f"{r['block_mb']:,.0f}",
                     f"{r['rss_rise_mb']:,.0f}", f"{r['users_per_s']:,.0f}",
                     f"{r['estimate_users']:,} users: {r['estimate_batches']:,} x {r['batch_s']:.2f} s = "
                     f"{r['estimate_s']:,.0f} s ({r['estimate_s'] / 3600:.2f} h)"])
    lines += markdown_table(header, rows)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks.full_ranking_speed") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/ml-100k")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", default="10,20", help="cutoffs of the metrics (the list is max(K) long)")
    p.add_argument("--user-batch", type=int, default=256, help="user batch of the ML-100K part")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=100_000, help="users of the extrapolated estimate")
    p.add_argument("--user-batches", default="64,256", help="Ub of the large-catalogue part")
    p.add_argument("--seen", type=int, default=100, help="excluded items per user in the large part")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--output", default="runs/full-ranking-speed")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    res = {"environment": {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": prog + " " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpus": os.cpu_count(), "threads": a.threads, "torch": torch.__version__, "python": platform.python_version(),
        "processor": _cpu_name(), "seed": a.seed}}
    ks = [int(k) for k in a.k.split(",")]
    res["ml100k"] = ml100k(a.data, a.dim, a.user_batch, ks, a.repeats, a.seed)
    m = res["ml100k"]
    log(f"[ml100k] evaluator {m['evaluator_s'] * 1e3:.1f} ms, floor {m['floor_s'] * 1e3:.1f} ms")
    res["large"] = large(a.items, a.dim, [int(x) for x in a.user_batches.split(",")], a.seen, ks, a.repeats,
                         a.users, a.seed)
    (out / "results.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    md = markdown(res)
    (out / "results.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    raise SystemExit(main())
