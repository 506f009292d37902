"""Full-ranking metrics: hand-computed values with ties, exclusion, tie rule, batching and sharding."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlframe.errors import MTLFrameError
from mtlframe.ranking import CSR, full_ranking, top_k

L3, L5 = math.log2(3), math.log2(5)  # discounts 1/log2(i + 1): rank 1 -> 1, 2 -> 1/log2 3, 3 -> 1/2, 4 -> 1/log2 5

# catalogue of 6 items (positions 0..5); training popularity (rows per item)
POP = torch.tensor([10.0, 5.0, 3.0, 8.0, 1.0, 2.0])
SCORES = torch.tensor([
    [0.9, 0.5, 0.5, 0.1, 0.7, 0.5],  # A: item 0 excluded; 1, 2, 5 tie at 0.5
    [0.2, 0.2, 0.2, 0.2, 0.2, 0.2],  # B: every score equal; items 1, 4 excluded
    [0.8, 0.8, 0.8, 0.8, 0.3, 0.6],  # C: items 0-3 excluded: only 2 items allowed (< K = 4)
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # D: no positive in the split -> not evaluated
])
POSITIVES = [[5, 3], [0, 3, 5], [4], []]
EXCLUDE = [[0], [1, 4], [0, 1, 2, 3], []]


def _csr(sets):
    rows = torch.tensor([r for r, s in enumerate(sets) for _ in s], dtype=torch.long)
    cols = torch.tensor([c for s in sets for c in s], dtype=torch.long)
    return CSR.from_pairs(rows, cols, len(sets))


def _evaluate(**kw):
    return full_ranking(lambda u: SCORES[u], torch.arange(4), _csr(POSITIVES), _csr(EXCLUDE), 6, [2, 4],
                        popularity=POP, **kw)


def test_ranked_lists_follow_the_tie_rule_and_exclusions():
    ranked = top_k(SCORES, 4, _csr(EXCLUDE).dense(0, 4, 6))
    # A: 4 (0.7), then the 0.5 tie in catalogue order 1, 2, 5; B: all tied -> allowed items in order;
    # C: 5 (0.6), 4 (0.3), then nothing (the other four are excluded); D: plain descending scores
    assert ranked.tolist() == [[4, 1, 2, 5], [0, 2, 3, 5], [5, 4, -1, -1], [5, 4, 3, 2]]


def test_metrics_equal_hand_computed_values():
    got = _evaluate()
    # per user (A, B, C; D has no positive and is not averaged), lists from the test above:
    # @2  A [4, 1]: no hit                       -> recall 0,   ndcg 0,               hit 0, mrr 0, prec 0
    #     B [0, 2]: hit at 1, |R|=3              -> recall 1/3, ndcg 1/(1 + 1/L3),    hit 1, mrr 1, prec 1/2
    #     C [5, 4]: hit at 2, |R|=1              -> recall 1,   ndcg (1/L3)/1,        hit 1, mrr 1/2, prec 1/2
    # @4  A [4, 1, 2, 5]: hit at 4, |R|=2        -> recall 1/2, ndcg (1/L5)/(1 + 1/L3), mrr 1/4, prec 1/4
    #     B [0, 2, 3, 5]: hits at 1, 3, 4        -> recall 1,   ndcg (1 + 1/2 + 1/L5)/(1 + 1/L3 + 1/2), mrr 1, prec 3/4
    #     C [5, 4]: (2 items only) hit at 2      -> recall 1,   ndcg 1/L3,  mrr 1/2, prec 1/4 (K slots)
    # popularity: A @2 (1 + 5)/2 = 3, @4 (1 + 5 + 3 + 2)/4 = 2.75; B @2 (10 + 3)/2 = 6.5, @4 (10 + 3 + 8 + 2)/4 = 5.75;
    #             C (2 + 1)/2 = 1.5 at both K (mean over the 2 listed items)
    # coverage @2: {4, 1} | {0, 2} | {5, 4} = 5 of 6 items; @4: all 6
    want = {
        "recall@2": (0 + 1 / 3 + 1) / 3,                                   # 0.4444
        "ndcg@2": (0 + 1 / (1 + 1 / L3) + 1 / L3) / 3,                     # (0 + 0.61315 + 0.63093)/3 = 0.41469
        "hit@2": 2 / 3,
        "mrr@2": (0 + 1 + 1 / 2) / 3,                                      # 0.5
        "precision@2": (0 + 1 / 2 + 1 / 2) / 3,                            # 0.3333
        "popularity@2": (3 + 6.5 + 1.5) / 3,                               # 3.6667
        "coverage@2": 5 / 6,
        "recall@4": (1 / 2 + 1 + 1) / 3,                                   # 0.8333
        "ndcg@4": ((1 / L5) / (1 + 1 / L3) + (1 + 1 / 2 + 1 / L5) / (1 + 1 / L3 + 1 / 2) + 1 / L3) / 3,  # 0.60034
        "hit@4": 1.0,
        "mrr@4": (1 / 4 + 1 + 1 / 2) / 3,                                  # 0.5833
        "precision@4": (1 / 4 + 3 / 4 + 1 / 4) / 3,                        # 0.4167
        "popularity@4": (2.75 + 5.75 + 1.5) / 3,                           # 3.3333
        "coverage@4": 1.0,
    }
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert got["ndcg@2"] == pytest.approx(0.414692, abs=1e-6) and got["ndcg@4"] == pytest.approx(0.600341, abs=1e-6)


def test_batching_and_shards_give_the_same_numbers():
    whole = _evaluate()
    assert _evaluate(user_batch=1) == whole
    # two "processes": users {A, B} and {C, D}; their states summed = one all-reduce
    states = []
    for part in ([0, 1], [2, 3]):
        idx = torch.tensor(part)
        full_ranking(lambda u: SCORES[u], idx, _csr(POSITIVES).select(idx), _csr(EXCLUDE).select(idx), 6, [2, 4],
                     popularity=POP, reduce=lambda s: states.append(s) or s)
    total = states[0] + states[1]
    merged = full_ranking(lambda u: SCORES[u], torch.arange(0), _csr([]), _csr([]), 6, [2, 4], popularity=POP,
                          reduce=lambda s: total)
    assert merged == pytest.approx(whole, abs=1e-12)


def test_excluded_items_are_never_recommended_and_ties_are_deterministic():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (300, 40), generator=g).float()  # many ties
    exclude = torch.rand(300, 40, generator=g) < 0.6
    exclude[:5] = True  # users with nothing allowed
    exclude[5:10, 3:] = True  # users with 3 allowed items
    ranked = top_k(scores, 10, exclude)
    s, ex = scores.numpy(), exclude.numpy()
    for u in range(300):  # the reference: allowed items by (score desc, position asc)
        allowed = np.flatnonzero(~ex[u])
        ref = allowed[np.lexsort((allowed, -s[u, allowed]))][:10].tolist()
        assert ranked[u].tolist() == ref + [-1] * (10 - len(ref))
    assert not exclude.gather(1, ranked.clamp(min=0))[ranked >= 0].any()
    assert torch.equal(top_k(scores, 10, exclude), ranked)


def test_users_without_positives_or_allowed_items():
    # a user with no positive is not evaluated; no positive anywhere -> NaN (never a number that looks valid)
    got = full_ranking(lambda u: SCORES[u], torch.arange(4), _csr([[], [], [], []]), _csr(EXCLUDE), 6, [2],
                       metrics=["ndcg@2", "coverage@2"], popularity=POP)
    assert all(math.isnan(v) for v in got.values())
    # a user whose only positive is excluded counts with zeros (RecBole counts |R(u)| the same way)
    got = full_ranking(lambda u: SCORES[u], torch.arange(1), _csr([[0]]), _csr([[0]]), 6, [2], metrics=["recall@2"])
    assert got == {"recall@2": 0.0}


def test_errors_are_clear():
    with pytest.raises(MTLFrameError, match="'ndgc@2' is not a full-ranking metric"):
        _evaluate(metrics=["ndgc@2"])
    with pytest.raises(MTLFrameError, match=r"'recall@5' is not a full-ranking metric at the cutoffs \[2, 4\]"):
        _evaluate(metrics=["recall@5"])
    bad = SCORES.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(MTLFrameError, match="NaN scores"):
        top_k(bad, 2)
    # the evaluator never raises on a diverged model (other DDP processes wait in its reduce): all NaN
    got = full_ranking(lambda u: bad[u], torch.arange(4), _csr(POSITIVES), _csr(EXCLUDE), 6, [2])
    assert len(got) == 7 and all(math.isnan(v) for v in got.values())
    bad[1, 2] = 0.2
    bad[1, 1] = float("inf")  # item 1 is excluded for B: a non-finite excluded score is harmless
    assert full_ranking(lambda u: bad[u], torch.arange(4), _csr(POSITIVES), _csr(EXCLUDE), 6, [2]) == \
        full_ranking(lambda u: SCORES[u], torch.arange(4), _csr(POSITIVES), _csr(EXCLUDE), 6, [2])


def test_positives_outside_the_catalogue_count_but_are_never_hit():
    # C (one positive, item 4, hit at rank 2) also has 1 positive without a training row: |R| = 2
    base = dict(positives=_csr(POSITIVES[2:3]), exclude=_csr(EXCLUDE[2:3]), n_items=6, ks=[2],
                metrics=["recall@2", "ndcg@2", "hit@2"])
    got = full_ranking(lambda u: SCORES[2:3], torch.arange(1), unreachable=torch.tensor([1]), **base)
    # recall 1/2; ndcg (1/L3) / (1 + 1/L3); hit 1
    assert got == pytest.approx({"recall@2": 1 / 2, "ndcg@2": (1 / L3) / (1 + 1 / L3), "hit@2": 1.0})
    only = full_ranking(lambda u: SCORES[3:4], torch.arange(1), _csr([[]]), _csr([[]]), 6, [2],
                        unreachable=torch.tensor([2]), metrics=["recall@2"])
    assert only == {"recall@2": 0.0}  # evaluated (|R| = 2), with nothing to hit


def test_ranking_split_positives_exclusions_and_unknown_users():
    from mtlframe.catalogue import Catalogue
    from mtlframe.ranking.data import build_ranking_split

    # item codes 1..4 have training rows -> catalogue positions 0..3; code 5 has none
    ids = {"train": {"user": torch.tensor([1, 1, 2, 2, 3]), "item": torch.tensor([1, 2, 2, 3, 4])},
           "val": {"user": torch.tensor([1, 2]), "item": torch.tensor([3, 4])},
           "test": {"user": torch.tensor([2, 1, 1, 1, 0, 3, 2]), "item": torch.tensor([1, 4, 3, 5, 1, 1, 4])}}
    cat = Catalogue.from_training("u", "i", ids["train"]["item"], {"i": ids["train"]["item"]}, 6)
    cols = {"i": ids["test"]["item"], "u": ids["test"]["user"],
            "label/watch": torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]),
            "mask/watch": torch.tensor([True, True, True, True, True, True, False])}
    d = build_ranking_split(ids, cols, cat, "test", "watch")
    assert d.users.tolist() == [1, 2, 3] and d.unknown_rows == 1      # user code 0 is not evaluated
    assert d.inputs["u"].tolist() == [1, 2, 3] and d.inputs["i"].tolist() == [4, 1, 1]  # each user's first row
    # user 1: item 4 (label 1), item 3 (label 0: not positive), item 5 (no training row: unreachable)
    # user 2: item 1; its item-4 row has a missing label; user 3: item 1
    pos = [d.positives.indices[d.positives.indptr[j]:d.positives.indptr[j + 1]].tolist() for j in range(3)]
    assert pos == [[3], [0], [0]] and d.unreachable.tolist() == [1, 0, 0]
    # test excludes training and validation items: user 1 {1, 2} + {3}, user 2 {2, 3} + {4}, user 3 {4}
    ex = [d.exclude.indices[d.exclude.indptr[j]:d.exclude.indptr[j + 1]].tolist() for j in range(3)]
    assert ex == [[0, 1, 2], [1, 2, 3], [3]]
    assert d.popularity.tolist() == [1.0, 2.0, 1.0, 1.0]
    val = build_ranking_split(ids, {**cols, "label/watch": torch.ones(2), "i": ids["val"]["item"],
                                    "u": ids["val"]["user"], "mask/watch": torch.ones(2, dtype=torch.bool)},
                              cat, "val", "watch")
    assert [val.exclude.indices[val.exclude.indptr[j]:val.exclude.indptr[j + 1]].tolist() for j in range(2)] == \
        [[0, 1], [1, 2]]  # validation: training items only


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_fast_path_equals_the_exact_tie_pass(seed):
    """Rows without a tie across the K-th place take one topk(K + 1); the rest the exact pass.
    Both give the same lists, ties by the lower column, excluded columns never, -1 padding."""
    from mtlframe.ranking.evaluate import _ties_resolved, top_k

    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (64, 30), generator=g).float()      # many ties
    scores[:20] += torch.rand(20, 30, generator=g)                   # rows without ties
    exclude = torch.rand(64, 30, generator=g) < 0.3
    exclude[5, :28] = True                                            # fewer allowed columns than k
    for k in (1, 5, 10, 30, 35):
        fast = top_k(scores, k, exclude)
        kk = min(k, 30)
        exact = _ties_resolved(scores.masked_fill(exclude, float("-inf")), ~exclude, k, kk)
        assert torch.equal(fast, exact), k
        picked = fast[fast >= 0]
        rows = torch.nonzero(fast >= 0, as_tuple=True)[0]
        assert not exclude[rows, picked].any()
