"""Conversion funnels (ESMM, ESCM2, AITM): stages named in the recipe, click AND conversion as the
conversion stage's target, conversions without a click counted (or refused), binary stages only."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mtlframe.backbones.funnel import apply_funnel_labels, funnel_targets
from mtlframe.errors import DataError, RecipeError
from mtlframe.features import label_key, mask_key
from mtlframe.recipe import recipe_from_dict

NAN = float("nan")
#: click, buy; the AND target of buy; rows 3 and 8 buy without a click
CLICK = [1, 1, 0, 0, 1, 0, NAN, NAN, 0, 1]
BUY = [1, 0, 0, 1, NAN, NAN, 1, 0, 1, 1]
AND = [1, 0, 0, 0, NAN, 0, NAN, 0, 0, 1]


def _csv(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"f": rng.normal(size=10), "click": CLICK, "buy": BUY})
    path = tmp_path / "funnel.csv"
    frame.to_csv(path, index=False)
    return path


def _recipe(path, backbone, tasks=("ctr", "cvr"), types=("binary", "binary")):
    cols = {"ctr": "click", "cvr": "buy"}
    return {
        "data": {"dataset": {"name": "csv", "path": str(path), "features": {"f": "numeric"},
                             "labels": ["click", "buy"]},
                 "split": {"name": "random", "val": 0.0, "test": 0.0}, "batch_size": 16},
        "tasks": {t: {"type": typ, "label": cols[t]} for t, typ in zip(tasks, types)},
        "model": {"encoders": [{"name": "numeric", "features": ["f"]}], "backbone": backbone},
        "trainer": {"max_epochs": 1, "accelerator": "cpu"},
        "logger": {"name": "none"},
    }


def _system(recipe):
    from mtlframe.run import build_system

    return build_system(recipe_from_dict(recipe, "<funnel recipe>"))


def _nan_equal(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    return bool(torch.equal(torch.isnan(a), torch.isnan(b))) and bool(torch.equal(a.nan_to_num(-7), b.nan_to_num(-7)))


def test_funnel_targets_are_the_and_of_the_stages():
    y = [torch.tensor(CLICK, dtype=torch.float32), torch.tensor(BUY, dtype=torch.float32)]
    targets, masks, counts = funnel_targets(y, [torch.isfinite(t) for t in y])
    assert _nan_equal(targets[0], CLICK)
    assert _nan_equal(targets[1], AND)
    assert masks[1].tolist() == [not math.isnan(v) for v in AND]
    assert counts == [0, 2]
    # three stages: stage 3 is the AND of all three; its violations count rows with stage 3 = 1 and any earlier 0
    three = [torch.tensor([1.0, 1, 0, 1]), torch.tensor([1.0, 0, 1, 1]), torch.tensor([1.0, 1, 1, 0])]
    targets, _, counts = funnel_targets(three, [torch.ones(4, dtype=torch.bool)] * 3)
    assert targets[2].tolist() == [1.0, 0.0, 0.0, 0.0] and counts == [0, 1, 2]


@pytest.mark.parametrize("name", ["esmm", "escm2", "aitm"])
def test_conversion_label_in_the_loss_is_click_and_conversion(tmp_path, name):
    """The data hold buy = 1 on two un-clicked rows; the loss of the conversion stage trains on
    click AND buy (0 there), for every funnel backbone."""
    with pytest.warns(UserWarning, match=r"2 rows \(train: 2\) have task 'cvr' \(column 'buy'\) = 1 while the "
                                         r"funnel stage before it, 'ctr' \(column 'click'\), is 0"):
        dm, module, _ = _system(_recipe(_csv(tmp_path), {"name": name, "click": "ctr", "conversion": "cvr"}))
    assert dm.funnel_violations == {"train": [0, 2], "val": [0, 0], "test": [0, 0]}
    rows = dm.split_index["train"]
    batch = dm.columns["train"]
    expected = torch.tensor(AND, dtype=torch.float32)[torch.as_tensor(rows)]
    assert _nan_equal(batch[label_key("cvr")], expected)                 # the whole split is one batch here
    assert batch[mask_key("cvr")].tolist() == (~torch.isnan(expected)).tolist()
    outputs = module.model(batch)
    losses = module.task_losses(batch, outputs)
    keep = ~torch.isnan(expected)
    by_hand = F.binary_cross_entropy_with_logits(outputs["cvr"].reshape(-1)[keep], expected[keep])
    torch.testing.assert_close(losses["cvr"], by_hand)


def test_strict_funnel_refuses_a_conversion_without_click(tmp_path):
    with pytest.raises(DataError, match=r"2 rows \(train: 2\) have task 'cvr' \(column 'buy'\) = 1 .*strict: true"):
        _system(_recipe(_csv(tmp_path), {"name": "esmm", "click": "ctr", "conversion": "cvr", "strict": True}))


def test_clean_funnel_data_warns_nothing(recwarn):
    splits = {"train": {label_key("a"): torch.tensor([1.0, 0, 0]), mask_key("a"): torch.ones(3, dtype=torch.bool),
                        label_key("b"): torch.tensor([1.0, 0, NAN]), mask_key("b"): torch.tensor([True, True, False])}}
    report = apply_funnel_labels(splits, ["a", "b"], {"a": "a", "b": "b"}, strict=True, backbone="esmm", source="x")
    assert report == {"train": [0, 0]}
    assert splits["train"][label_key("b")].tolist()[:2] == [1.0, 0.0]
    assert splits["train"][mask_key("b")].tolist() == [True, True, True]  # un-clicked: CTCVR known 0
    assert splits["train"][label_key("b")][2].item() == 0.0
    assert not [w for w in recwarn if "funnel" in str(w.message)]


@pytest.mark.parametrize("name", ["esmm", "escm2", "aitm"])
def test_task_order_does_not_decide_the_funnel(tmp_path, name):
    """The same stages with the tasks listed either way: the same funnel, targets and coupling."""
    path = _csv(tmp_path)
    backbone = {"name": name, "click": "ctr", "conversion": "cvr"}
    systems = []
    for tasks in (("ctr", "cvr"), ("cvr", "ctr")):
        with pytest.warns(UserWarning):
            systems.append(_system(_recipe(path, backbone, tasks)))
    (dm1, m1, _), (dm2, m2, _) = systems
    assert m1.model.backbone.funnel == m2.model.backbone.funnel == ["ctr", "cvr"]
    for t in ("ctr", "cvr"):
        assert _nan_equal(dm1.splits["train"][label_key(t)], dm2.splits["train"][label_key(t)])
    logits = {"ctr": torch.tensor([0.0, 2.0]), "cvr": torch.tensor([math.log(3), -1.0])}
    c1, c2 = m1.model.backbone.couple(dict(logits)), m2.model.backbone.couple(dict(logits))
    for t in ("ctr", "cvr"):
        torch.testing.assert_close(c1[t], c2[t])
    if name != "aitm":  # ESMM's product: pCTR 0.5, pCVR 0.75 -> pCTCVR 0.375
        torch.testing.assert_close(torch.sigmoid(c1["cvr"][0]), torch.tensor(0.375))
    else:  # AITM: the first stage feeds the second, whatever the listed order
        assert set(m1.model.backbone.ait) == set(m2.model.backbone.ait) == {"cvr"}


@pytest.mark.parametrize("name", ["esmm", "escm2", "aitm"])
def test_funnel_stages_must_be_named(tmp_path, name):
    with pytest.raises(RecipeError) as exc:
        recipe_from_dict(_recipe(_csv(tmp_path), {"name": name}), "r.yaml")
    problems = dict(exc.value.problems)
    assert "name the funnel's stages on the backbone: click: <task>, conversion: <task>" in \
        problems["model.backbone.click"]


@pytest.mark.parametrize("name", ["esmm", "escm2", "aitm"])
@pytest.mark.parametrize("typ", ["regression", "multiclass"])
def test_non_binary_task_in_a_funnel_is_a_recipe_error(tmp_path, name, typ):
    recipe = _recipe(_csv(tmp_path), {"name": name, "click": "ctr", "conversion": "cvr"}, types=("binary", typ))
    with pytest.raises(RecipeError) as exc:
        recipe_from_dict(recipe, "r.yaml")
    problems = dict(exc.value.problems)
    assert f"conversion 'cvr' is a {typ} task; a funnel's stages are binary tasks" in \
        problems["model.backbone.conversion"]


def test_a_misspelled_stage_says_which_task_was_meant(tmp_path):
    with pytest.raises(RecipeError) as exc:
        recipe_from_dict(_recipe(_csv(tmp_path), {"name": "esmm", "click": "ctrr", "conversion": "cvr"}), "r.yaml")
    assert "click 'ctrr' is not a task of the recipe; did you mean 'ctr'? Tasks: ctr, cvr" in \
        dict(exc.value.problems)["model.backbone.click"]
