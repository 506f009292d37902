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
    with pytest.raises(RecipeError, match=r"model.encoders has 1 item\(s\) \(indexes 0..0\), so \[5\] does not exist"):
        apply_overrides(data, ["model.encoders[5].dim=3"])


# -- the components' own value checks, without data ------------------------------------------------

@pytest.mark.parametrize("override, key, phrase", [
    ("model.backbone.num_experts=0", "model.backbone.num_experts", "num_experts must be >= 1, got 0"),
    ("model.backbone.dropout=1.5", "model.backbone.dropout", "got 1.5"),
    ("model.backbone={name: dselect-k, num_experts: 4, k: 9}", "model.backbone.k", "between 1 and num_experts=4"),
    ("model.backbone={name: esmm, funnel: [income, clicks]}", "model.backbone.funnel[1]",
     "'clicks' is not a task of the recipe"),
    ("model.backbone={name: shared-bottom, activation: relux}", "model.backbone.activation", "choose one of relu"),
    ("model.tower={name: mlp, hidden: [0]}", "model.tower.hidden", "positive integers"),
    ("model.encoders[0]={name: embedding, features: [workclass], dim: 0}", "model.encoders[0].dim",
     "dim must be >= 1, got 0"),
    ("model.encoders[0]={name: bag-of-words, features: [workclass], num_buckets: 1}",
     "model.encoders[0].num_buckets", "num_buckets must be >= 2"),
    ("combiner={name: dwa, temperature: 0}", "combiner.temperature", "temperature must be > 0"),
    ("combiner={name: cagrad, c: -1}", "combiner.c", "c must be >= 0"),
    ("data.sampler={name: uniform-negatives, task: income, item_features: [age], user_feature: workclass, ratio: 0}", "data.sampler.ratio",
     "ratio must be >= 1"),
    ("data.sampler={name: uniform-negatives, task: nope, item_features: [age], user_feature: workclass}", "data.sampler.task",
     "must be a binary or retrieval task of the recipe"),
    ("data.dataset={name: synthetic, num_rows: 0}", "data.dataset.num_rows", "num_rows must be >= 1"),
])
def test_component_value_checks_name_the_key(tmp_path, override, key, phrase):
    p = _write(tmp_path, BASE)
    with pytest.raises(RecipeError) as exc:
        load_recipe(p, [override])
    problems = dict(exc.value.problems)
    assert key in problems, problems
    assert phrase in problems[key]
    assert str(p) in str(exc.value)  # the file of the recipe


def test_value_checks_point_at_the_line_of_the_key(tmp_path):
    p = _write(tmp_path, BASE.replace("num_experts: 2", "num_experts: 0"))
    with pytest.raises(RecipeError) as exc:
        load_recipe(p)
    assert f"model.backbone.num_experts ({p}:8): backbone 'mmoe': num_experts must be >= 1, got 0." in str(exc.value)


def test_overridden_keys_point_at_the_command_line(tmp_path):
    """A bad value given as an override is not blamed on the file line that held the old one."""
    p = _write(tmp_path, BASE)
    with pytest.raises(RecipeError) as exc:
        load_recipe(p, ["model.backbone.num_experts=0"])
    assert "model.backbone.num_experts (command-line override model.backbone.num_experts=0): backbone 'mmoe'" \
        in str(exc.value)
    with pytest.raises(RecipeError) as exc:  # a whole mapping replaced: its keys are the override's too
        load_recipe(p, ["model.backbone={name: mmoe, num_experts: 0}"])
    assert "model.backbone.num_experts (command-line override model.backbone={name: mmoe, num_experts: 0})" \
        in str(exc.value)
    with pytest.raises(RecipeError) as exc:
        load_recipe(p, ["model.backbone.expert_hidden=[8, -1]"])
    assert "model.backbone.expert_hidden (command-line override model.backbone.expert_hidden=[8, -1]): " \
        "backbone 'mmoe': expert_hidden widths must be " \
        "positive integers, got [8, -1]" in str(exc.value)
    with pytest.raises(RecipeError) as exc:  # an item of an overridden list
        load_recipe(p, ["tasks.income.metrics=[auc, ndcg@0]"])
    assert "tasks.income.metrics[1] (command-line override tasks.income.metrics=[auc, ndcg@0])" in str(exc.value)
    with pytest.raises(RecipeError) as exc:  # keys not overridden keep their file line
        load_recipe(_write(tmp_path, BASE.replace("num_experts: 2", "num_experts: 0")), ["trainer.max_epochs=1"])
    assert f"model.backbone.num_experts ({p}:8)" in str(exc.value)


