"""The packages' shape: imports run bench -> gpt2 -> gpt2_kernels and never back, no import
cycle inside a package (imports inside functions count: they are still a cycle for a reader),
no module named after a standard-library module, and nothing of ours importable as `kernels`,
the name of Hugging Face's package that transformers requires."""

import ast
import sys

import pytest

from .conftest import ROOT

PACKAGES = ("gpt2_kernels", "gpt2", "bench")  # each may import only those after it... reversed
LAYER = {"bench": 2, "gpt2": 1, "gpt2_kernels": 0}


def _imports(pkg):
    """{module: set of modules of any of our packages it imports}, relative imports resolved."""
    graph = {}
    for path in sorted((ROOT / pkg).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if parts[-1] == "__init__" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = ".".join(base[: len(base) - node.level + 1])
                    mod = f"{base}.{node.module}" if node.module else base
                else:
                    mod = node.module
                for a in node.names:  # `from . import x` imports module x, `from .m import f` module m
                    sub = f"{mod}.{a.name}"
                    found.add(sub if _is_module(sub) else mod)
        graph[name] = {m for m in found if m.split(".")[0] in LAYER}
    return graph


def _is_module(name):
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _known(graph, mod):
    while mod and mod not in graph:
        mod = mod.rpartition(".")[0]
    return mod


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_import_cycle_inside_a_package(pkg):
    graph = _imports(pkg)
    edges = {m: {_known(graph, t) for t in ts if t.split(".")[0] == pkg} - {m, pkg, None, ""}
             for m, ts in graph.items()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(edges.get(m, ())):
            if state.get(t) == "open":
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, f"import cycles in {pkg}/: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_imports_run_from_bench_to_gpt2_to_gpt2_kernels(pkg):
    back = sorted({(m, t) for m, ts in _imports(pkg).items() for t in ts if LAYER[t.split(".")[0]] > LAYER[pkg]})
    assert not back, f"{pkg} imports a package above it: {back}"


def test_nothing_of_ours_is_named_kernels_or_after_the_standard_library():
    assert not (ROOT / "kernels").exists() and not (ROOT / "kernels.py").exists()
    ours = {p.stem for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")} | set(PACKAGES)
    assert "kernels" not in ours
    assert not ours & set(sys.stdlib_module_names), ours & set(sys.stdlib_module_names)
