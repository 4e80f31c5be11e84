"""The house's structure, read from the source (no imports of mixir needed):

- the import graph of ``mixir`` (every import, function-local ones included) is acyclic;
- dependencies point one way: dsl → reference → autotune (engine) → lowering (common, then the
  families) → library → verify / tuning → cli; ``autotune`` imports nothing from ``lowering``;
  ``lowering/common`` imports no family; no family imports another;
- no family name is compared as a string outside its own package;
- no module is over 500 lines.
"""
import ast
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mixir")
FAMILY_DIR = os.path.join(ROOT, "lowering")
MAX_LINES = 500


def _modules() -> dict:
    mods = {}
    for d, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                mods[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return mods


MODULES = _modules()
FAMILIES = sorted(n for n in os.listdir(FAMILY_DIR)
                  if os.path.isfile(os.path.join(FAMILY_DIR, n, "family.py")))


def _targets(module: str, node) -> list:
    """The modules an import statement names (a ``from X import y`` names X and, when y is a
    submodule, X.y). Imports under ``if TYPE_CHECKING:`` are not run and are left out."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    is_pkg = MODULES[module].endswith("__init__.py")
    parts = module.split(".") if is_pkg else module.split(".")[:-1]
    if node.level:
        parts = parts[: len(parts) - node.level + 1]
        prefix = ".".join(parts + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix] + [f"{prefix}.{a.name}" for a in node.names]


def _graph() -> dict:
    graph = {}
    for mod, path in MODULES.items():
        tree = ast.parse(open(path).read())
        skip = {id(x) for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
                for x in ast.walk(n)}
        edges = set()
        for n in ast.walk(tree):
            if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skip:
                edges |= {t for t in _targets(mod, n) if t in MODULES and t != mod}
        graph[mod] = edges
    return graph


GRAPH = _graph()


def _cycles(graph) -> list:
    """Strongly connected components with more than one module (Tarjan), except a package with
    one of its own submodules (a package re-exporting a submodule is a benign pair)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 2 or (len(comp) == 2 and not max(comp, key=len).startswith(min(comp, key=len) + ".")):
                out.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_import_graph_is_acyclic():
    assert _cycles(GRAPH) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def _layer(mod: str) -> int:
    parts = mod.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top in ("errors", "tiles", "version"):
        return 0
    if top == "dsl":
        return 1
    if top == "reference":
        return 2
    if top == "autotune":
        return 3
    if top == "lowering":
        if len(parts) == 2 or parts[2] in ("common", "family"):
            return 4
        return 5
    if top == "distributed":
        # the shared machinery of context parallelism, which the family packages import, sits
        # beside lowering.common; a facade over one family (distributed.attention) above them
        core = ("group", "collectives", "passing")
        return 4 if len(parts) == 2 or parts[2] in core else 7
    if top in ("library", "testing"):
        return 6
    if top in ("attention", "verify", "tuning"):
        return 7
    if top in ("cli", "__main__") or mod == "mixir":
        return 8
    return 7


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_dependencies_point_one_way(mod):
    """A module imports only modules of its own layer or below (a family package counts as its
    own layer: it may import common machinery and the layers below, never another family)."""
    bad = []
    for dep in GRAPH[mod]:
        if _layer(dep) > _layer(mod):
            bad.append(dep)
        fam, dfam = (m.split(".")[2] if m.startswith("mixir.lowering.") and len(m.split(".")) > 3 else None
                     for m in (mod, dep))
        if fam in FAMILIES and dfam in FAMILIES and fam != dfam:
            bad.append(dep)
    assert bad == [], f"{mod} imports {bad}"


def test_autotune_engine_imports_no_lowering():
    bad = {m: sorted(d for d in deps if d.startswith("mixir.lowering") or d == "mixir")
           for m, deps in GRAPH.items() if m.startswith("mixir.autotune")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_every_family_is_a_package_with_the_contract():
    assert {"gated_linear", "householder", "lti", "rnn", "attention"} <= set(FAMILIES)
    for fam in FAMILIES:
        src = open(os.path.join(FAMILY_DIR, fam, "family.py")).read()
        assert src.count("register(") == 1, f"{fam}/family.py registers once"


def test_no_family_name_compared_as_a_string_outside_its_package():
    names = "|".join(FAMILIES)
    pat = re.compile(r'''[=!]=\s*["'](%s)["']|["'](%s)["']\s*[=!]=|\bin\s*\(\s*["'](%s)["']''' % (names, names, names))
    bad = []
    for mod, path in MODULES.items():
        for i, line in enumerate(open(path), 1):
            m = pat.search(line)
            if m:
                fam = next(g for g in m.groups() if g)
                if os.path.join("lowering", fam) + os.sep not in path:
                    bad.append(f"{os.path.relpath(path, ROOT)}:{i}")
    assert bad == []


def test_no_module_over_500_lines():
    long = {os.path.relpath(p, ROOT): n for p in MODULES.values()
            if (n := sum(1 for _ in open(p))) > MAX_LINES}
    assert long == {}


def test_assume_constant_marks_as_torch_does():
    """``common.call.assume_constant`` sets the attribute torch's ``assume_constant_result`` sets
    (without importing torch._dynamo at import time); a torch that marks differently fails here."""
    import torch

    from mixir.lowering.common.call import assume_constant

    def ours():
        return 0

    def theirs():
        return 0
    assume_constant(ours)
    torch.compiler.assume_constant_result(theirs)
    marks = {k: v for k, v in vars(theirs).items()}
    assert marks == {"_dynamo_marked_constant": True}
    assert {k: v for k, v in vars(ours).items()} == marks


def test_importing_the_library_does_not_import_dynamo():
    code = "import sys, mixir.library, mixir.attention; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