def test_unknown_keys_and_value_checks_are_reported_together(tmp_path):
    """A component with a misspelled key still gets its own checks on the keys that are right."""
    with pytest.raises(RecipeError) as exc:
        load_recipe(_write(tmp_path, BASE), ["model.backbone.num_expert=3", "model.backbone.expert_hidden=[8, -1]"])
    assert [k for k, _ in exc.value.problems] == ["model.backbone.num_expert", "model.backbone.expert_hidden"]


def test_sparse_tables_with_a_gradient_level_combiner(tmp_path):
    sparse = "model.encoders[0]={name: embedding, features: [workclass], sparse: true}"
    with pytest.raises(RecipeError) as exc:
        load_recipe(_write(tmp_path, BASE), [sparse, "combiner.name=pcgrad", "trainer.gradient_clip_val=1.0"])
    problems = dict(exc.value.problems)
    assert "model.shared: backbone" in problems["combiner.name"]
    assert "model.encoders[0] (sparse)" in problems["trainer.gradient_clip_val"]
    load_recipe(_write(tmp_path, BASE), [sparse, "combiner.name=pcgrad", "model.shared=backbone"])


def test_validation_builds_nothing_real(tmp_path):
    # a 10^8-row hashed table would take 12 GB; validation builds it on the meta device
    import time

    big = "model.encoders[0]={name: bag-of-words, features: [workclass], num_buckets: 100000000, dim: 32}"
    start = time.perf_counter()
    load_recipe(_write(tmp_path, BASE), [big])
    assert time.perf_counter() - start < 5


def _plugin(cls):
    import types

    from mtlframe import ComponentSpec, hookimpl

    mod = types.ModuleType("probe_plugin")

    @hookimpl
    def mtlframe_backbones():
        return [ComponentSpec("probe", cls, "test")]

    mod.mtlframe_backbones = mtlframe_backbones
    return mod


def test_argument_error_and_validate_args_of_a_plugin(tmp_path):
    from mtlframe.backbones.mmoe import MMoE
    from mtlframe.errors import ArgumentError
    from mtlframe.testing import use_plugins

    class Named(MMoE):
        def __init__(self, width: int = 4, *, input_dim: int, task_names: list[str]) -> None:
            if width % 2:
                raise ArgumentError("width", f"width must be even, got {width}")
            super().__init__(2, [width], input_dim=input_dim, task_names=task_names)

    class Expensive(MMoE):
        def __init__(self, width: int = 4, *, input_dim: int, task_names: list[str]) -> None:
            raise AssertionError("validation must not build a component that has validate_args")

        @classmethod
        def validate_args(cls, args, context):
            assert context.path == "model.backbone" and [t.name for t in context.tasks] == ["income"]
            return [("width", f"width={args['width']} is too wide")] if args["width"] > 8 else []

    recipe = BASE.replace("{name: mmoe, num_experts: 2}", "{name: probe, width: 3}")
    with use_plugins(_plugin(Named)), pytest.raises(RecipeError) as exc:
        load_recipe(_write(tmp_path, recipe))
    assert "width must be even, got 3" in dict(exc.value.problems)["model.backbone.width"]
    with use_plugins(_plugin(Expensive)):
        load_recipe(_write(tmp_path, recipe))
        with pytest.raises(RecipeError) as exc:
            load_recipe(_write(tmp_path, recipe), ["model.backbone.width=16"])
    assert "width=16 is too wide" in dict(exc.value.problems)["model.backbone.width"]


