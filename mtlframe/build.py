"""Build components from a validated recipe, injecting what the builder knows.

Values such as the input width, task names, vocabularies and task weights are injected; the
recipe never writes them. Every component used is recorded with its provider (distribution and
version) so runs say exactly what they were built from.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mtlframe.encoders.tables import bind_tables
from mtlframe.errors import MTLFrameError, RecipeError
from mtlframe.features import FeatureInfo, TaskSpec
from mtlframe.recipe import Recipe
from mtlframe.registry import get_registry
from mtlframe.validation import argument_problem, parameters, task_input_conflicts


class Builder:
    """Instantiates the components a recipe names.

    Attributes:
        providers: ``"<kind>:<name>" -> "<distribution> <version>"`` of every component built.
    """

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.providers: dict[str, str] = {}

    def make(self, kind: str, spec: Mapping[str, Any], path: str, **injected: Any) -> Any:
        """Build ``{name: ..., **args}`` of ``kind``, adding ``injected`` keyword arguments.

        Raises:
            RecipeError: the constructor rejects the arguments (its message, with the recipe key).
        """
        comp = get_registry().get(kind, spec["name"], where=f"recipe {self.recipe.source}, key {path}.name")
        factory = comp.load()
        wanted = set(getattr(factory, "injected", ()))
        args = {k: v for k, v in spec.items() if k != "name"}
        args.update({k: v for k, v in injected.items() if k in wanted})
        self.providers[f"{kind}:{comp.name}"] = str(comp.provider)
        try:
            return factory(**args)
        except MTLFrameError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            # the same key and message as `recipe validate` gives (ArgumentError's param, or the
            # parameter the message names)
            raise RecipeError([argument_problem(exc, kind, spec["name"], path, parameters(factory))],
                              self.recipe.source, self.recipe.lines) from None

    def dataset(self):
        return self.make("dataset", self.recipe.config.data.dataset, "data.dataset")

    def encoders(self, feature_info: Mapping[str, FeatureInfo]) -> list:
        out = []
        for i, spec in enumerate(self.recipe.config.model.encoders):
            factory = get_registry().get("encoder", spec["name"]).load()
            accepts = getattr(factory, "accepts", frozenset())
            feats = spec.get("features") or []
            bad = [(j, f) for j, f in enumerate(feats) if accepts and feature_info[f].type not in accepts]
            if bad:
                raise RecipeError([(f"model.encoders[{i}].features[{j}]",
                                    f"'{f}' is a {feature_info[f].type} feature; encoder '{spec['name']}' accepts "
                                    f"{', '.join(sorted(accepts))}. Move it to an encoder that takes "
                                    f"{feature_info[f].type} features.") for j, f in bad], self.recipe.source,
                                   self.recipe.lines)
            out.append(self.make("encoder", spec, f"model.encoders[{i}]", feature_info=feature_info,
                                 task_names=list(self.recipe.config.tasks)))
        # second pass: encoders that read another encoder's table (a sequence with share_with)
        problems = bind_tables(out)
        if problems:
            specs = self.recipe.config.model.encoders
            raise RecipeError([argument_problem(exc, "encoder", specs[i]["name"], f"model.encoders[{i}]",
                                                parameters(type(out[i]))) for i, exc in problems],
                              self.recipe.source, self.recipe.lines)
        return out

    def model(self, encoders: Sequence, tasks: Sequence[TaskSpec]):
        from mtlframe.model import MultiTaskModel

        from mtlframe.retrieval import NoBackbone, TwoTower, side_columns

        cfg = self.recipe.config.model
        ranked = [t for t in tasks if t.type != "retrieval"]     # the tasks the backbone serves
        names = [t.name for t in ranked]
        input_dim = sum(int(e.output_dim) for e in encoders)
        task_inputs = self._check_task_inputs(encoders)
        if cfg.backbone is None or not ranked:
            if cfg.backbone is not None:  # e.g. a compare row that leaves only the retrieval task
                import warnings

                warnings.warn(f"model.backbone ({cfg.backbone['name']}) is not built: every task is a retrieval "
                              "task, and retrieval tasks read the encoders directly.", UserWarning, stacklevel=2)
            backbone = NoBackbone()
        else:
            backbone = self.make("backbone", cfg.backbone, "model.backbone", input_dim=input_dim, task_names=names,
                                 task_inputs=task_inputs, task_types={t.name: t.type for t in ranked})
        towers = {}
        for t in ranked:
            spec, path = self._tower(t.name)
            towers[t.name] = self.make("tower", spec, path, input_dim=backbone.output_dims[t.name],
                                       output_dim=t.output_dim)
        ranking = self.recipe.config.ranking
        retrieval, item_columns = {}, None
        if ranking is not None:
            user_cols, item_columns = side_columns(encoders, ranking.user_features, ranking.item_features,
                                                   self.recipe.source, self.recipe.lines)
            for t in tasks:
                if t.type != "retrieval":
                    continue
                tc = self.recipe.config.tasks[t.name]
                spec, path = self._tower(t.name)
                retrieval[t.name] = TwoTower(
                    t.name, user_cols, item_columns,
                    self.make("tower", spec, path, input_dim=len(user_cols), output_dim=tc.dim),
                    self.make("tower", spec, path, input_dim=len(item_columns), output_dim=tc.dim),
                    similarity=tc.similarity, temperature=tc.temperature)
        return MultiTaskModel(encoders, backbone, towers, tasks, shared=cfg.shared, retrieval=retrieval,
                              item_columns=item_columns)

    def _tower(self, task: str) -> tuple[dict, str]:
        cfg = self.recipe.config.model
        return (cfg.towers[task], f"model.towers.{task}") if task in cfg.towers else (cfg.tower, "model.tower")

    def _check_task_inputs(self, encoders: Sequence) -> bool:
        """Whether encoders have per-task tables; a recipe error if the backbone cannot read them."""
        specs = self.recipe.config.model.encoders
        keys = [f"model.encoders[{i}].{'per_task' if 'per_task' in specs[i] else 'task_specific'}"
                for i, e in enumerate(encoders) if getattr(e, "per_task", ())]
        backbone = self.recipe.config.model.backbone
        problems = task_input_conflicts(keys, backbone["name"]) if backbone is not None else []
        if problems:
            raise RecipeError(problems, self.recipe.source, self.recipe.lines)
        return bool(keys)

    def combiner(self, tasks: Sequence[TaskSpec]):
        return self.make("combiner", self.recipe.config.combiner, "combiner",
                         task_names=[t.name for t in tasks], weights={t.name: t.weight for t in tasks},
                         task_types={t.name: t.type for t in tasks})

    def sampler(self, feature_info: Mapping[str, FeatureInfo], tasks: Sequence[TaskSpec], table=None):
        return self.make("sampler", self.recipe.config.data.sampler, "data.sampler", feature_info=feature_info,
                         tasks=list(tasks), table=table)

    def scheduler(self) -> tuple[Any, str] | None:
        """``(schedule, interval)`` of ``optimizer.scheduler`` (the interval defaulting to the
        schedule's own), or ``None`` without one."""
        spec = self.recipe.config.optimizer.scheduler
        if spec is None:
            return None
        schedule = self.make("scheduler", {k: v for k, v in spec.items() if k != "interval"}, "optimizer.scheduler")
        return schedule, spec.get("interval") or type(schedule).default_interval

    def metrics(self, tasks: Sequence[TaskSpec]) -> dict[str, dict[str, Any]]:
        """``{task: {metric name as written: MetricDef}}``, each with its options bound: the ``K``
        of ``name@K`` and, for grouped metrics, the recipe's ``metrics_group``."""
        from mtlframe.metrics.base import resolve_metric

        out = {}
        for t in tasks:
            out[t.name] = {}
            if t.type == "retrieval":  # full-ranking metrics, computed over the catalogue at epoch end
                continue
            for m in t.metrics:
                comp, mdef, k = resolve_metric(m)
                self.providers[f"metric:{comp.name}"] = str(comp.provider)
                options: dict[str, Any] = {} if k is None else {"k": k}
                if getattr(mdef, "grouped", False):
                    options["group"] = self.recipe.config.metrics_group
                out[t.name][m] = mdef.bind(**options) if options else mdef
        return out
