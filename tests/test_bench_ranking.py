"""The ranking benchmarks' plumbing: the split files RecBole reads are mtlframe's split, row for
row; the mtlframe rows come from an ``mtlframe compare`` results.json; the large-catalogue
estimate is the measured batch time times the number of batches.

The numbers themselves live in docs/ranking.md (## Benchmarks), not here.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks.full_ranking_speed import large
from benchmarks.recbole_ml100k import mtlframe_runs, summarize, write_split_files


def _fake_ml100k(folder, users: int = 4, per_user: int = 10, items: int = 12):
    """A GroupLens-format folder: ``users`` users with ``per_user`` distinct items each."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for u in range(1, users + 1):
        for j, i in enumerate(rng.choice(np.arange(1, items + 1), per_user, replace=False)):
            lines.append(f"{u}\t{i}\t{1 + (u + j) % 5}\t{880000000 + 100 * u + j}")
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    (folder / "u.user").write_text("".join(f"{u}|{20 + u}|M|student|1000{u}\n" for u in range(1, users + 1)))
    flags = "|".join(["0"] * 18 + ["1"])
    (folder / "u.item").write_text("".join(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{flags}\n"
                                           for i in range(1, items + 1)), encoding="latin-1")
    return lines


def _read(path):
    text = path.read_text().splitlines()
    return text[0], [tuple(line.split("\t")) for line in text[1:]]


def test_split_files_are_mtlframes_user_random_split(tmp_path):
    from mtlframe.datamodule import split_indices
    from mtlframe.datasets.movielens import MovieLens100K

    lines = _fake_ml100k(tmp_path / "ml")
    counts = write_split_files(str(tmp_path / "ml"), 7, tmp_path / "out")
    idx = split_indices(MovieLens100K(path=str(tmp_path / "ml")).load(), "user-random", 0.1, 0.1, 7)
    seen = []
    for name, suffix in (("train", "train"), ("val", "valid"), ("test", "test")):
        header, rows = _read(tmp_path / "out" / "ml-100k" / f"ml-100k.{suffix}.inter")
        assert header == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
        assert rows == [tuple(lines[k].split("\t")) for k in idx[name]]   # the same rows, in file order
        # 10 rows per user -> RecBole's 8:1:1 gives 8 / 1 / 1 per user
        per_user = {u: sum(r[0] == u for r in rows) for u in "1234"}
        assert per_user == dict.fromkeys("1234", {"train": 8, "val": 1, "test": 1}[name])
        assert counts[name] == {"rows": len(rows), "users": 4, "items": len({r[1] for r in rows})}
        seen += rows
    assert sorted(seen) == sorted(tuple(x.split("\t")) for x in lines)   # each row in exactly one file


def _compare_json(path):
    run = lambda s, r: {"seed": s, "status": "ok", "train_seconds": 10.0 * s,   # noqa: E731
                        "metrics": {"watch": {"recall@10": r, "ndcg@10": r / 2, "mrr@10": 0.4, "hit@10": 0.7}}}
    path.write_text(json.dumps({"configs": [
        {"slug": "alone-1a2b3c4d", "label": {"tasks": "alone"}, "runs": [run(1, 0.1), run(2, 0.2), run(3, 0.3)]},
        {"slug": "mtl-5e6f7a8b", "label": {"tasks": "mtl"},
         "runs": [run(1, 0.5), {"seed": 2, "status": "failed", "error": "boom"}]}]}))


def test_mtlframe_row_reads_a_compare_results_json(tmp_path):
    _compare_json(tmp_path / "r.json")
    alone = summarize(mtlframe_runs(tmp_path / "r.json", "alone", "watch"))
    assert alone["seeds"] == [1, 2, 3]
    assert alone["recall@10"]["per_seed"] == [0.1, 0.2, 0.3]
    assert alone["recall@10"]["mean"] == pytest.approx(0.2) and alone["recall@10"]["std"] == pytest.approx(0.1)
    assert alone["ndcg@10"]["mean"] == pytest.approx(0.1)
    assert alone["wall_s"]["mean"] == pytest.approx(20.0)
    assert math.isnan(alone["precision@10"]["mean"])   # not in the runs: NaN, not 0
    mtl = summarize(mtlframe_runs(tmp_path / "r.json", "mtl-5e6f", "watch"))   # by slug prefix
    assert mtl["seeds"] == [1] and [f["error"] for f in mtl["failed"]] == ["boom"]
    with pytest.raises(SystemExit, match="no configuration 'other'"):
        mtlframe_runs(tmp_path / "r.json", "other", "watch")


def test_large_catalogue_estimate_is_batches_times_measured_batch():
    (r,) = large(n_items=3000, dim=8, user_batches=[16], seen=5, ks=[10], repeats=1, users=100, seed=0)
    assert r["status"] == "ok"
    assert r["estimate_batches"] == 7                          # ceil(100 / 16)
    assert r["estimate_s"] == pytest.approx(7 * r["batch_s"])
    assert r["block_mb"] == pytest.approx(16 * 3000 * 4 / 2**20)
    assert r["users_per_s"] == pytest.approx(16 / r["batch_s"])
