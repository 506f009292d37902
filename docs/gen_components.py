"""Write ``docs/components.md`` from the registry: every component, its paper and recipe parameters.

    python docs/gen_components.py            # rewrite docs/components.md
    python docs/gen_components.py --check    # exit 1 if the committed file is out of date

Covers mtlframe's built-ins and the plugins in ``plugins/`` (registered from their source
folders, so the output does not depend on what happens to be installed). What a component does
comes from its registry summary, the paper from its module docstring, the parameters from its
constructor signature (the recipe schema) and the ``Args:`` section of its class docstring.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "components.md"

KIND_INTRO = {
    "dataset": "Loaders that return one table plus its column schema (`data.dataset`).",
    "encoder": "Batch columns -> one `[B, d]` tensor; the outputs of all encoders are concatenated "
               "into `x [B, D]` (`model.encoders`). Injected: `feature_info` (`embedding`: also "
               "`task_names`, for its per-task tables; the sequence encoders: `tables`, the shared id "
               "tables bound after every encoder is built, and `target-attention` `task_names`).",
    "backbone": "`x [B, D]` -> one representation `[B, H_t]` per task: how the tasks share "
                "(`model.backbone`). Injected: `input_dim`, `task_names` (`stem`: also `task_inputs`, "
                "whether the encoders give per-task inputs `{task: [B, D]}`; `esmm`, `escm2`, `aitm`: "
                "also `task_types`, to refuse a funnel stage that is not a binary task).",
    "tower": "A task's representation `[B, H_t]` -> its output `[B, out]` (`model.tower`, or per "
             "task `model.towers.<task>`). Injected: `input_dim`, `output_dim`.",
    "combiner": "Per-task losses -> one update: how the tasks are balanced (`combiner`). "
                "Loss-level combiners return the total loss; gradient-level ones combine per-task "
                "gradients (manual optimization). Injected: `task_names`, `weights`.",
    "sampler": "Negatives and other changes to training (`data.sampler`). Data-side samplers "
               "(`side = \"data\"`) transform the training split once per epoch (keep rows, add "
               "sampled rows); model-side samplers (`side = \"model\"`: `in-batch`, `mixed`) give a "
               "retrieval task's sampled softmax its negatives and their logQ per batch (see "
               "[ranking.md](ranking.md#samplers)). Injected: `feature_info`, `tasks`.",
    "metric": "Per-task evaluation metrics (torchmetrics objects, synced across processes), named in "
              "`tasks.<task>.metrics`; the first is the task's primary metric. Metrics with a cutoff are "
              "written `name@K` (`ndcg@10`).",
    "scheduler": "Learning-rate schedules (`optimizer.scheduler: {name: ..., interval: step|epoch, ...}`), "
                 "built on `torch.optim.lr_scheduler` and applied to every parameter group (dense, sparse "
                 "tables, a text encoder's own rate), each from its own rate. Injected into `build`: "
                 "`total_steps`, the run's length in the interval's units (see [resume.md](resume.md)).",
}


def _hook_intro(hook: str) -> str:
    """The first sentence of a hook's docstring in ``mtlframe/hookspecs.py``: the intro of a kind that
    ``KIND_INTRO`` does not describe (yet), so that every kind of the registry gets a section."""
    from mtlframe import hookspecs

    return _first_sentence(_rst_to_md((getattr(hookspecs, hook).__doc__ or "").split("\n\n")[0]))


def _plugin_modules() -> list[Any]:
    mods = []
    for plugin_py in sorted(REPO.glob("plugins/*/src/*/plugin.py")):
        src = str(plugin_py.parents[1])
        if src not in sys.path:
            sys.path.insert(0, src)
        mods.append(importlib.import_module(f"{plugin_py.parent.name}.plugin"))
    return mods


def _rst_to_md(text: str) -> str:
    text = re.sub(r":\w+:`~?([\w.]+\.)?([\w]+)`", r"`\2`", text)
    text = text.replace("``", "`")
    return re.sub(r"\s+", " ", text).strip()


def _first_sentence(text: str) -> str:
    """The first sentence that cites a year (else the first sentence). Sentences end at a ``. ``
    after a word of 3+ characters, before a capital, so initials (``F. Maxwell``) and ``et al.,``
    do not cut a citation short."""
    sentences = [t.strip() for t in re.split(r"(?<=\S{3}\.)\s+(?=[A-Z])", text) if t.strip()]
    for sentence in sentences:
        if re.search(r"\b(19|20)\d\d\b", sentence):
            return sentence
    return sentences[0] if sentences else text


def _paper(module_doc: str) -> str:
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", module_doc or "") if p.strip()]
    for p in paragraphs[1:]:
        if p.startswith(("Source:", "Reference:")):
            return _first_sentence(_rst_to_md(p.split(":", 1)[1]))
    for p in paragraphs[1:]:
        if re.search(r'"[^"]{8,}"', p) and re.search(r"\b(19|20)\d\d\b", p) and not p.startswith(("*", "-", "1.")):
            return _first_sentence(_rst_to_md(p))
    if paragraphs:
        m = re.search(r"\(([^()]*\b(19|20)\d\d[^()]*)\)", paragraphs[0])
        if m:
            return _rst_to_md(m.group(1))
    return ""


def _args_doc(doc: str) -> dict[str, str]:
    """``name -> description`` from a Google-style ``Args:`` section."""
    lines = (doc or "").expandtabs().splitlines()
    out: dict[str, str] = {}
    for i, line in enumerate(lines):
        if line.strip() == "Args:":
            base = len(line) - len(line.lstrip())
            entry_indent = None
            current: list[str] | None = None
            for raw in lines[i + 1:]:
                if not raw.strip():
                    continue
                indent = len(raw) - len(raw.lstrip())
                if indent <= base:
                    break
                if entry_indent is None:
                    entry_indent = indent
                m = re.match(r"\s*([\w, ]+):\s*(.*)$", raw)
                if indent == entry_indent and m:
                    current = [m.group(2)]
                    for name in m.group(1).split(","):
                        out[name.strip()] = current  # type: ignore[assignment]
                elif current is not None:
                    current.append(raw.strip())
            break
    return {k: _rst_to_md(" ".join(v)) for k, v in out.items()}  # type: ignore[arg-type]


def _default(value: Any) -> str:
    if value is inspect.Parameter.empty:
        return "required"
    try:
        return f"`{json.dumps(value)}`"
    except TypeError:
        return f"`{value!r}`"


def _annotation(param: inspect.Parameter) -> str:
    ann = param.annotation
    if ann is inspect.Parameter.empty:
        return ""
    text = ann if isinstance(ann, str) else inspect.formatannotation(ann)
    return "`" + text.replace("|", "\\|") + "`"


def parameters(factory: Any) -> list[tuple[str, str, str, str]]:
    """``(name, type, default, meaning)`` of each recipe parameter (signature minus injected)."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    injected = set(getattr(factory, "injected", ()))
    docs: dict[str, str] = {}
    for cls in reversed(inspect.getmro(factory)) if inspect.isclass(factory) else [factory]:
        docs.update({k: v for k, v in _args_doc(cls.__doc__ or "").items() if v})
    rows = []
    for name, p in inspect.signature(target).parameters.items():
        if name in ("self", "name") or name in injected or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        rows.append((name, _annotation(p), _default(p.default), docs.get(name, "").replace("|", "\\|")))
    return rows


