"""The host's import graph is what the code says: every kit import at the top of its module, no cycle, and no
module of kit/ pulling in the training stack.

A kit import inside a function hides an edge of the graph (and, behind it, a cycle); the boundary "the host never
imports torch" is only worth something when imports happen at import time. Optional third-party libraries (docker,
matplotlib, PIL, the vendors' management libraries) may still be imported where they are used: the kit runs
without them.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "kit"
TRAINING_STACK = ("torch", "deepspeed", "transformers")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(KIT.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The kit module an imported name is: itself, or the package it lives in (`from kit.x import y`, y a name)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def top_level_edges(mod: str) -> set[str]:
    tree = ast.parse(MODULES[mod].read_text())
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            out |= {r for a in node.names if a.name.startswith("kit") and (r := _resolve(a.name))}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kit":
            for a in node.names:
                r = _resolve(f"{node.module}.{a.name}") or _resolve(node.module)
                if r:
                    out.add(r)
    out.discard(mod)
    return out


def test_no_kit_import_inside_a_function():
    found = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom) and (sub.module or "").split(".")[0] == "kit":
                        found.append(f"{path.relative_to(ROOT)}:{sub.lineno}: {ast.unparse(sub)}")
                    elif isinstance(sub, ast.Import) and any(a.name.split(".")[0] == "kit" for a in sub.names):
                        found.append(f"{path.relative_to(ROOT)}:{sub.lineno}: {ast.unparse(sub)}")
    assert not found, "kit imports inside functions (move them to the top of the module):\n" + "\n".join(found)


def test_the_import_graph_has_no_cycle():
    graph = {m: top_level_edges(m) for m in MODULES}
    # a package's __init__ that imports its own submodules is not a cycle through them
    for m, edges in graph.items():
        if MODULES[m].name == "__init__.py":
            graph[m] = {e for e in edges if not e.startswith(m + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_every_kit_module_imports_on_its_own_without_the_training_stack():
    """Each module in a fresh interpreter (an import that only works after another module would fail here), and
    all of them together leave torch, DeepSpeed and transformers out of sys.modules."""
    code = (
        "import importlib, json, sys\n"
        f"mods = {sorted(MODULES)!r}\n"
        "bad = {}\n"
        "for m in mods:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception as e:\n"
        "        bad[m] = f'{type(e).__name__}: {e}'\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {TRAINING_STACK!r})\n"
        "print(json.dumps({'bad': bad, 'heavy': heavy[:5]}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["bad"] == {} and out["heavy"] == [], out
    for mod in ("kit.cli", "kit.run.stages", "kit.launchers", "kit.results.entries", "kit.submission.verifier"):
        r = subprocess.run([sys.executable, "-c", f"import {mod}"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)  # fmt: skip
        assert r.returncode == 0, (mod, r.stderr[-2000:])
