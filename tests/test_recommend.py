"""``mtlframe recommend`` and ``mtlframe embeddings``: fusion, top-K with exclusion, determinism,
unknown users, empty histories, vectors out, faiss = exact top-K."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlframe.embeddings import build_faiss_index, exact_top_k, faiss_search, write_vectors
from mtlframe.recommend import fuse, popularity_order, rank_by_problems, top_k_scored


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
    values, index, valid = top_k_scored(score, 3)
    assert index.tolist() == [[1, 0, 2]] and bool(valid.all())
    # a zero weight leaves a task out; like alone orders 2, 1, 0
    assert top_k_scored(fuse(outputs, {"watch": 0.0, "like": 1.0}, types), 3)[1].tolist() == [[2, 1, 0]]


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
    assert top_k_scored(score, 3)[1].tolist() == [[2, 1, 0]]


def test_top_k_breaks_ties_by_lower_index_and_never_returns_an_excluded_column():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    exclude = torch.tensor([[False, True, False, False, False], [True, True, True, False, False]])
    values, index, valid = top_k_scored(scores, 3, exclude)
    assert index.tolist() == [[2, 4, 3], [3, 4, -1]]       # row 2 has only two columns left
    assert valid.tolist() == [[True, True, True], [True, True, False]]
    assert values[0].tolist() == [3.0, 3.0, 2.0]
    assert top_k_scored(scores, 3)[1].tolist() == [[1, 2, 4], [0, 1, 2]]
    index, valid = top_k_scored(scores, 10)[1:]                  # k beyond the catalogue: every column, then -1
    assert index[0].tolist() == [1, 2, 4, 3, 0, -1, -1, -1, -1, -1] and valid.sum().item() == 10


def test_top_k_matches_a_full_stable_sort_on_random_scores_with_many_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (64, 50), generator=g).float()   # heavy ties
    exclude = torch.rand(64, 50, generator=g) < 0.3
    _, index, valid = top_k_scored(scores, 7, exclude)
    for u in range(64):  # the reference: a stable sort of the allowed columns, per user
        allowed = [c for c in range(50) if not exclude[u, c]]
        ref = sorted(allowed, key=lambda c: (-scores[u, c].item(), c))[:7]
        assert index[u][valid[u]].tolist() == ref
        assert not exclude[u, index[u][valid[u]]].any()


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


# -- end to end on tiny synthetic checkpoints ----------------------------------------------------------
# 40 users x 8 of 30 items each, plus user 999 whose two rows are the latest (the time split puts
# them in the test split: a known user with an empty training history). age is a user feature,
# genre an item feature. Two checkpoints, one epoch each: watch (retrieval) + like (binary), and
# watch alone.

RECIPE = """
data:
  dataset: {{name: csv, path: {csv}, features: {{user: categorical, age: numeric, item: categorical,
            genre: categorical}}, labels: [watch, like], user: user, item: item, timestamp: ts}}
  split: {{name: time, val: 0.1, test: 0.1}}
  batch_size: 64
  sampler: {{name: uniform-negatives, task: {sampled}, item_features: [item, genre], user_feature: user, ratio: 1}}
