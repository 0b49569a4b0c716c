"""The house rules, read from hwai/'s imports with `ast`: no import cycle (between modules and between
packages), no import from a lower layer to a higher one, no file over 400 lines, no import of another module's
private name, no function over 60 lines without a one-line reason at its top."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "hwai"

# bottom of the house first: a unit imports only from its own layer or the ones before it (DESIGN.md)
LAYERS = [
    ("errors", "io", "lazy", "text"),
    ("data", "models", "targets"),
    ("graph",),
    ("measure",),
    ("memory",),
    ("cost",),
    ("train",),
    ("passes",),
    ("runtimes",),
    ("calibrate",),
    ("report",),
    ("profile",),
    ("search", "nas", "shard", "snn"),
    ("cli",),
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60  # lines of a function's body (its signature, e.g. a command's options, not counted)
REASON = "# long:"  # a longer function's first line after its docstring: "# long: <why it is one function>"


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules:
            return ".".join(parts[:i])
    return None


def imports(root: Path = ROOT) -> tuple[dict[str, set[str]], list[str]]:
    """(module -> the hwai modules it imports, anywhere in the file; [private-name imports as text])."""
    modules = _modules(root)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "hwai"]
                edges[module] |= {t for t in map(lambda n: _resolve(n, modules), targets) if t and t != module}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                if base.split(".")[0] != "hwai":
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in modules:  # `from hwai.x import submodule`
                        target = full
                    else:
                        target = _resolve(base, modules)
                        if alias.name.startswith("_") and not alias.name.startswith("__") and target != module:
                            private.append(f"{module} imports {alias.name} from {base}")
                    if target and target != module and not (target == "hwai" and alias.name.startswith("__")):
                        edges[module].add(target)
    return edges, private


def unit(module: str) -> str:
    """The top-level piece of the house a module belongs to: hwai.search.compress -> search."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "hwai"


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Imports from a lower unit to a higher one (the root package and `__main__` stand outside the layers)."""
    wrong = []
    for module, targets in edges.items():
        if unit(module) in ("hwai", "__main__"):
            continue
        for target in targets:
            if unit(target) == "hwai":
                wrong.append(f"{module} imports the hwai package itself (import the module it needs)")
            elif LAYER[unit(target)] > LAYER[unit(module)]:
                wrong.append(f"{module} ({unit(module)}) imports {target} ({unit(target)}), a higher layer")
    return wrong


def long_functions(root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = node.body[0]
                body_start = first.lineno - 1  # the body's first statement (its docstring, if any)
                length = node.end_lineno - body_start  # the body: a command's option list is not its length
                docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str)
                head = lines[node.lineno - 1:(first.end_lineno if docstring else body_start) + 1]
                if length > MAX_FUNCTION_LINES and not any(line.strip().startswith(REASON) for line in head):
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_every_unit_has_a_layer():
    assert {unit(m) for m in _modules(ROOT)} - {"hwai", "__main__"} <= set(LAYER)


def test_no_import_cycles_between_modules_or_packages():
    edges, _ = imports()
    assert cycles(edges) == []
    units: dict[str, set[str]] = {}
    for module, targets in edges.items():
        units.setdefault(unit(module), set()).update(unit(t) for t in targets if unit(t) != unit(module))
    assert cycles(units) == []


def test_imports_flow_downward():
    edges, _ = imports()
    assert upward(edges) == []


def test_no_import_of_another_modules_private_name():
    _, private = imports()
    assert private == []


def test_files_and_functions_stay_small():
    big = [f"{p.relative_to(ROOT.parent)} ({n} lines)" for p in ROOT.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert big == []
    assert long_functions() == []


@pytest.fixture
def house(tmp_path):
    """A tiny package tree in hwai's shape, to show each rule catches what it is for."""
    def write(files: dict[str, str]) -> Path:
        for name, text in files.items():
            path = tmp_path / "hwai" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return tmp_path / "hwai"
    return write


def test_the_rules_catch_what_they_are_for(house):
    root = house({"__init__.py": "", "errors.py": "", "graph/__init__.py": "from hwai.cost import x\n",
                  "cost/__init__.py": "from hwai.graph import y\nfrom hwai.train import _helper\n",
                  "train.py": "def _helper(): pass\n", "memory/a.py": "from hwai.memory import b\n",
                  "memory/b.py": "from . import a\n", "memory/__init__.py": ""})
    edges, private = imports(root)
    assert ["hwai.cost", "hwai.graph"] in cycles(edges)
    assert ["hwai.memory.a", "hwai.memory.b"] in cycles(edges)
    assert any("hwai.graph (graph) imports hwai.cost (cost)" in w for w in upward(edges))
    assert private == ["hwai.cost imports _helper from hwai.train"]
    body = "\n".join(f"    x = {i}" for i in range(70))
    root = house({"long.py": f"def f():\n{body}\n",
                  "ok.py": f'def g():\n    """Doc\n    string."""\n    # long: a test table\n{body}\n'})
    assert [line.split()[1] for line in long_functions(root)] == ["f"]