def test_builder_reports_the_same_key_as_validation(tmp_path):
    # what validation cannot see (a stand-in was fine) still reaches the builder; it names the key too
    from mtlframe.build import Builder

    recipe = load_recipe(_write(tmp_path, BASE))
    with pytest.raises(RecipeError) as exc:
        Builder(recipe).make("backbone", {"name": "mmoe", "num_experts": 0}, "model.backbone",
                             input_dim=4, task_names=["income"])
    assert "num_experts must be >= 1" in dict(exc.value.problems)["model.backbone.num_experts"]
    assert f"{tmp_path / 'r.yaml'}:8" in str(exc.value)


# -- a feature listed twice --------------------------------------------------------------------------

def test_feature_listed_twice_in_one_encoder_or_across_encoders(tmp_path):
    """Each column is encoded once: the second place is the problem, and it names the first."""
    twice = BASE.replace("features: [age]}", "features: [age, fnlwgt, age]}")
    with pytest.raises(RecipeError) as exc:
        load_recipe(_write(tmp_path, twice))
    problems = dict(exc.value.problems)
    assert list(problems) == ["model.encoders[0].features[2]"]
    assert "feature 'age' is listed twice: here and at model.encoders[0].features[0]" in \
        problems["model.encoders[0].features[2]"]
    across = BASE.replace("    - {name: numeric, features: [age]}\n",
                          "    - {name: numeric, features: [age]}\n"
                          "    - {name: embedding, features: [workclass, age], dim: 4}\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(_write(tmp_path, across))
    problems = dict(exc.value.problems)
    assert "model.encoders[1].features[1]" in problems
    assert "at model.encoders[0].features[0]" in problems["model.encoders[1].features[1]"]


# -- errors from an override name the override ---------------------------------------------------------

def test_override_errors_name_the_override(tmp_path):
    p = _write(tmp_path, BASE)
    with pytest.raises(RecipeError) as exc:
        load_recipe(p, ["model.backbone.num_expert=8"])
    msg = str(exc.value)
    assert "model.backbone.num_expert (command-line override model.backbone.num_expert=8): unknown key" in msg
    assert f"{p}:" not in msg  # not blamed on a line of the file


@pytest.mark.parametrize("override, phrase", [
    ("trainer..max_epochs=3", "has an empty part between two dots; write it as trainer.max_epochs"),
    (".trainer.max_epochs=3", "starts with a dot; write it as trainer.max_epochs"),
    ("trainer.max_epochs.=3", "ends with a dot; write it as trainer.max_epochs"),
    ("model.encoders[].dim=3", "malformed index '[]'"),
])
def test_malformed_override_keys_are_refused(override, phrase):
    data, _ = parse_yaml(BASE, "x")
    with pytest.raises(RecipeError) as exc:
        apply_overrides(data, [override])
    (path, msg), = exc.value.problems
    assert msg == f"command-line override '{override}': the key '{override.partition('=')[0]}' {phrase}." \
        or phrase in msg
    assert f"command-line override '{override}'" in msg and phrase in msg


# -- "did you mean": misspellings, other frameworks' names, keys at the wrong level -------------------

@pytest.mark.parametrize("extra, path, hint", [
    # a key at the wrong level says where it belongs
    ("lr: 0.01\n", "lr", "'lr' belongs under optimizer: write optimizer.lr."),
    ("max_epochs: 3\n", "max_epochs", "'max_epochs' belongs under trainer: write trainer.max_epochs."),
    ("batch_size: 64\n", "batch_size", "'batch_size' belongs under data: write data.batch_size."),
    ("trainer: {lr: 0.01}\n", "trainer.lr", "'lr' belongs under optimizer: write optimizer.lr."),
    ("optimizer: {max_epochs: 3}\n", "optimizer.max_epochs", "belongs under trainer: write trainer.max_epochs."),
    # other frameworks' names, at the top and at their own level
    ("learning_rate: 0.01\n", "learning_rate",
     "mtlframe calls 'learning_rate' optimizer.lr: write lr under optimizer."),
    ("optimizer: {learning_rate: 0.01}\n", "optimizer.learning_rate", "Did you mean 'lr'?"),
    ("optimizer: {lr_rate: 0.01}\n", "optimizer.lr_rate", "Did you mean 'lr'?"),
    ("epochs: 3\n", "epochs", "mtlframe calls 'epochs' trainer.max_epochs: write max_epochs under trainer."),
    ("trainer: {num_epochs: 3}\n", "trainer.num_epochs", "Did you mean 'max_epochs'?"),
    ("trainer: {gpus: 1}\n", "trainer.gpus", "Did you mean 'devices'?"),
    ("gpus: 1\n", "gpus", "mtlframe calls 'gpus' trainer.devices: write devices under trainer."),
    ("bs: 64\n", "bs", "mtlframe calls 'bs' data.batch_size: write batch_size under data."),
    ("early_stopping: {stopping_step: 3}\n", "early_stopping.stopping_step", "Did you mean 'patience'?"),
    # misspellings at every level
    ("sed: 1\n", "sed", "Did you mean 'seed'?"),
    ("checkpoint: {save_topk: 2}\n", "checkpoint.save_topk", "Did you mean 'save_top_k'?"),
    ("optimizer: {weight_decy: 0.1}\n", "optimizer.weight_decy", "Did you mean 'weight_decay'?"),
    # misspelled choices of the fixed keys
    ("optimizer: {name: adamm}\n", "optimizer.name", "(got 'adamm'). Did you mean 'adam'?"),
    ("logger: {name: tensorbord}\n", "logger.name", "Did you mean 'tensorboard'?"),
])
def test_unknown_keys_say_what_was_meant(tmp_path, extra, path, hint):
    with pytest.raises(RecipeError) as exc:
        load_recipe(_write(tmp_path, BASE + extra))
    problems = dict(exc.value.problems)
    assert path in problems, problems
    assert hint in problems[path]


@pytest.mark.parametrize("old, new, path, hint", [
    ("label: income}", "label: income, loss_weight: 2}", "tasks.income.loss_weight", "Did you mean 'weight'?"),
    ("label: income}", "label: income, wieght: 2}", "tasks.income.wieght", "Did you mean 'weight'?"),
    ("dataset: {name: adult}", "dataset: {name: adult}\n  batchsize: 8", "data.batchsize",
     "Did you mean 'batch_size'?"),
    ("dataset: {name: adult}", "dataset: {name: adult}\n  spilt: {val: 0.2}", "data.spilt", "Did you mean 'split'?"),
    ("num_experts: 2", "n_experts: 2", "model.backbone.n_experts", "Did you mean 'num_experts'?"),
    ("num_experts: 2", "expert_num: 2", "model.backbone.expert_num", "Did you mean 'num_experts'?"),
    ("features: [age]}", "features: [age], embedding_dim: 4}", "model.encoders[0].embedding_dim",
     "Did you mean 'dim'?"),
    ("data:\n", "embed_dim: 4\ndata:\n", "embed_dim", "mtlframe components call it 'dim'"),
    ("num_experts: 2", "num_experts: 2, lr: 0.1", "model.backbone.lr", "'lr' belongs under optimizer"),
])
def test_unknown_keys_in_tasks_data_and_components(tmp_path, old, new, path, hint):
    with pytest.raises(RecipeError) as exc:
        load_recipe(_write(tmp_path, BASE.replace(old, new)))
    problems = dict(exc.value.problems)
    assert path in problems, problems
    assert hint in problems[path]


def test_embedding_dim_on_an_encoder_with_dim():
    from mtlframe.recipe import key_hint

    assert key_hint("embedding_dim", "model.encoders[0]", ["features", "dim", "sparse"]) == " Did you mean 'dim'?"
    assert key_hint("loss_weight", "", ["seed", "tasks"]) == \
        " mtlframe calls 'loss_weight' tasks.<task>.weight (one per task): write weight under tasks.<task>."


def test_an_override_past_the_end_of_a_list_says_how_long_the_list_is():
    with pytest.raises(RecipeError) as err:
        load_recipe(REPO / "recipes" / "adult_mmoe.yaml", ["model.encoders[5].dim=3"])
    msg = str(err.value)
    assert msg.startswith("the command-line overrides have 1 problem:")
    assert "model.encoders has 2 item(s) (indexes 0..1), so [5] does not exist" in msg
