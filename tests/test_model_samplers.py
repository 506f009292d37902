"""Model-side samplers (``in-batch``, ``mixed``): the contract, logQ by hand, parameter errors."""
from __future__ import annotations

import math

import pytest
import torch

from mtlframe.errors import ArgumentError, DataError, RecipeError
from mtlframe.features import FeatureInfo, TaskSpec
from mtlframe.recipe import load_recipe
from mtlframe.samplers.base import ModelSideSampler, Negatives
from mtlframe.samplers.in_batch import InBatch
from mtlframe.samplers.mixed import Mixed
from mtlframe.samplers.popularity_negatives import PopularityNegatives
from mtlframe.samplers.uniform_negatives import UniformNegatives

# item codes 1..5 (6 = in the vocabulary, no training row); counts 1, 2, 3, 4, 10 -> N = 20
INFO = {"item": FeatureInfo("item", "categorical", 7), "user": FeatureInfo("user", "categorical", 4),
        "price": FeatureInfo("price", "numeric")}
TASKS = [TaskSpec("watch", "binary", "watch", metrics=("auc",))]
COUNTS = {1: 1, 2: 2, 3: 3, 4: 4, 5: 10}
TRAIN = {"item": torch.tensor([c for c, n in COUNTS.items() for _ in range(n)])}
BATCH = torch.tensor([5, 1, 3, 5])                                      # B = 4


def _make(cls, **kw):
    s = cls(item_feature="item", feature_info=INFO, tasks=TASKS, **kw)
    s.prepare({"train": TRAIN})
    return s


def test_the_sampler_side_is_declared_on_the_class():
    assert UniformNegatives.side == PopularityNegatives.side == "data"
    assert InBatch.side == Mixed.side == "model" and not InBatch.resamples and not Mixed.resamples
    assert issubclass(InBatch, ModelSideSampler) and issubclass(Mixed, ModelSideSampler)


def test_in_batch_log_q_is_the_training_frequency_of_each_rows_item():
    neg = _make(InBatch).negatives(BATCH, None)
    assert isinstance(neg, Negatives) and neg.extra.shape == (0,) and neg.log_q_extra.shape == (0,)
    assert neg.extra.dtype == torch.long
    # q(5) = 10/20, q(1) = 1/20, q(3) = 3/20
    expected = torch.tensor([math.log(0.5), math.log(0.05), math.log(0.15), math.log(0.5)])
    assert torch.allclose(neg.log_q_batch, expected, atol=1e-6)
    off = _make(InBatch, log_q_correction=False).negatives(BATCH, None)
    assert torch.equal(off.log_q_batch, torch.zeros(4))


def test_mixed_log_q_is_the_mixture_probability_of_both_parts():
    sampler = _make(Mixed, num_negatives=2, alpha=0.0)
    neg = sampler.negatives(BATCH, torch.Generator().manual_seed(0))
    # Q(j) = (B p_data(j) + M p_sample(j)) / (B + M), B = 4, M = 2, p_sample = 1/5 on codes 1..5:
    # Q(5) = (4 * 0.5 + 2 * 0.2) / 6 = 0.4; Q(1) = (0.2 + 0.4) / 6 = 0.1; Q(3) = (0.6 + 0.4) / 6 = 1/6;
    # Q(2) = (0.4 + 0.4) / 6 = 2/15; Q(4) = (0.8 + 0.4) / 6 = 0.2
    q = {1: 0.1, 2: 2 / 15, 3: 1 / 6, 4: 0.2, 5: 0.4}
    assert abs(sum(q.values()) - 1) < 1e-12                              # a distribution over the candidates
    assert torch.allclose(neg.log_q_batch, torch.tensor([math.log(q[c]) for c in BATCH.tolist()]), atol=1e-6)
    assert neg.extra.shape == (2,) and set(neg.extra.tolist()) <= set(q)
    assert torch.allclose(neg.log_q_extra, torch.tensor([math.log(q[c]) for c in neg.extra.tolist()]), atol=1e-6)
    # alpha = 1: both parts are the unigram, so Q = p_data and mixed's batch logQ equals in-batch's
    uni = _make(Mixed, num_negatives=3, alpha=1.0).negatives(BATCH, torch.Generator().manual_seed(0))
    assert torch.allclose(uni.log_q_batch, _make(InBatch).negatives(BATCH, None).log_q_batch, atol=1e-6)
    off = _make(Mixed, num_negatives=2, log_q_correction=False).negatives(BATCH, torch.Generator().manual_seed(0))
    assert torch.equal(off.log_q_batch, torch.zeros(4)) and torch.equal(off.log_q_extra, torch.zeros(2))


def test_mixed_draws_catalogue_items_by_count_power_alpha_reproducibly():
    sampler = _make(Mixed, num_negatives=20000, alpha=1.0)
    extra = sampler.negatives(BATCH, torch.Generator().manual_seed(1)).extra
    assert torch.equal(extra, sampler.negatives(BATCH, torch.Generator().manual_seed(1)).extra)
    freq = torch.bincount(extra, minlength=7).double() / 20000
    assert freq[0] == 0 and freq[6] == 0                                  # never OOV, never an item without rows
    expected = torch.tensor([0, 1, 2, 3, 4, 10, 0], dtype=torch.float64) / 20
    # binomial standard error of a frequency <= sqrt(0.25 / 20000) = 0.0035; 5 of them within 4 sigma
    assert torch.allclose(freq, expected, atol=4 * 0.0036)


