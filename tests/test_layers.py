"""The package's modules form layers: no import cycle, and no module imports from a layer above its own.

Every import statement counts, at any depth (a lazy import inside a function is still a dependency), read with
``ast`` so that nothing is imported to check it. Layers, lowest first::

    0 base      errors, version, files and devices           4 run        config, presets, run folder, checkpoints
    1 math      schedule, diffusion, sampling, likelihood    5 training   builders, the loop, state, hooks
    2 models    the UNet and its layers, LoRA layers         6 pipeline   a loaded run, sampling requests
    3 data      data sets, loaders, feature extractors       7 tasks      eval, LoRA runs, the demo
                                                              8 commands   the command line

The package root (``ddpmkit/__init__.py``) is the public API above all of them: nothing inside imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ddpmkit"

# module (or package prefix) -> layer; the longest matching prefix wins
LAYERS: dict[str, int] = {
    "ddpmkit.errors": 0, "ddpmkit.version": 0, "ddpmkit.atomic": 0, "ddpmkit.device": 0, "ddpmkit.malloc": 0,
    "ddpmkit.fetch": 0, "ddpmkit.viz": 0,
    "ddpmkit.schedule": 1, "ddpmkit.diffusion": 1, "ddpmkit.sampling": 1, "ddpmkit.timestep_sampler": 1,
    "ddpmkit.stochastic_samplers": 1,
    "ddpmkit.likelihood": 1, "ddpmkit.editing": 1, "ddpmkit.editing.methods": 1,
    "ddpmkit.models": 2, "ddpmkit.lora": 2, "ddpmkit.lora.layers": 2, "ddpmkit.lora.adapter": 2,
    "ddpmkit.data": 3, "ddpmkit.editing.inputs": 3,
    "ddpmkit.eval.features": 3, "ddpmkit.eval.inception": 3, "ddpmkit.eval.classifier": 3, "ddpmkit.eval.fid": 3,
    "ddpmkit.eval.kid": 3, "ddpmkit.eval.reference": 3, "ddpmkit.eval.weights": 3, "ddpmkit.eval.images": 3,
    "ddpmkit.config": 4, "ddpmkit.presets": 4, "ddpmkit.run": 4, "ddpmkit.checkpoint": 4,
    "ddpmkit.training": 5,
    "ddpmkit.pipeline": 6, "ddpmkit.request": 6,
    "ddpmkit.eval": 7, "ddpmkit.lora.merged_run": 7, "ddpmkit.demo": 7, "ddpmkit.export": 7, "ddpmkit.export.cli": 8,
    "ddpmkit.distill": 7,
    "ddpmkit.cli": 8, "ddpmkit.cli_args": 8, "ddpmkit.__main__": 8, "ddpmkit.data.cli": 8,
    "ddpmkit.data.__main__": 8, "ddpmkit.eval.cli": 8, "ddpmkit.lora.cli": 8, "ddpmkit.demo.cli": 8,
    "ddpmkit.editing.cli": 8,
    "ddpmkit": 9,
}
NAMES = ["base", "math", "models", "data", "run", "training", "pipeline", "tasks", "commands", "the package root"]


def modules() -> dict[str, Path]:
    found = {}
    for file in PACKAGE.rglob("*.py"):
        parts = list(file.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = file
    return found


def layer(module: str) -> int:
    prefix = module
    while prefix not in LAYERS:
        if "." not in prefix:
            raise KeyError(module)
        prefix = prefix.rpartition(".")[0]
    return LAYERS[prefix]


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (``from .x import y`` counts as x.y when that is a module, else x)."""
    found = modules()

    def resolve(name: str) -> str | None:
        while name and name not in found:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, file in found.items():
        base = module if file.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = node.module or ""
                if node.level:
                    root = base
                    for _ in range(node.level - 1):
                        root = root.rpartition(".")[0]
                    source = f"{root}.{source}" if source else root
                names = [f"{source}.{alias.name}" for alias in node.names] or [source]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "ddpmkit" and (target := resolve(name)) and target != module:
                    targets.add(target)
        # importing ddpmkit.x.y runs the package ddpmkit.x first, but that is not this module's choice: only an
        # explicit import from the package root (``from .. import __version__``) is an edge to an ancestor
        graph[module] = {t for t in targets if t == "ddpmkit" or not module.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} ({NAMES[layer(m)]}) imports {t} ({NAMES[layer(t)]})"
            for m in sorted(graph) for t in sorted(graph[m]) if layer(t) > layer(m)]


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if not any(m == p or m.startswith(p + ".") for p in LAYERS)]
    assert not unplaced, f"modules without a layer (add them to LAYERS): {unplaced}"


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(group) for group in found)


def test_no_upward_import():
    found = upward_imports(import_graph())
    assert not found, "imports from a higher layer:\n" + "\n".join(found)


def test_the_checks_can_fail():
    """The two checks see a cycle and an upward import when there is one."""
    graph = {"ddpmkit.run": {"ddpmkit.checkpoint"}, "ddpmkit.checkpoint": {"ddpmkit.run"},
             "ddpmkit.models.unet": {"ddpmkit.training.trainer"}, "ddpmkit.training.trainer": set()}
    assert cycles(graph) == [["ddpmkit.checkpoint", "ddpmkit.run"]]
    assert upward_imports(graph) == ["ddpmkit.models.unet (models) imports ddpmkit.training.trainer (training)"]


if __name__ == "__main__":  # python tests/test_layers.py: print today's cycles and upward imports
    g = import_graph()
    for group in cycles(g):
        print("cycle:", " <-> ".join(group))
    print("\n".join(upward_imports(g)) or "no upward import")
    pytest.main([__file__, "-q"])
