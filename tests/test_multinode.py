"""Multi-process and multi-node training (docs/multinode.md): ``trainer.strategy`` is validated
(FSDP, DeepSpeed, ddp_spawn and XLA refused at the key with the reason); two torchrun "nodes" on
one machine train on disjoint rows and give the weights of the single-node 2-process run; a
2-process run interrupted in the middle of an epoch and resumed gives the weights of the run
straight through."""
from __future__ import annotations

import pytest

from mtlframe.errors import RecipeError
from mtlframe.recipe import REFUSED_STRATEGIES, STRATEGIES, load_recipe, recipe_from_dict
from mtlframe.testing import tiny_recipe


@pytest.mark.parametrize("strategy, reason", [
    ("fsdp", "requires a GPU accelerator.*FSDP needs a non-CPU accelerator device.*gradient-level combiners"),
    ("fsdp_cpu_offload", "FSDP shards every parameter"),
    ("deepspeed_stage_2", "DeepSpeed is not supported"),
    ("ddp_spawn", "cannot be pickled. Use `strategy: ddp`"),
    ("xla", "TPU/XLA training is not supported"),
    ("ddpp", "not a Lightning strategy mtlframe trains with; did you mean 'ddp'"),
])
def test_a_strategy_mtlframe_cannot_train_with_is_refused_at_the_key(tmp_path, strategy, reason):
    path = tmp_path / "r.yaml"
    import yaml

    data = tiny_recipe(**{"trainer.strategy": strategy})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(RecipeError, match=reason) as exc:
        load_recipe(path)
    (where, _), = exc.value.problems
    assert where == "trainer.strategy"
    line = path.read_text().splitlines().index(f"  strategy: {strategy}") + 1
    assert f"r.yaml:{line}" in str(exc.value)


def test_every_lightning_strategy_is_either_accepted_or_refused_with_a_reason():
    from pytorch_lightning.strategies import StrategyRegistry

    lightning = set(StrategyRegistry.available_strategies()) | {"auto"}
    assert lightning == set(STRATEGIES) | set(REFUSED_STRATEGIES)
    for strategy in ("auto", "ddp", "ddp_fork", "ddp_find_unused_parameters_true", "single_device"):
        assert recipe_from_dict(tiny_recipe(**{"trainer.strategy": strategy})).config.trainer.strategy == strategy
