"""``mtlframe recommend`` and ``mtlframe embeddings``: fusion, top-K with exclusion, determinism,
unknown users, empty histories, vectors out, faiss = exact top-K."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlframe.embeddings import build_faiss_index, exact_top_k, faiss_search, write_vectors
from mtlframe.recommend import (csr_from_pairs, exclusion_mask, fuse, popularity_order, rank_by_problems,
                                top_k)


def _logit(p: list[float]) -> torch.Tensor:
    p = torch.tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p)).float()


# -- pure parts -------------------------------------------------------------------------------------

def test_rank_by_fusion_equals_hand_computation_on_three_items():
    # rank_by {watch: 1.0, like: 0.5}: score = p_watch * p_like ** 0.5
    #   item 0: 0.9 * 0.1 ** 0.5 = 0.28460   item 1: 0.5 * 0.8 ** 0.5 = 0.44721   item 2: 0.2 * 0.9 ** 0.5 = 0.18974
    outputs = {"watch": _logit([0.9, 0.5, 0.2]).unsqueeze(0), "like": _logit([0.1, 0.8, 0.9]).unsqueeze(0),
               "rating": torch.tensor([[5.0, 1.0, 3.0]])}
    types = {"watch": "retrieval", "like": "binary", "rating": "regression"}
    score = fuse(outputs, {"watch": 1.0, "like": 0.5}, types)
    assert torch.allclose(score.exp(), torch.tensor([[0.28460, 0.44721, 0.18974]]), atol=1e-5)
    values, index, valid = top_k(score, 3)
    assert index.tolist() == [[1, 0, 2]] and bool(valid.all())
    # a zero weight leaves a task out; like alone orders 2, 1, 0
    assert top_k(fuse(outputs, {"watch": 0.0, "like": 1.0}, types), 3)[1].tolist() == [[2, 1, 0]]


def test_rank_by_refuses_regression_multiclass_unknown_tasks_and_bad_weights():
    types = {"watch": "retrieval", "like": "binary", "rating": "regression", "genre": "multiclass"}
    problems = dict(rank_by_problems({"watch": 1.0, "rating": 1.0, "genre": 1.0, "lik": 1.0, "like": -1}, types))
    assert "regression task" in problems["ranking.rank_by.rating"] and "rating_pred" in problems["ranking.rank_by.rating"]
    assert "multiclass task" in problems["ranking.rank_by.genre"]
    assert "did you mean 'like'" in problems["ranking.rank_by.lik"]
    assert ">= 0" in problems["ranking.rank_by.like"]
    assert "ranking.rank_by.watch" not in problems
    with pytest.raises(ValueError, match="not a probability"):
        fuse({"rating": torch.zeros(3)}, {"rating": 1.0}, types)


def test_fusion_of_a_zero_probability_is_finite_and_ranks_last():
    score = fuse({"like": torch.tensor([[-1e4, 0.0, 3.0]])}, {"like": 2.0}, {"like": "binary"})
    assert bool(torch.isfinite(score).all())
    assert score[0, 0].item() == pytest.approx(2 * math.log(1e-12))
    assert top_k(score, 3)[1].tolist() == [[2, 1, 0]]


def test_top_k_breaks_ties_by_lower_index_and_never_returns_an_excluded_column():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    exclude = torch.tensor([[False, True, False, False, False], [True, True, True, False, False]])
    values, index, valid = top_k(scores, 3, exclude)
    assert index.tolist() == [[2, 4, 3], [3, 4, -1]]       # row 2 has only two columns left
    assert valid.tolist() == [[True, True, True], [True, True, False]]
    assert values[0].tolist() == [3.0, 3.0, 2.0]
    assert top_k(scores, 3)[1].tolist() == [[1, 2, 4], [0, 1, 2]]
    assert top_k(scores, 10)[1].shape == (2, 5)              # k beyond the catalogue: every column


def test_top_k_matches_a_full_stable_sort_on_random_scores_with_many_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (64, 50), generator=g).float()   # heavy ties
    exclude = torch.rand(64, 50, generator=g) < 0.3
    _, index, valid = top_k(scores, 7, exclude)
    for u in range(64):  # the reference: a stable sort of the allowed columns, per user
        allowed = [c for c in range(50) if not exclude[u, c]]
        ref = sorted(allowed, key=lambda c: (-scores[u, c].item(), c))[:7]
        assert index[u][valid[u]].tolist() == ref
        assert not exclude[u, index[u][valid[u]]].any()


def test_exclusion_mask_from_csr_marks_each_users_items():
    indptr, positions = csr_from_pairs(torch.tensor([1, 0, 1, 2]), torch.tensor([4, 2, 0, 4]), n_rows=3)
    mask = exclusion_mask(torch.tensor([2, 1]), indptr, positions, 5)
    assert mask.tolist() == [[False, False, False, False, True], [True, False, False, False, True]]
    assert exclusion_mask(torch.tensor([0]), indptr, positions, 5).nonzero().tolist() == [[0, 2]]


def test_popularity_order_is_by_count_then_lower_position():
    assert popularity_order(torch.tensor([3, 7, 3, 0, 7])).tolist() == [1, 4, 0, 2, 3]


# -- embeddings: exact top-K, faiss ------------------------------------------------------------------

def _vectors(n: int, d: int, seed: int) -> torch.Tensor:
    v = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(v, dim=1)   # cosine = normalized vectors + inner product


def test_exact_top_k_equals_a_full_sort_of_the_matrix_product_and_excludes():
    users, items = _vectors(10, 8, 1), _vectors(30, 8, 2)
    seen = torch.zeros(10, 30, dtype=torch.bool)
    seen[:, :5] = True
    scores, index, valid = exact_top_k(users, items, 6, exclude=lambda rows: seen[rows], batch_size=3)
    full = users @ items.T
    full[:, :5] = float("-inf")
    assert index.tolist() == torch.sort(full, dim=1, descending=True, stable=True).indices[:, :6].tolist()
    assert torch.allclose(scores, torch.sort(full, dim=1, descending=True).values[:, :6])


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_faiss_index_returns_the_exact_top_k_on_a_small_catalogue(kind):
    pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'mtlframe[faiss]')")
    users, items = _vectors(20, 16, 3), _vectors(200, 16, 4)
    index = build_faiss_index(items, kind)
    scores, rows = faiss_search(index, users, 10, ef_search=256)
    _, exact, _ = exact_top_k(users, items, 10)
    assert rows.tolist() == exact.tolist()
    assert np.allclose(scores, (users @ items.T).gather(1, exact).numpy(), atol=1e-5)


def test_write_vectors_writes_npy_ids_and_parquet(tmp_path):
    import pandas as pd

    vec = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    written = write_vectors(tmp_path, "user", ["u1", "u2", "u3"], vec)
    assert np.load(tmp_path / "users.npy").tolist() == vec.tolist()
    assert pd.read_csv(tmp_path / "user_ids.csv")["user"].tolist() == ["u1", "u2", "u3"]
    if (tmp_path / "users.parquet") in written:
        frame = pd.read_parquet(tmp_path / "users.parquet")
        assert frame["user"].tolist() == ["u1", "u2", "u3"]
        assert [list(v) for v in frame["vector"]] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
