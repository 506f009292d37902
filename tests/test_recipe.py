"""Recipe loading, overrides and validation: every problem reported at once, with paths and fixes."""
from importlib import metadata
from pathlib import Path

import pytest

from mtlframe.errors import RecipeError
from mtlframe.recipe import apply_overrides, load_recipe, parse_yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "recipes").glob("*.yaml")))
def test_shipped_recipes_validate(name):
    text = (REPO / "recipes" / name).read_text()
    for line in text.splitlines():  # recipes that need a plugin say so: "# requires: mtlframe-text"
        if line.startswith("# requires:"):
            for dist in line.split(":", 1)[1].split(","):
                try:
                    metadata.version(dist.strip())
                except metadata.PackageNotFoundError:
                    pytest.skip(f"{name} needs the {dist.strip()} plugin (plugins/{dist.strip()})")
    recipe = load_recipe(REPO / "recipes" / name)
    assert recipe.config.tasks


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


BASE = """\
data:
  dataset: {name: adult}
tasks:
  income: {type: binary, label: income}
model:
  encoders:
    - {name: numeric, features: [age]}
  backbone: {name: mmoe, num_experts: 2}
"""


def test_misspelled_key_names_path_line_valid_keys_and_closest(tmp_path):
    p = _write(tmp_path, BASE.replace("num_experts: 2", "num_expert: 2"))
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    msg = str(exc.value)
    assert "model.backbone.num_expert" in msg
    assert f"{p}:8" in msg
    assert "Did you mean 'num_experts'?" in msg
    assert "expert_hidden" in msg  # valid keys listed


def test_all_problems_reported_at_once(tmp_path):
    text = BASE.replace("num_experts: 2", "num_experts: many").replace("type: binary", "type: binery")
    text += "trainer: {max_epoch: 3}\ncombiner: {name: pcgrd}\n"
    with pytest.raises(RecipeError) as exc:
        load_recipe(_write(tmp_path, text))
    err = exc.value
    paths = [p for p, _ in err.problems]
    assert "model.backbone.num_experts" in paths      # wrong type
    assert "tasks.income.type" in paths               # bad literal
    assert "trainer.max_epoch" in paths               # misspelled fixed key
    assert "combiner.name" in paths                   # unknown component
    assert "valid integer" in dict(err.problems)["model.backbone.num_experts"]
    assert "Did you mean 'max_epochs'?" in dict(err.problems)["trainer.max_epoch"]


def test_unknown_component_lists_available_and_command(tmp_path):
    with pytest.raises(RecipeError) as exc:
        load_recipe(_write(tmp_path, BASE.replace("name: mmoe", "name: mmeo")))
    msg = dict(exc.value.problems)["model.backbone.name"]
    assert "unknown backbone 'mmeo'" in msg and "Did you mean 'mmoe'" in msg
    assert "shared-bottom (mtlframe)" in msg and "mtlframe plugins" in msg


def test_injected_parameters_cannot_be_written(tmp_path):
    with pytest.raises(RecipeError, match="filled in by mtlframe"):
        load_recipe(_write(tmp_path, BASE.replace("num_experts: 2", "num_experts: 2, input_dim: 5")))


def test_duplicate_keys_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="duplicate key 'tasks'"):
        load_recipe(_write(tmp_path, BASE + "tasks: {}\n"))
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(_write(tmp_path, "data: [unclosed\n"))
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_metric_must_fit_task_type(tmp_path):
    with pytest.raises(RecipeError, match="metric 'rmse' does not apply to binary"):
        load_recipe(_write(tmp_path, BASE.replace("label: income}", "label: income, metrics: [auc, rmse]}")))


def test_overrides():
    data, _ = parse_yaml(BASE, "x")
    out = apply_overrides(data, ["trainer.max_epochs=3", "model.backbone.name=shared-bottom",
                                 "model.encoders[0].dim=4", "model.backbone.expert_hidden=[8, 4]", "seed=null"])
    assert out["trainer"]["max_epochs"] == 3
    assert out["model"]["backbone"]["name"] == "shared-bottom"
    assert out["model"]["encoders"][0]["dim"] == 4
    assert out["model"]["backbone"]["expert_hidden"] == [8, 4]
    assert out["seed"] is None
    assert data["model"]["backbone"]["name"] == "mmoe"  # original untouched
    with pytest.raises(RecipeError, match="must look like key.sub=value"):
        apply_overrides(data, ["trainer.max_epochs"])
    with pytest.raises(RecipeError, match="does not address"):
        apply_overrides(data, ["model.encoders[5].dim=3"])