ranking: {{user_features: [user, age], item_features: [item, genre], rank_by: {rank_by}, candidates: 8}}
tasks:
{tasks}
model:
  encoders: [{{name: embedding, features: [user, item, genre], dim: 4}}, {{name: numeric, features: [age]}}]
{backbone}
trainer: {{max_epochs: 1}}
logger: {{name: none}}
checkpoint: {{monitor: train/loss_epoch}}
"""


@pytest.fixture(scope="session")
def rec_data(tmp_path_factory, toy_ranking_log):
    folder = tmp_path_factory.mktemp("recommend")
    frame = toy_ranking_log(extra=[(999, 3), (999, 7)])
    frame.to_csv(folder / "d.csv", index=False)
    return folder, frame


def _train(folder, name, **parts):
    from mtlframe.recipe import load_recipe
    from mtlframe.run import train

    (folder / f"{name}.yaml").write_text(RECIPE.format(csv=folder / "d.csv", **parts))
    return train(load_recipe(folder / f"{name}.yaml"), folder / name, progress=False).best_checkpoint


@pytest.fixture(scope="session")
def multi_ckpt(rec_data):
    return _train(rec_data[0], "multi", sampled="watch", rank_by="{watch: 1.0, like: 0.5}",
                  tasks="  watch: {type: retrieval, label: watch, dim: 8}\n  like: {type: binary, label: like}",
                  backbone="  backbone: {name: shared-bottom, hidden: [8]}")


@pytest.fixture(scope="session")
def watch_ckpt(rec_data):
    return _train(rec_data[0], "watch", sampled="watch", rank_by="{}",
                  tasks="  watch: {type: retrieval, label: watch, dim: 8}", backbone="")


def _users(folder, ids, name="users.csv"):
    import pandas as pd

    pd.DataFrame({"user": ids}).to_csv(folder / name, index=False)
    return folder / name


def test_recommend_never_returns_a_seen_item_and_is_deterministic(rec_data, multi_ckpt, tmp_path):
    from mtlframe.cli import main

    folder, frame = rec_data
    users = _users(tmp_path, list(range(40)) + [999])
    for name, batch in (("a", "7"), ("b", "7"), ("c", "256")):
        assert main(["recommend", "--checkpoint", multi_ckpt, "--users", str(users), "--k", "10",
                     "--output", str(tmp_path / f"{name}.csv"), "--no-progress", "--batch-size", batch]) == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()   # same run, same bytes
    import pandas as pd

    recs = pd.read_csv(tmp_path / "a.csv")
    other = pd.read_csv(tmp_path / "c.csv")       # other user batches: the same lists (float sums may differ in ulps)
    assert other[["user", "rank", "item"]].equals(recs[["user", "rank", "item"]])
    assert np.allclose(other["score"], recs["score"], atol=1e-6)
    assert list(recs.columns) == ["user", "rank", "item", "score", "source", "watch_pred", "like_pred"]
    seen = set(zip(frame["user"], frame["item"]))                      # every split: train, val, test
    assert not seen & set(zip(recs["user"], recs["item"]))
    assert (recs.groupby("user")["rank"].apply(list) == [list(range(1, 11))] * 41).all()
    assert (recs["source"] == "model").all()
    # ranked by the fused score, highest first, within each user
    assert (recs.groupby("user")["score"].apply(lambda s: bool((s.diff().dropna() <= 0).all()))).all()


def test_recommend_scores_are_the_models_predictions_fused_by_rank_by(rec_data, multi_ckpt, tmp_path):
    """Each recommended pair's predictions equal `predict` on the user's row with the item's
    features, and score = log p_watch + 0.5 log p_like; the 8 candidates are the retrieval top 8."""
    import pandas as pd

    from mtlframe.embeddings import export_embeddings
    from mtlframe.recommend import recommend
    from mtlframe.run import load_checkpoint, predict_frame

    folder, frame = rec_data
    result = recommend(multi_ckpt, _users(tmp_path, [5, 17]), k=4, progress=False)
    recs = result.frame
    assert result.retrieval == "watch" and result.candidates == 8
    items = recs["item"].astype(int)              # the csv dataset reads categorical columns as text
    rows = pd.DataFrame({"user": recs["user"], "age": 20 + recs["user"] % 30, "item": items,
                         "genre": "g" + (items % 4).astype(str)})
    pred = predict_frame(load_checkpoint(multi_ckpt), rows)
    assert np.allclose(recs["watch_pred"], pred["watch"], atol=1e-5)
    assert np.allclose(recs["like_pred"], pred["like"], atol=1e-5)
    assert np.allclose(recs["score"], np.log(pred["watch"]) + 0.5 * np.log(pred["like"]), atol=1e-4)
    # candidates: the retrieval task's exact top 8 of the unseen items (embeddings' top_k.csv)
    export_embeddings(multi_ckpt, tmp_path / "emb", k=8)
    top8 = pd.read_csv(tmp_path / "emb" / "watch" / "top_k.csv")
    for u in (5, 17):
        assert set(items[recs["user"] == u]) <= set(top8.loc[top8["user"] == u, "item"])


def test_retrieval_only_checkpoint_recommends_the_exact_top_k_of_its_vectors(watch_ckpt, tmp_path):
    """No rank_by: the retrieval task alone (weight 1), the same lists as the embeddings' exact top-K."""
    import pandas as pd

    from mtlframe.embeddings import export_embeddings
    from mtlframe.recommend import recommend

    result = recommend(watch_ckpt, _users(tmp_path, list(range(40))), k=5, output=tmp_path / "r.parquet",
                       progress=False, overrides=["ranking.candidates=1000"])   # every item through the fusion
    recs = pd.read_parquet(tmp_path / "r.parquet")
    assert result.rank_by == {"watch": 1.0} and result.retrieval is None
    assert list(recs.columns) == ["user", "rank", "item", "score", "source", "watch_pred"]
    export_embeddings(watch_ckpt, tmp_path / "emb", k=5)
    exact = pd.read_csv(tmp_path / "emb" / "watch" / "top_k.csv")
    exact = exact[exact["user"].isin(range(40))].reset_index(drop=True)
    assert recs["item"].astype(int).tolist() == exact["item"].tolist()
    assert np.allclose(recs["score"], -np.log1p(np.exp(-exact["score"])), atol=1e-4)   # log sigmoid(logit)


