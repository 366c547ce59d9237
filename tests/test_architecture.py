"""Guards that keep the package's shape: layers import only downward, no import cycle (function-level
imports included), Flower only under ``fl/``, peft's private custom-module API in one place."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fedp2eft"

# Lowest first; a module may import its own layer (without cycles) and the layers below it.
LAYERS = [
    {"fedp2eft", "errors", "atomic", "offline", "memory", "schema"},
    {"data", "adapters", "models"},
    {"evaluation", "training"},
    {"tasks", "psg"},
    {"methods"},
    {"config"},
    {"setup"},
    {"stages", "report", "progress", "benchkit", "tracking"},
    {"bases"},
    {"fl"},
    {"pipeline", "export_client"},
    {"cli", "__main__"},
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def module_name(path: Path) -> str:
    parts = ["fedp2eft", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    rel = name.split(".")[1:]
    return (PACKAGE.joinpath(*rel).with_suffix(".py")).is_file() or (PACKAGE.joinpath(*rel) / "__init__.py").is_file()


def imports(path: Path) -> tuple[set[str], set[str]]:
    """``(package modules, third-party top-level names)`` imported anywhere in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inner, outer = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "fedp2eft":
                outer.add(target.split(".")[0])
                continue
            submodules = {f"{target}.{a.name}" for a in node.names if is_module(f"{target}.{a.name}")}
            inner.update(submodules)
            if node.module is not None or len(submodules) < len(node.names):  # `from . import mod` needs only mod
                inner.add(target)
        elif isinstance(node, ast.Import):
            for a in node.names:
                (inner if a.name.split(".")[0] == "fedp2eft" else outer).add(a.name if a.name.startswith("fedp2eft")
                                                                             else a.name.split(".")[0])
    return inner, outer


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p)[0] - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def component(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "fedp2eft"


def test_every_module_has_a_layer():
    assert {component(m) for m in graph()} <= set(RANK)


def test_layers_import_only_downward():
    upward = [f"{m} -> {d}" for m, deps in graph().items() for d in deps
              if RANK[component(d)] > RANK[component(m)]]
    assert not upward, upward


def test_no_import_cycle():
    g = graph()
    # a package's __init__ is imported before any of its modules: an edge into it from its own
    # submodule is only a cycle when that __init__ imports back
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g.get(node, ())):
            if dep not in g:
                continue
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, [" -> ".join(c) for c in cycles[:5]]


def test_only_fl_imports_flower():
    offenders = [module_name(p) for p in PACKAGE.rglob("*.py")
                 if "flwr" in imports(p)[1] and component(module_name(p)) != "fl"]
    assert not offenders, offenders


def test_peft_private_custom_module_api_used_in_one_place():
    users = [module_name(p) for p in PACKAGE.rglob("*.py") if "_register_custom_module" in p.read_text()]
    assert len(users) <= 1, users


def test_only_tasks_import_a_tasks_internals():
    """Outside ``tasks/`` a task is reached through the package (``fedp2eft.tasks``: the protocol, the
    registry, the built-in task objects), never through one task's module (issue 27)."""
    offenders = [f"{m} -> {d}" for m, deps in graph().items() if component(m) != "tasks"
                 for d in deps if d.startswith("fedp2eft.tasks.") and d != "fedp2eft.tasks.registry"]
    assert not offenders, offenders


def test_no_task_is_assumed_outside_tasks_and_setup():
    """Below ``setup/`` the task is always passed in (a client's ``task.problem``, a stage's ``context.problem``):
    no module outside ``tasks/`` and ``setup/`` names a built-in task such as ``CLASSIFICATION``, so no
    signature can default to one (issue 27)."""
    builtin = {"CLASSIFICATION", "GENERATION"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if component(module_name(path)) in ("tasks", "setup"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else \
                node.name if isinstance(node, ast.alias) else None
            if name in builtin:
                offenders.append(f"{module_name(path)}:{node.lineno}" if hasattr(node, "lineno") else module_name(path))
    assert not offenders, offenders
