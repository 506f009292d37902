"""Tests of the ``log-numeric`` encoder: mtlframe's contract, worked values, registration, training.

Run from the plugin folder with ``pytest`` (after ``pip install -e .``), or from an mtlframe
checkout with ``pytest plugins/mtlframe-example/tests``.
"""
from __future__ import annotations

import math

import pytest
import torch
from mtlframe.errors import RecipeError
from mtlframe.features import FeatureInfo
from mtlframe.recipe import recipe_from_dict
from mtlframe.registry import build_registry
from mtlframe.testing import check_encoder, tiny_recipe, train_tiny, use_plugins

from mtlframe_example import plugin
from mtlframe_example.log_numeric import LogNumericEncoder, signed_log1p

INFO = {f: FeatureInfo(f, "numeric") for f in ("gain", "loss", "age")}
SYNTHETIC_NUMERIC = [f"x_{i:03d}" for i in range(8)]


# -- mtlframe's contract: shapes, gradients, row independence, signature, recipe entry ------------

@pytest.mark.parametrize("args", [{}, {"dim": 4}, {"keep_linear": True}, {"dim": 3, "keep_linear": True}],
                         ids=["plain", "dim", "keep_linear", "dim+keep_linear"])
def test_contract(args):
    enc = check_encoder(LogNumericEncoder, ["gain", "loss", "age"], **args)
    width = 3 * (2 if args.get("keep_linear") else 1)
    assert enc.output_dim == args.get("dim", width)


# -- worked values ---------------------------------------------------------------------------------

def test_worked_value_of_the_transform():
    z = torch.tensor([0.0, 1.0, -3.0, math.e - 1.0])
    enc = LogNumericEncoder(["gain"], feature_info=INFO)
    cols = enc.featurize({"gain": z})
    torch.testing.assert_close(enc(cols), torch.tensor([[0.0], [math.log(2)], [-math.log(4)], [1.0]]))


def test_worked_value_with_projection_and_linear_part():
    enc = LogNumericEncoder(["gain", "loss"], dim=1, keep_linear=True, feature_info=INFO)
    with torch.no_grad():
        enc.proj.weight.copy_(torch.tensor([[1.0, 2.0, 10.0, 100.0]]))    # [u_gain, u_loss, z_gain, z_loss]
        enc.proj.bias.fill_(0.5)
    cols = enc.featurize({"gain": torch.tensor([1.0]), "loss": torch.tensor([-3.0])})
    # u = [log 2, -log 4], z = [1, -3]: log 2 - 2 log 4 + 10 - 300 + 0.5
    expected = math.log(2) - 2 * math.log(4) + 10 - 300 + 0.5
    torch.testing.assert_close(enc(cols), torch.tensor([[expected]]))


def test_compresses_the_tail_and_keeps_the_order():
    z = torch.linspace(-5, 13.27, 200)
    u = signed_log1p(z)
    assert bool((u[1:] > u[:-1]).all())                       # monotone
    assert float(u[-1]) == pytest.approx(math.log1p(13.27))  # Adult's largest capital_gain: 13.27 -> 2.66
    torch.testing.assert_close(signed_log1p(-z), -u)          # odd


@pytest.mark.parametrize("features,kwargs", [([], {}), (["gain", "gain"], {}), (["gain"], {"dim": 0})])
def test_bad_arguments_raise_value_error(features, kwargs):
    with pytest.raises(ValueError):
        LogNumericEncoder(features, **kwargs, feature_info=INFO)


def test_rejects_non_numeric_features():
    info = {**INFO, "city": FeatureInfo("city", "categorical", cardinality=5)}
    with pytest.raises(ValueError, match="city"):
        LogNumericEncoder(["gain", "city"], feature_info=info)


# -- registration ------------------------------------------------------------------------------------

def test_plugin_registers_a_lazy_component():
    reg = build_registry(load_entry_points=False, extra_plugins=[plugin], strict=True)
    comp = reg.get("encoder", "log-numeric")
    assert comp.spec.factory == "mtlframe_example.log_numeric:LogNumericEncoder"   # lazy: nothing imported
    assert comp.provider.distribution == "mtlframe-example"
    assert reg.get("encoder", "mtlframe-example:log-numeric") is comp
    assert comp.load() is LogNumericEncoder


def test_recipe_validation_catches_a_typo():
    recipe = tiny_recipe(**{"model.encoders[0]": {"name": "log-numeric", "features": SYNTHETIC_NUMERIC,
                                                   "dims": 8}})
    with use_plugins(plugin), pytest.raises(RecipeError, match="Did you mean 'dim'"):
        recipe_from_dict(recipe)


def test_recipe_validation_runs_the_constructor_checks_and_names_the_key():
    # no data is read: the encoder is built with stand-in feature_info, and its ArgumentError
    # becomes a problem at the parameter's recipe key
    recipe = tiny_recipe(**{"model.encoders[0]": {"name": "log-numeric", "features": SYNTHETIC_NUMERIC,
                                                   "dim": 0}})
    with use_plugins(plugin), pytest.raises(RecipeError) as err:
        recipe_from_dict(recipe, "r.yaml")
    problems = dict(err.value.problems)
    assert "dim must be >= 1 or null, got 0" in problems["model.encoders[0].dim"]
    assert "encoder 'log-numeric'" in problems["model.encoders[0].dim"]


# -- one epoch on the tiny synthetic recipe ----------------------------------------------------------

def test_trains_one_epoch(tmp_path):
    with use_plugins(plugin):
        result = train_tiny(tmp_path, **{"model.encoders[0]": {"name": "log-numeric",
                                                               "features": SYNTHETIC_NUMERIC, "dim": 8}})
    assert result.providers["encoder:log-numeric"] == "mtlframe-example 0.1.0"
    auc = result.metrics["test"]["task_1_bin"]["auc"]
    assert math.isfinite(auc) and auc > 0.6
    assert math.isfinite(result.metrics["test"]["task_0"]["rmse"])
