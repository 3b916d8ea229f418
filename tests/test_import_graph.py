"""The import graph of sdxlc/ and runtime/ keeps the architecture's boundaries.

Every module is parsed (imports at module level and inside functions alike, those under
`if TYPE_CHECKING:` left out) and these hold:
  - no cycle between modules (a package `__init__` importing its own submodules does not count);
  - the runtime reaches the compiler only through `sdxlc.plan`, and `sdxlc.plan` imports nothing else
    of sdxlc, so what the runtime loads of the compiler stays inside the plan package;
  - sdxlc never imports the ML stack;
  - importing the training entry loads neither lark, jsonschema nor the compiler pipeline.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sdxlc", "runtime")
ML_STACK = ("torch", "diffusers", "transformers", "accelerate", "peft", "bitsandbytes", "safetensors")
PLAN = "sdxlc.plan"

Graph = dict[str, dict[str, int]]  # module → {imported project module: line of the first import}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def is_package(name: str) -> bool:
    path = modules().get(name)
    return path is not None and path.name == "__init__.py"


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import that can run, at any depth (functions, classes, try blocks)."""
    for node in ast.iter_child_nodes(tree):
        for child in node.orelse if isinstance(node, ast.If) and _type_checking(node) else [node]:
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child
            yield from import_nodes(child)


def imported_names(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names an import statement names: `from a import b` gives `a.b`, which lands in the
    module `a.b` when there is one, else in `a` (`project_module`)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module if is_package(module) else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    return [f"{base}.{alias.name}" for alias in node.names]


def project_module(name: str) -> str | None:
    """The project module a dotted name lands in (the longest known prefix), or None."""
    while name:
        if name in modules():
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def parsed() -> dict[str, list[tuple[str, int]]]:
    """Every module's imports: (dotted name, line), project and third-party alike."""
    out = {}
    for module, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        nodes = import_nodes(tree)
        out[module] = [(name, node.lineno) for node in nodes for name in imported_names(module, node)]
    return out


@cache
def graph() -> Graph:
    edges: Graph = {module: {} for module in modules()}
    for module, imports in parsed().items():
        for name, line in imports:
            target = project_module(name)
            if target is not None and target != module:
                edges[module].setdefault(target, line)
    return edges


def own_submodule(module: str, target: str) -> bool:
    return is_package(module) and target.startswith(module + ".")


def cycles(edges: Graph) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a path."""
    counted = {m: [t for t in targets if not own_submodule(m, t)] for m, targets in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in counted.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(counted):
        if node not in index:
            visit(node)
    return [cycle_path(counted, set(component)) for component in components]


def cycle_path(counted: dict[str, list[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first inside the component)."""
    start = min(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in counted.get(node, []):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if target in component and target not in came_from and target != start:
                    came_from[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


def describe(path: list[str]) -> str:
    edges = graph()
    return " → ".join(
        f"{a} (line {edges[a][b]})" for a, b in zip(path, path[1:], strict=False)
    ) + f" → {path[-1]}"


def test_no_import_cycles() -> None:
    found = cycles(graph())
    assert not found, "import cycles:\n  " + "\n  ".join(describe(path) for path in found)


def inside_plan(module: str) -> bool:
    return module == PLAN or module.startswith(PLAN + ".")


def where(module: str, line: int) -> str:
    path = modules().get(module)
    return f"{path.relative_to(ROOT) if path else module}:{line}"


def compiler_imports(edges: Graph) -> list[str]:
    """Imports by which the runtime, directly or through sdxlc.plan, reaches sdxlc outside sdxlc.plan."""
    found = []
    for module, targets in edges.items():
        if module.split(".")[0] == "runtime" or inside_plan(module):
            found += [f"{where(module, line)} imports {target}" for target, line in targets.items()
                      if target.split(".")[0] == "sdxlc" and target != "sdxlc" and not inside_plan(target)]
    return sorted(found)


def ml_imports(imports: dict[str, list[tuple[str, int]]]) -> list[str]:
    """Imports of the ML stack by sdxlc."""
    return sorted(f"{where(module, line)} imports {name}"
                  for module, names in imports.items() if module.split(".")[0] == "sdxlc"
                  for name, line in names if name.split(".")[0] in ML_STACK)


def compiler_machinery(loaded: set[str]) -> list[str]:
    """What of lark, jsonschema and sdxlc outside sdxlc.plan a set of loaded modules holds."""
    return sorted(m for m in loaded if m.split(".")[0] in ("lark", "jsonschema") or m == "sdxlc.pipeline"
                  or (m.split(".")[0] == "sdxlc" and m != "sdxlc" and not inside_plan(m)))


def test_the_runtime_imports_only_the_plan_package_of_the_compiler() -> None:
    found = compiler_imports(graph())
    assert not found, f"outside {PLAN}:\n  " + "\n  ".join(found)


def test_the_compiler_never_imports_the_ml_stack() -> None:
    found = ml_imports(parsed())
    assert not found, "the ML stack in sdxlc:\n  " + "\n  ".join(found)


LOADED = "import sys, runtime.train.run\nprint(*sorted(sys.modules))"


def test_the_training_entry_loads_no_compiler_machinery() -> None:
    command = [sys.executable, "-c", LOADED]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = compiler_machinery(set(done.stdout.split()))
    assert not found, f"`import runtime.train.run` loads {', '.join(found)}"


# ---- the checks themselves ------------------------------------------------------------------------


def test_the_graph_sees_function_level_and_from_imports() -> None:
    edges = graph()
    assert "runtime.train.run" in edges["runtime"]  # inside `__getattr__`
    assert "sdxlc.plan.files" in edges["runtime.methods.lora"]  # `from sdxlc.plan.files import …`
    assert "runtime" in edges["runtime.methods.lora"]  # `from runtime import RunError`: the package


def test_cycles_are_found_and_a_package_importing_its_submodule_is_not_one() -> None:
    edges: Graph = {"a.x": {"a.y": 1}, "a.y": {"a.z": 2}, "a.z": {"a.x": 3}, "b": {"c": 1}, "c": {}}
    assert cycles(edges) == [["a.x", "a.y", "a.z", "a.x"]]
    assert cycles({"runtime": {"runtime.train.run": 1}, "runtime.train.run": {"runtime": 2}}) == []
    assert cycles({"runtime.a": {"runtime.b": 1}, "runtime.b": {"runtime.a": 1}}) != []


def test_the_boundary_checks_flag_what_they_forbid() -> None:
    edges: Graph = {"runtime.train.x": {"sdxlc.resolve.core": 3, "sdxlc.plan.files": 4},
                    "sdxlc.plan.y": {"sdxlc.lang.parser": 5}, "sdxlc.cli.z": {"runtime.train.x": 6}}
    assert compiler_imports(edges) == ["runtime.train.x:3 imports sdxlc.resolve.core",
                                       "sdxlc.plan.y:5 imports sdxlc.lang.parser"]
    imports = {"sdxlc.estimate.q": [("torch.nn", 7), ("json", 1)], "runtime.r": [("torch", 1)]}
    assert ml_imports(imports) == ["sdxlc.estimate.q:7 imports torch.nn"]
    loaded = {"sdxlc", "sdxlc.plan.contract", "sdxlc.pipeline", "lark.lark", "jsonschema", "torch"}
    assert compiler_machinery(loaded) == ["jsonschema", "lark.lark", "sdxlc.pipeline"]