def test_unknown_users_get_the_most_popular_items_or_an_error(rec_data, multi_ckpt, tmp_path):
    from mtlframe.errors import DataError
    from mtlframe.recommend import recommend

    folder, frame = rec_data
    users = _users(tmp_path, [12345, 3, 777, 12345])
    result = recommend(multi_ckpt, users, k=3, progress=False)
    recs = result.frame
    assert (result.users, result.model_users, result.popularity_users, result.repeated) == (3, 1, 2, 1)
    assert recs["user"].tolist() == [12345] * 3 + [3] * 3 + [777] * 3        # the file's order
    pop = recs[recs["user"] == 777]
    assert (pop["source"] == "popularity").all() and pop["like_pred"].isna().all()
    # the most frequent training items (time split: the first 80% of the rows), ties by item code
    train = frame.iloc[:int(round(len(frame) * 0.8))]
    counts = train["item"].value_counts()
    assert pop["score"].tolist() == sorted(counts.tolist(), reverse=True)[:3]
    assert set(pop["item"].astype(int)) <= set(counts[counts >= pop["score"].min()].index)
    with pytest.raises(DataError, match=r"2 of 3 users .* not in the data .*: 12345, 777\. ranking.unknown_users is "
                                        r"'error'"):
        recommend(multi_ckpt, users, k=3, progress=False, overrides=["ranking.unknown_users=error"])


def test_a_user_with_no_training_row_is_ranked_from_their_test_row_without_their_items(rec_data, multi_ckpt,
                                                                                      tmp_path):
    from mtlframe.recommend import recommend

    result = recommend(multi_ckpt, _users(tmp_path, [999]), k=30, progress=False)
    recs = result.frame
    assert (result.model_users, result.empty_history, result.popularity_users) == (1, 1, 0)
    # users with training rows are not counted, even when their latest row is in val/test: the time
    # split's first 258 of 322 rows are training rows, so user 32 (rows 256-263) has two and
    # users 33-35 (rows 264-287) and 999 none
    mixed = recommend(multi_ckpt, _users(tmp_path, [0, 999, *range(30, 36)]), k=5, progress=False)
    assert (mixed.model_users, mixed.empty_history) == (8, 4)
    assert (recs["source"] == "model").all()
    assert not {3, 7} & set(recs["item"].astype(int))     # their two (test) rows' items
    assert len(recs) == 28 and result.short_lists == 1     # 30 items, 2 seen: 28 left
    everything = recommend(multi_ckpt, _users(tmp_path, [999]), k=30, progress=False,
                           overrides=["ranking.exclude_seen=false"]).frame
    assert len(everything) == 30 and {3, 7} <= set(everything["item"].astype(int))