def render() -> str:
    from mtlframe.registry import KINDS, build_registry

    reg = build_registry(load_entry_points=False, extra_plugins=_plugin_modules(), strict=True)
    out = ["# Components", "",
           "Every component mtlframe ships, and those of the plugins in `plugins/`, by kind. A recipe "
           "names a component as `{name: <name>, **parameters}`; values mtlframe knows (input widths, "
           "task names, vocabularies) are injected and never written. `mtlframe plugins` lists what is "
           "installed, including third-party plugins; a name registered by two plugins is written "
           "qualified, `<distribution>:<name>`.", "",
           "Generated by `python docs/gen_components.py` from the registry, the constructor signatures "
           "and the docstrings; do not edit by hand.", ""]
    out += ["Kinds: " + ", ".join(f"[{k}s](#{k}s)" for k in KINDS) + ".", ""]
    for kind in KINDS:
        out += [f"## {kind}s", "", KIND_INTRO.get(kind) or _hook_intro(KINDS[kind]), ""]
        for comp in reg.all(kind):
            factory = comp.load()
            module = importlib.import_module(getattr(factory, "__module__", None) or type(factory).__module__)
            provider = "" if comp.provider.distribution == "mtlframe" else f" (plugin `{comp.provider.distribution}`)"
            summary = comp.spec.summary.rstrip(".")
            out += [f"### `{comp.name}`{provider}", "", summary[:1].upper() + summary[1:] + ".", ""]
            paper = _paper(module.__doc__ or "")
            if kind == "metric":
                out += [f"Applies to {', '.join(factory.task_types)} tasks; "
                        f"{'higher' if factory.higher_is_better else 'lower'} is better. "
                        f"{factory.summary[:1].upper() + factory.summary[1:]}.", ""]
                if getattr(factory, "cutoff", False):
                    out += [(f"Written `{comp.name}@K` (K a positive integer: the top K rows of each group), "
                             f"e.g. `{comp.name}@10`."), ""]
                if getattr(factory, "grouped", False):
                    out += [("Grouped: computed per value of the recipe's `metrics_group` column (per user), "
                             "then averaged over the groups; see "
                             "[recipes.md](recipes.md#grouped-metrics-gauc-ndcgk-recallk-hitratek)."), ""]
                if getattr(factory, "paper", ""):
                    out += [f"Paper / source: {factory.paper}", ""]
                continue
            out += [f"Paper / source: {paper or 'none (a standard building block)'}", ""]
            qual = f"{factory.__module__}.{factory.__qualname__}"
            rows = parameters(factory)
            if rows:
                out += [f"`{qual}` — recipe parameters:", "", "| parameter | type | default | meaning |",
                        "|---|---|---|---|"]
                out += [f"| `{n}` | {t} | {d} | {m} |" for n, t, d, m in rows]
            else:
                out += [f"`{qual}` — no recipe parameters."]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/components.md is out of date")
    args = ap.parse_args(argv)
    return write_or_check(OUT, render(), args.check, "python docs/gen_components.py")


def write_or_check(out: Path, text: str, check: bool, command: str) -> int:
    """Write a generated page, or with ``check`` compare it with the committed one: 0 when written or
    up to date, 1 (and the command that regenerates it on stderr) when out of date."""
    if check:
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            print(f"{out} is out of date; run: {command}", file=sys.stderr)
            return 1
        return 0
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
