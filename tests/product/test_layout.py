"""The package's folders are its architecture (docs/architecture.md): imports run one way between the parts,
no two modules import each other (directly or round a circle), the library never imports the UI, and no
file grows past what one reader holds in mind."""
import ast
import os

import pytest

from tests.conftest import ROOT

# part -> the parts it may import (besides itself). The arrows of docs/architecture.md.
ALLOWED = {
    "base": set(),  # fileio, nil, query: below everything
    "model": {"base"},
    "data": {"base", "model"},
    "kb": {"base", "model", "data"},
    "explain": {"base", "model", "data"},
    "train": {"base", "model", "data"},
    "linker": {"base", "model", "data", "kb", "explain", "train"},
    "door": {"base", "model", "data", "kb", "explain", "train", "linker"},  # the package, cli/, errors, __main__
}
PACKAGES = {"model", "data", "kb", "explain", "train"}
BASE = {"fileio", "nil", "query"}
DOOR = {"cli", "errors", "__main__"}
UI = ("gradio", "plotly", "demo")  # the library never imports the page's toolkit or the page
MAX_LINES = {"mimic": 600, "demo": 400}


def part_of(module: str) -> str:
    """The part a module of `mimic` belongs to; ValueError for a module no part holds (place it first)."""
    names = module.split(".")
    if len(names) == 1:
        return "door"
    top = names[1]
    if top in PACKAGES:
        return top
    if top in BASE:
        return "base"
    if top == "linker":
        return "linker"
    if top in DOOR:
        return "door"
    raise ValueError(f"{module} belongs to no part: add it to a package, or to tests/product/test_layout.py's table "
                     f"and docs/architecture.md")


def modules(root: str, package: str = "mimic") -> dict:
    """{dotted module name: file path} of every .py file under root/package."""
    found = {}
    for folder, _, files in os.walk(os.path.join(root, package)):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                name = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                found[name.removesuffix(".__init__")] = path
    return found


def _imported(module: str, path: str, node, known: dict) -> list:
    """The modules of `known` an import statement names (a package's module when `from pkg import module`)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    if node.level:
        base = package.split(".")[:len(package.split(".")) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module
    return [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]


def import_graph(root: str, package: str = "mimic") -> dict:
    """{module: the package's modules it imports}, function-level (lazy) imports included."""
    known = modules(root, package)
    graph = {}
    for module, path in known.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets.update(_imported(module, path, node, known))
        graph[module] = {t for t in targets if t in known and t != module}
    return graph


def external_imports(root: str, package: str = "mimic") -> dict:
    """{module: top-level names of what it imports from outside the package}."""
    out = {}
    for module, path in modules(root, package).items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names.add(node.module.split(".")[0])
        out[module] = names - {package}
    return out


def circles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def against_the_arrows(graph: dict) -> list:
    """"a imports b" lines where a's part may not import b's."""
    wrong = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            mine, theirs = part_of(module), part_of(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    return wrong


# -- the real package ---------------------------------------------------------------------------------

def test_every_module_has_a_part():
    for module in modules(ROOT):
        part_of(module)  # raises, naming the module


def test_imports_run_one_way_between_the_parts():
    assert against_the_arrows(import_graph(ROOT)) == []


def test_no_circle_of_imports():
    assert circles(import_graph(ROOT)) == []


def test_the_library_never_imports_the_ui():
    offenders = {m: sorted(n & set(UI)) for m, n in external_imports(ROOT).items() if n & set(UI)}
    assert offenders == {}


@pytest.mark.parametrize("folder", sorted(MAX_LINES))
def test_no_file_is_too_long_to_read(folder):
    limit = MAX_LINES[folder]
    long = {os.path.relpath(path, ROOT): count for path, count in
            ((p, sum(1 for _ in open(p, encoding="utf-8"))) for p in modules(ROOT, folder).values()) if count > limit}
    assert long == {}, f"split these files (at most {limit} lines in {folder}/)"


# -- the checks themselves, on a package made to break them -------------------------------------------

def _write(root, files: dict):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checks_find_a_circle_a_wrong_arrow_and_a_ui_import(tmp_path):
    _write(tmp_path, {
        "mimic/__init__.py": "",
        "mimic/model/__init__.py": "",
        "mimic/model/a.py": "def f():\n    from . import b  # lazy: still an import\n",
        "mimic/model/b.py": "from .a import f\n",
        "mimic/model/c.py": "from ..kb.store import KBStore\nimport gradio as gr\n",
        "mimic/kb/__init__.py": "",
        "mimic/kb/store.py": "from ..model.c import x\nfrom ..linker import Linker\n",
        "mimic/linker.py": "from .kb import store\nimport mimic.model.a\n",
    })
    graph = import_graph(str(tmp_path))
    assert graph["mimic.linker"] == {"mimic.kb.store", "mimic.model.a"}
    assert sorted(circles(graph)) == [["mimic.kb.store", "mimic.linker", "mimic.model.c"], ["mimic.model.a", "mimic.model.b"]]
    assert against_the_arrows(graph) == ["mimic.kb.store (kb) imports mimic.linker (linker)",
                                         "mimic.model.c (model) imports mimic.kb.store (kb)"]
    assert external_imports(str(tmp_path))["mimic.model.c"] == {"gradio"}


def test_a_module_outside_every_part_is_named():
    with pytest.raises(ValueError, match="mimic.helpers belongs to no part"):
        part_of("mimic.helpers")