def test_recommend_errors_name_the_column_the_key_and_the_fix(multi_ckpt, tmp_path):
    import pandas as pd

    from mtlframe.errors import DataError, MTLFrameError, RecipeError
    from mtlframe.recommend import recommend

    pd.DataFrame({"user_id": [1]}).to_csv(tmp_path / "u.csv", index=False)
    with pytest.raises(DataError, match=r"has no column 'user' \(the recipe's user id feature.*Columns: user_id"):
        recommend(multi_ckpt, tmp_path / "u.csv", progress=False)
    with pytest.raises(RecipeError, match=r"ranking\.rank_by\.like.*finite number >= 0"):
        recommend(multi_ckpt, _users(tmp_path, [1]), progress=False, overrides=["ranking.rank_by={like: -1}"])
    with pytest.raises(MTLFrameError, match="recommend takes overrides of data.* and ranking.* only"):
        recommend(multi_ckpt, _users(tmp_path, [1]), progress=False, overrides=["model.tower.hidden=[4]"])
    with pytest.raises(MTLFrameError, match="--k must be an integer >= 1"):
        recommend(multi_ckpt, _users(tmp_path, [1]), k=0)


def test_recipe_validation_refuses_a_regression_task_in_rank_by(rec_data):
    from mtlframe.errors import RecipeError
    from mtlframe.recipe import load_recipe

    folder, _ = rec_data
    text = RECIPE.format(csv=folder / "d.csv", sampled="watch", rank_by="{watch: 1.0, rating: 1.0}",
                         tasks="  watch: {type: retrieval, label: watch}\n  like: {type: binary, label: like}\n"
                               "  rating: {type: regression, label: like}",
                         backbone="  backbone: {name: shared-bottom, hidden: [8]}")
    (folder / "reg.yaml").write_text(text)
    with pytest.raises(RecipeError, match=r"ranking\.rank_by\.rating.*regression task: its prediction is not a "
                                          r"probability"):
        load_recipe(folder / "reg.yaml")


def test_embeddings_export_vectors_with_ids_and_a_faiss_index_equal_to_the_exact_top_k(watch_ckpt, tmp_path):
    import json

    import pandas as pd

    from mtlframe.embeddings import export_embeddings

    faiss = pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install 'mtlframe[faiss]')")
    info = export_embeddings(watch_ckpt, tmp_path / "emb", faiss="flat")
    folder = tmp_path / "emb" / "watch"
    users, items = np.load(folder / "users.npy"), np.load(folder / "items.npy")
    assert info["watch"]["users"] == len(users) == 41 and info["watch"]["items"] == len(items) == 30
    assert pd.read_csv(folder / "user_ids.csv")["user"].tolist()[:3] == [0, 1, 2]
    assert np.allclose(np.linalg.norm(users, axis=1), 1, atol=1e-5)          # cosine: unit vectors
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["similarity"] == "cosine" and meta["dim"] == users.shape[1] == 8
    _, rows = faiss.read_index(str(folder / "items.faiss")).search(users, 5)
    _, exact, _ = exact_top_k(torch.from_numpy(users), torch.from_numpy(items), 5)
    assert rows.tolist() == exact.tolist()