@pytest.mark.parametrize("cls, kw, param, message", [
    (InBatch, {"item_feature": "price"}, "item_feature", "is a numeric feature; it must be the categorical item id"),
    (InBatch, {"item_feature": "movie"}, "item_feature", "'movie' is not a model feature"),
    (Mixed, {"item_feature": "item", "num_negatives": 0}, "num_negatives", r"integer >= 1 .*got 0.*'in-batch'"),
    (Mixed, {"item_feature": "item", "num_negatives": True}, "num_negatives", "got True"),
    (Mixed, {"item_feature": "item", "alpha": float("inf")}, "alpha", "finite number .*got inf"),
])
def test_model_side_samplers_refuse_bad_parameters(cls, kw, param, message):
    with pytest.raises(ArgumentError, match=message) as err:
        cls(feature_info=INFO, tasks=TASKS, **kw)
    assert err.value.param == param


def test_a_bad_parameter_is_a_recipe_error_at_its_key(tmp_path):
    (tmp_path / "d.csv").write_text("user,item,watch\n1,1,1\n2,2,1\n")
    (tmp_path / "r.yaml").write_text(f"""
data:
  dataset: {{name: csv, path: {tmp_path / 'd.csv'}, features: {{user: categorical, item: categorical}}, labels: [watch]}}
  sampler: {{name: mixed, item_feature: item, num_negatives: 0}}
tasks:
  watch: {{type: binary, label: watch}}
model:
  encoders: [{{name: embedding, features: [user, item], dim: 4}}]
  backbone: {{name: shared-bottom, hidden: [8]}}
""")
    with pytest.raises(RecipeError, match=r"data\.sampler\.num_negatives .*r\.yaml:4.*num_negatives must be an integer >= 1"):
        load_recipe(tmp_path / "r.yaml")


def test_model_side_samplers_refuse_data_they_cannot_correct():
    with pytest.raises(DataError, match=r"^in-batch: batch items \[6\] of 'item' have no training row"):
        _make(InBatch).negatives(torch.tensor([1, 6]), None)
    with pytest.raises(DataError, match=r"^in-batch: 'item' holds codes in \[0, 9\] outside \[0, 7\)"):
        InBatch(item_feature="item", feature_info=INFO, tasks=TASKS).prepare({"train": {"item": torch.tensor([0, 9])}})
    with pytest.raises(DataError, match="every training row of 'item' is out of vocabulary"):
        Mixed(item_feature="item", feature_info=INFO, tasks=TASKS).prepare({"train": {"item": torch.tensor([0, 0])}})
    with pytest.raises(RuntimeError, match=r"prepare\(splits\) must run before negatives"):
        InBatch(item_feature="item", feature_info=INFO, tasks=TASKS).negatives(BATCH, None)


def test_a_second_prepare_recounts():
    sampler = _make(InBatch)
    sampler.prepare({"train": {"item": torch.tensor([1, 2])}})
    assert torch.allclose(sampler.negatives(torch.tensor([1]), None).log_q_batch, torch.tensor([math.log(0.5)]))


@pytest.mark.parametrize("sampler", [
    "{name: in-batch, item_feature: item}",
    "{name: mixed, item_feature: item, num_negatives: 8}",
    "{name: popularity-negatives, task: watch, item_features: [item, genre], user_feature: user}",
])
def test_samplers_train_a_retrieval_task(tmp_path, sampler):
    """Model-side samplers give the module its negatives (sampled softmax, no extra rows); a
    data-side one accepts a retrieval task and adds its rows labelled 0 (pointwise)."""
    from mtlframe.run import build_system

    rows = [(u, i) for u in range(12) for i in range(10) if (u * 7 + i * 3) % 4 == 0]
    (tmp_path / "d.csv").write_text("user,item,genre,watch\n" + "".join(f"{u},{i},{i % 3},1\n" for u, i in rows))
    (tmp_path / "r.yaml").write_text(f"""
data:
  dataset: {{name: csv, path: {tmp_path / 'd.csv'}, features: {{user: categorical, item: categorical, genre: categorical}}, labels: [watch]}}
  batch_size: 16
  sampler: {sampler}
ranking: {{user_features: [user], item_features: [item, genre]}}
tasks:
  watch: {{type: retrieval, label: watch, dim: 4}}
model:
  encoders: [{{name: embedding, features: [user], dim: 4}}, {{name: embedding, features: [item, genre], dim: 4}}]
  backbone: {{name: shared-bottom, hidden: [4]}}
""")
    dm, module, _ = build_system(load_recipe(tmp_path / "r.yaml"))
    batch = next(iter(dm.train_dataloader()))
    vectors: dict = {}
    sums, counts = module.task_loss_sums(batch, module.model.forward_from(module.model.encode(batch), vectors), vectors)
    assert math.isfinite(float(sums[0].detach())) and float(counts[0]) > 0
    if dm.sampler.side == "model":
        assert module.negative_sampler is dm.sampler and int(dm.sampler.counts.sum()) == len(dm.splits["train"]["label/watch"])
        assert not dm.sampler.resamples                                   # the rows are batched as they are
    else:
        assert module.negative_sampler is None
        assert len(dm._train_columns(0)["label/watch"]) == 2 * len(dm.splits["train"]["label/watch"])
