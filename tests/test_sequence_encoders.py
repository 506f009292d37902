"""Sequence encoders: DIN's attention by hand, masks, empty histories, per-task attention, BST,
shared item tables, and the two-tower / recommend refusals of encoders that read the target item."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtlframe.encoders.embedding import EmbeddingEncoder
from mtlframe.encoders.sequence_pool import SequencePoolEncoder
from mtlframe.encoders.sequence_transformer import SequenceTransformerEncoder
from mtlframe.encoders.tables import SharedTables, bind_tables
from mtlframe.encoders.target_attention import TargetAttentionEncoder
from mtlframe.errors import ArgumentError, MTLFrameError, RecipeError
from mtlframe.features import FeatureInfo, TaskSpec
from mtlframe.testing import check_encoder

# item table (dim 2): row 0 = item_id's out-of-vocabulary row, deliberately large so that a
# padding position (history code 0 -> item row 0 before masking) would show in any output
TABLE = torch.tensor([[5.0, 5.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def _info(share: str | None = "item", fields: tuple[str, ...] = ()) -> dict[str, FeatureInfo]:
    return {"item": FeatureInfo("item", "categorical", 4),
            "hist": FeatureInfo("hist", "sequence", 4, 3, share_with=share, fields=fields)}


def _embedding(info) -> EmbeddingEncoder:
    emb = EmbeddingEncoder(["item"], dim=2, feature_info=info)
    with torch.no_grad():
        emb.fused.table.weight.copy_(TABLE)
    return emb


# history codes: seq code c + 1 = item code c, 0 = padding (pre-padded, most recent last)
BATCH = {"hist": torch.tensor([[0, 2, 4], [0, 0, 0], [3, 3, 2]], dtype=torch.int32),
         "item": torch.tensor([2, 1, 3])}


def _din(normalize: str = "none", **kw) -> tuple[TargetAttentionEncoder, EmbeddingEncoder]:
    info = _info()
    emb = _embedding(info)
    enc = TargetAttentionEncoder(["hist"], target="item", dim=2, hidden=[], normalize=normalize,
                                 feature_info=info, tables=SharedTables([emb]), **kw)
    with torch.no_grad():   # the unit is one Linear over [q, k, q - k, q * k]
        lin = enc.units["hist"].mlp.net[0]
        lin.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 2.0]]))
        lin.bias.fill_(0.5)
        enc.empty["hist"].copy_(torch.tensor([7.0, -7.0]))
    return enc, emb


def test_din_weights_and_output_equal_a_hand_computation():
    enc, _ = _din()
    # row 0: q = item 2 = [0, 1]; keys item 1 = [1, 0] and item 3 = [1, 1]
    #   w(item 1) = q.[1,0] + k.[0,1] + (q-k).[1,0] + (q*k).[0,2] + 0.5 = 0 + 0 - 1 + 0 + 0.5 = -0.5
    #   w(item 3) = 0 + 1 - 1 + 2 + 0.5 = 2.5         -> out = -0.5 [1,0] + 2.5 [1,1] = [2.0, 2.5]
    # row 1: all padding -> the "no history" vector [7, -7]
    # row 2: q = item 3 = [1, 1]; keys item 2, item 2, item 1
    #   w(item 2) = 1 + 1 + 1 + 2 + 0.5 = 5.5, w(item 1) = 1 + 0 + 0 + 0 + 0.5 = 1.5
    #   out = 2 * 5.5 [0,1] + 1.5 [1,0] = [1.5, 11.0]
    q = enc.target_embedding(BATCH)
    k, mask = enc.history("hist", BATCH)
    w = enc.weights(enc.units["hist"], q, k, mask)
    torch.testing.assert_close(w, torch.tensor([[0.0, -0.5, 2.5], [0.0, 0.0, 0.0], [5.5, 5.5, 1.5]]))
    torch.testing.assert_close(enc(BATCH), torch.tensor([[2.0, 2.5], [7.0, -7.0], [1.5, 11.0]]))


def test_din_unit_equals_the_literal_concatenation_formula():
    from mtlframe.encoders.target_attention import ActivationUnit

    torch.manual_seed(0)
    unit = ActivationUnit(4, [6, 3], "prelu")
    q, k = torch.randn(5, 4), torch.randn(5, 7, 4)
    torch.testing.assert_close(unit(q, k), unit.reference(q, k))


def test_din_softmax_option_is_the_released_codes_scaled_masked_softmax():
    enc, _ = _din("softmax")
    a, b = math.exp(-0.5 / math.sqrt(2)), math.exp(2.5 / math.sqrt(2))
    row0 = [(a * 1 + b * 1) / (a + b), (a * 0 + b * 1) / (a + b)]   # softmax([-0.5, 2.5] / sqrt 2) . keys
    out = enc(BATCH)
    torch.testing.assert_close(out[0], torch.tensor(row0))
    torch.testing.assert_close(out[1], torch.tensor([7.0, -7.0]))   # empty: no NaN from an all-masked softmax


def test_history_and_target_read_one_shared_parameter_and_both_get_gradients():
    enc, emb = _din()
    table = emb.fused.table.weight
    model = nn.ModuleList([emb, enc])
    assert not any(p is table for p in enc.parameters())                   # not registered twice
    assert sum(p is table for p in model.parameters()) == 1
    assert not any("table" in k for k in enc.state_dict())
    enc(BATCH)[:1].sum().backward()                                        # row 0: target item 2, history items 1, 3
    grad = table.grad
    assert grad[2].abs().sum() > 0                                         # through the target (query)
    assert grad[1].abs().sum() > 0 and grad[3].abs().sum() > 0             # through the history (keys)
    torch.testing.assert_close(grad[0], torch.zeros(2))                    # padding never contributes


@pytest.mark.parametrize("mode,row0,row2", [
    ("mean", [1.0, 0.5], [1 / 3, 2 / 3]),
    ("sum", [2.0, 1.0], [1.0, 2.0]),
    ("max", [1.0, 1.0], [1.0, 1.0]),
])
def test_sequence_pool_masks_padding_and_gives_the_no_history_vector(mode, row0, row2):
    info = _info()
    enc = SequencePoolEncoder(["hist"], dim=2, mode=mode, feature_info=info, tables=SharedTables([_embedding(info)]))
    with torch.no_grad():
        enc.empty["hist"].copy_(torch.tensor([-1.0, 3.0]))
    out = enc(BATCH)
    # row 0: items 1, 3; row 1: empty; row 2: items 2, 2, 1 (the OOV row [5, 5] never enters)
    torch.testing.assert_close(out, torch.tensor([row0, [-1.0, 3.0], row2]))


def test_sequence_pool_without_share_with_owns_its_table_and_passes_the_contract():
    info = _info(share=None)
    enc = SequencePoolEncoder(["hist"], dim=3, feature_info=info)
    assert enc.tables_own["hist"].weight.shape == (5, 3)                   # cardinality + 1 (row 0 = padding)
    out = enc(BATCH)
    torch.testing.assert_close(out[1], torch.zeros(3))                     # empty: the (zero-initialized) vector
    check_encoder(SequencePoolEncoder, {"h": "sequence"}, dim=4, mode="max")


def test_per_task_attention_gives_each_task_its_own_output_and_gradients():
    info = _info()
    emb = _embedding(info)
    torch.manual_seed(0)
    enc = TargetAttentionEncoder(["hist"], target="item", dim=2, hidden=[4], per_task=True,
                                 task_names=["rating", "like"], feature_info=info, tables=SharedTables([emb]))
    assert enc.per_task == ("rating", "like")
    own = enc.forward_tasks(BATCH)
    assert set(own) == {"rating", "like"} and own["rating"].shape == (3, 2)
    assert not torch.allclose(own["rating"], own["like"])
    assert not torch.allclose(own["rating"], enc(BATCH))
    own["rating"].sum().backward()
    assert all(p.grad is not None for p in enc.task_units["rating"].parameters())
    assert all(p.grad is None for p in enc.task_units["like"].parameters())
    shared = {id(p) for p in enc.shared_parameters()}
    assert not shared & {id(p) for p in enc.task_units.parameters()}
    assert {id(p) for p in enc.units.parameters()} <= shared


@pytest.mark.parametrize("position", ["index", "time", "none"])
def test_sequence_transformer_shape_and_padding_never_contributes(position):
    info = _info(fields=("ts",))
    emb = _embedding(info)
    torch.manual_seed(0)
    enc = SequenceTransformerEncoder(["hist"], target="item", dim=2, heads=1, position=position, time_field="ts",
                                     feature_info=info, tables=SharedTables([emb])).eval()
    batch = {**BATCH, "hist:ts": torch.tensor([[0.0, 0.1, 0.5], [0.0, 0.0, 0.0], [0.2, 0.3, 0.9]])}
    out = enc(batch)
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    with torch.no_grad():                                                  # what padding looks up changes...
        emb.fused.table.weight[0] = torch.tensor([-40.0, 9.0])
    batch["hist:ts"][0, 0] = 123.0                                         # ...and a padding time
    torch.testing.assert_close(enc(batch), out)                            # ...the output does not


def test_sequence_transformer_empty_history_is_the_target_alone():
    info = _info()
    emb = _embedding(info)
    enc = SequenceTransformerEncoder(["hist"], target="item", dim=2, heads=1, dropout=0.0, position="none",
                                     feature_info=info, tables=SharedTables([emb])).eval()
    empty = {"hist": torch.zeros(1, 3, dtype=torch.int32), "item": torch.tensor([2])}
    block = enc.blocks["hist"]
    with torch.no_grad():
        alone = block(emb.lookup("item", torch.tensor([[2]])))[:, -1]
    torch.testing.assert_close(enc(empty), alone)


def test_binding_errors_name_the_key_and_the_fix():
    info = _info()
    with pytest.raises(ArgumentError, match="set dim: 2") as e:
        SequencePoolEncoder(["hist"], dim=3, feature_info=info, tables=SharedTables([_embedding(info)]))
    assert e.value.param == "dim"
    with pytest.raises(ArgumentError, match="add 'item' to an embedding encoder"):
        SequencePoolEncoder(["hist"], dim=2, feature_info=info, tables=SharedTables([]))
    own = _info(share=None)
    with pytest.raises(ArgumentError, match="share_with: item") as e:
        TargetAttentionEncoder(["hist"], target="item", dim=2, feature_info=own,
                               tables=SharedTables([_embedding(own)]))
    assert e.value.param == "target"
    unbound = SequencePoolEncoder(["hist"], dim=2, feature_info=info)
    with pytest.raises(MTLFrameError, match="no tables were bound"):
        unbound(BATCH)
    problems = bind_tables([_embedding(info), SequencePoolEncoder(["hist"], dim=4, feature_info=info)])
    assert [(i, exc.param) for i, exc in problems] == [(1, "dim")]


def test_builder_binds_tables_and_reports_a_width_mismatch_at_the_encoder_key():
    from mtlframe.build import Builder
    from mtlframe.recipe import recipe_from_dict
    from mtlframe.testing import tiny_recipe

    info = _info()
    encoders = [{"name": "embedding", "features": ["item"], "dim": 2},
                {"name": "target-attention", "features": ["hist"], "target": "item", "dim": 2}]
    built = Builder(recipe_from_dict(tiny_recipe(**{"model.encoders": encoders}))).encoders(info)
    assert built[1].tables is not None
    assert built[1].target_embedding(BATCH).data_ptr() != 0
    torch.testing.assert_close(built[1].history("hist", BATCH)[0][0, 1], built[0].fused.table.weight[1])
    encoders[1]["dim"] = 4
    with pytest.raises(RecipeError, match=r"model\.encoders\[1\]\.dim.*set dim: 2"):
        Builder(recipe_from_dict(tiny_recipe(**{"model.encoders": encoders}))).encoders(info)


# -- two-tower and recommend --------------------------------------------------------------------

def _two_sided(encoder: nn.Module, emb: EmbeddingEncoder):
    from mtlframe.retrieval import side_columns

    return side_columns([emb, encoder], ["user", "hist"], ["item"])


def _user_item_info():
    return {**_info(), "user": FeatureInfo("user", "categorical", 3)}


def test_two_tower_takes_a_pooled_history_on_the_user_side():
    info = _user_item_info()
    emb = EmbeddingEncoder(["user", "item"], dim=2, feature_info=info)
    pool = SequencePoolEncoder(["hist"], dim=2, feature_info=info, tables=SharedTables([emb]))
    user, item = _two_sided(pool, emb)
    assert user.tolist() == [0, 1, 4, 5] and item.tolist() == [2, 3]


@pytest.mark.parametrize("cls", [TargetAttentionEncoder, SequenceTransformerEncoder])
def test_two_tower_refuses_an_encoder_that_reads_the_target_item(cls):
    info = _user_item_info()
    emb = EmbeddingEncoder(["user", "item"], dim=2, feature_info=info)
    enc = cls(["hist"], target="item", dim=2, feature_info=info, tables=SharedTables([emb]))
    with pytest.raises(RecipeError) as e:
        _two_sided(enc, emb)
    msg = str(e.value)
    assert "ranking.user_features[1]" in msg and f"model.encoders[1] ({cls.__name__} of 'hist')" in msg
    assert "reads the target item 'item'" in msg and "sequence-pool" in msg


def test_compose_refuses_a_model_whose_encoder_reads_the_target_item():
    from mtlframe.model import MultiTaskModel
    from mtlframe.retrieval import NoBackbone

    info = _user_item_info()
    emb = EmbeddingEncoder(["user", "item"], dim=2, feature_info=info)
    din = TargetAttentionEncoder(["hist"], target="item", dim=2, feature_info=info, tables=SharedTables([emb]))
    model = MultiTaskModel([emb, din], NoBackbone(), {}, [TaskSpec("r", "retrieval", "r")],
                           item_columns=torch.tensor([2, 3]))
    x = torch.zeros(2, 6)
    with pytest.raises(MTLFrameError, match=r"model\.encoders\[1\] \(TargetAttentionEncoder of 'hist'\) reads the "
                                            r"target item 'item'.*sequence-pool"):
        model.compose(x, x)
    pooled = MultiTaskModel([emb, SequencePoolEncoder(["hist"], dim=2, feature_info=info, tables=SharedTables([emb]))],
                            NoBackbone(), {}, [TaskSpec("r", "retrieval", "r")], item_columns=torch.tensor([2, 3]))
    y = torch.arange(12.0).view(2, 6)
    torch.testing.assert_close(pooled.compose(y, -y)[:, 2:4], -y[:, 2:4])


# -- end to end: a history built from a flat log, through the builder's table binding --------------

def _log_recipe(tmp_path, encoder: dict, **extra) -> dict:
    import numpy as np
    import pandas as pd

    from mtlframe.testing import tiny_recipe

    g = np.random.default_rng(0)
    n = 600
    user, item = g.integers(0, 30, n), g.integers(0, 40, n)
    frame = pd.DataFrame({"user": user, "item": item, "ts": g.permutation(n),
                          "click": ((item + user) % 3 == 0).astype(int)})
    path = tmp_path / "log.csv"
    frame.to_csv(path, index=False)
    recipe = tiny_recipe(**{
        "data.dataset": {"name": "csv", "path": str(path), "features": {"user": "categorical", "item": "categorical"},
                         "labels": ["click"], "user": "user", "item": "item", "timestamp": "ts"},
        "data.split": {"name": "time", "val": 0.2, "test": 0.2},
        "data.sequences": {"hist": {"of": "item", "share_with": "item", "max_len": 6, "fields": ["time_gap"]}},
        "tasks": {"click": {"type": "binary", "label": "click"}},
        "model.encoders": [{"name": "embedding", "features": ["user", "item"], "dim": 4}, encoder],
        **extra})
    return recipe


@pytest.mark.parametrize("encoder", [
    {"name": "target-attention", "features": ["hist"], "target": "item", "dim": 4, "per_task": True},
    {"name": "sequence-transformer", "features": ["hist"], "target": "item", "dim": 4, "position": "time",
     "time_field": "time_gap"},
    {"name": "sequence-pool", "features": ["hist"], "dim": 4},
])
def test_trains_end_to_end_on_a_history_built_from_a_log(tmp_path, encoder):
    from mtlframe.testing import train_tiny

    backbone = {"model.backbone": {"name": "stem", "expert_hidden": [8]}} if encoder.get("per_task") else {}
    result = train_tiny(tmp_path / "run", _log_recipe(tmp_path, encoder, **backbone))
    assert 0.0 <= result.metrics["test"]["click"]["auc"] <= 1.0


def test_recipe_validate_refuses_a_target_reading_history_on_the_user_side(tmp_path):
    from mtlframe.recipe import recipe_from_dict

    din = {"name": "target-attention", "features": ["hist"], "target": "item", "dim": 4}
    recipe = _log_recipe(tmp_path, din, ranking={"user_features": ["user", "hist"], "item_features": ["item"]})
    where = r"ranking\.user_features\[1\].*model\.encoders\[1\] \(TargetAttentionEncoder"
    with pytest.raises(RecipeError, match=where):
        recipe_from_dict(recipe)
    recipe["model"]["encoders"][1] = {"name": "sequence-pool", "features": ["hist"], "dim": 4}
    recipe_from_dict(recipe)   # a pooled history is user side


def test_per_task_attention_needs_a_backbone_that_reads_task_inputs_and_time_needs_a_time_field(tmp_path):
    from mtlframe.recipe import recipe_from_dict

    din = {"name": "target-attention", "features": ["hist"], "target": "item", "dim": 4, "per_task": True}
    with pytest.raises(RecipeError, match=r"model\.encoders\[1\]\.per_task.*\(stem\).*Remove per_task"):
        recipe_from_dict(_log_recipe(tmp_path, din))             # tiny_recipe's backbone is mmoe
    bst = {"name": "sequence-transformer", "features": ["hist"], "target": "item", "dim": 4, "position": "time",
           "time_field": "ts"}
    with pytest.raises(RecipeError, match=r"model\.encoders\[1\]\.time_field.*has fields \['time_gap'\]"):
        recipe_from_dict(_log_recipe(tmp_path, bst))


def test_recommend_refuses_a_trained_target_attention_model_before_loading_data(tmp_path):
    from mtlframe.recommend import recommend
    from mtlframe.testing import train_tiny

    din = {"name": "target-attention", "features": ["hist"], "target": "item", "dim": 4}
    recipe = _log_recipe(tmp_path, din, ranking={"user_features": ["user"], "item_features": ["item"]})
    result = train_tiny(tmp_path / "run", recipe)
    (tmp_path / "log.csv").unlink()                    # the refusal comes before any data is read
    users = tmp_path / "users.csv"
    users.write_text("user\n1\n")
    with pytest.raises(MTLFrameError, match=r"model\.encoders\[1\] \(TargetAttentionEncoder of 'hist'\) reads the "
                                            r"target item 'item'.*sequence-pool"):
        recommend(result.best_checkpoint, users, k=3, output=tmp_path / "out.csv")