@pytest.mark.parametrize("key, default", [("data.sampler", {"name": "none"}), ("model.backbone", None)])
def test_a_recipe_and_the_resolved_recipe_its_checkpoint_saves_get_the_same_verdict(rec_data, key, default):
    """A left-out key and its default (what the checkpoint's resolved recipe holds) are judged the
    same: a retrieval task without a sampler is refused before training, not only when its
    checkpoint is loaded; a retrieval-only recipe without a backbone validates again from it."""
    import copy

    import yaml

    from mtlframe.errors import RecipeError
    from mtlframe.recipe import recipe_from_dict

    folder, _ = rec_data
    left_out = yaml.safe_load(RECIPE.format(csv=folder / "d.csv", sampled="watch", rank_by="{}",
                                            tasks="  watch: {type: retrieval, label: watch, dim: 8}", backbone=""))
    section, name = key.split(".")
    left_out[section].pop(name, None)
    resolved = copy.deepcopy(left_out)
    resolved[section][name] = default
    verdicts = []
    for data in (left_out, resolved):
        try:
            recipe_from_dict(data)
            verdicts.append("valid")
        except RecipeError as exc:
            verdicts.append([p for p, _ in exc.problems])
    assert verdicts[0] == verdicts[1] == (["data.sampler"] if name == "sampler" else "valid")


@pytest.fixture(scope="session")
def like_ckpt(rec_data):
    return _train(rec_data[0], "like", sampled="like", rank_by="{}",
                  tasks="  like: {type: binary, label: like}", backbone="  backbone: {name: shared-bottom, hidden: [8]}")


def test_without_a_retrieval_task_every_unseen_item_is_scored_by_the_full_model(rec_data, like_ckpt, tmp_path):
    """No retrieval task, no rank_by: the first binary task ranks every catalogue item; the lists
    equal a brute-force `predict` of every (user, unseen item) pair, sorted."""
    import pandas as pd

    from mtlframe.recommend import recommend
    from mtlframe.run import load_checkpoint, predict_frame

    folder, frame = rec_data
    result = recommend(like_ckpt, _users(tmp_path, [4, 11]), k=6, progress=False)
    assert result.retrieval is None and result.rank_by == {"like": 1.0} and result.candidates == 30
    loaded = load_checkpoint(like_ckpt)
    for u in (4, 11):
        unseen = sorted(set(range(30)) - set(frame.loc[frame["user"] == u, "item"]))
        rows = pd.DataFrame({"user": u, "age": 20 + u % 30, "item": unseen, "genre": [f"g{i % 4}" for i in unseen]})
        p = predict_frame(loaded, rows)["like"].to_numpy()
        best = [unseen[j] for j in np.argsort(-p, kind="stable")[:6]]
        got = result.frame[result.frame["user"] == u]
        assert got["item"].astype(int).tolist() == best
        assert np.allclose(got["like_pred"], np.sort(p)[::-1][:6], atol=1e-6)


def test_a_user_is_represented_by_their_latest_row_in_any_split():
    """A history (or any user-side feature that changes) is the most recent the data holds: the
    row with the largest timestamp among the user's rows of every split stands for the user."""
    from types import SimpleNamespace

    import numpy as np
    import pandas as pd

    from mtlframe.recommend import _user_rows

    frame = pd.DataFrame({"user_id": [7, 7, 8, 7, 8, 9, 9],
                          "timestamp": [50, 90, 10, 20, 40, 5, 5]})
    dm = SimpleNamespace(table=SimpleNamespace(frame=frame, timestamp="timestamp"),
                         split_index={"train": np.array([0, 1, 2]), "val": np.array([3, 5]), "test": np.array([4, 6])},
                         preprocessor=SimpleNamespace(vocab={}))
    where_split, where_row, _ = _user_rows(dm, np.array(["7", "8", "9", "10"], dtype=object), "user_id")
    # user 7: train rows at 50 and 90, val row at 20 -> train row 1 (t=90)
    # user 8: train t=10, test t=40 -> test row 0; user 9: val and test both at t=5 -> the later split
    # user 10: not in the data
    assert where_split.tolist() == [0, 2, 2, -1]
    assert where_row.tolist()[:3] == [1, 0, 1]
