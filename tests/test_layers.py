"""The library's layout (issue 22): floors from pyproject's import contract, no import circles, no private names across
modules, no internal imports inside functions, the front door, and modules readable in one sitting."""
import ast
import importlib
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT/'defect_sam'
FLOORS = next(c['layers'] for c in tomllib.loads((ROOT/'pyproject.toml').read_text())['tool']['importlinter']['contracts']
              if c['type'] == 'layers')   # the one list of floors, top first
# Modules above ~600 lines that read best whole, and why (DESIGN.md: say which and why).
LONG_OK = {
    'defect_sam.outputs.report': 'every figure of the report over one results table: the figures share its readers and labels',
}


def _modules() -> dict:
    "module name -> path, for every module of the package (the generated _modidx aside)."
    out = {}
    for p in sorted(LIB.rglob('*.py')):
        if p.name == '_modidx.py': continue
        parts = p.relative_to(ROOT).with_suffix('').parts
        out['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = p
    return out


def _cycles(graph) -> list:
    "Strongly connected components with more than one module (Tarjan)."
    adj = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    def visit(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in adj[v]:
            if w not in index: visit(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    for m in sorted(adj):
        if m not in index: visit(m)
    return out


def test_import_graph_has_no_cycle():
    assert _cycles(grimp.build_graph('defect_sam')) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    "The check above can fail: a two-module circle in a scratch package is found."
    pkg = tmp_path/'circ_pkg'; pkg.mkdir()
    (pkg/'__init__.py').write_text('')
    (pkg/'a.py').write_text('from . import b\n')
    (pkg/'b.py').write_text('def f():\n    from . import a\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _cycles(grimp.build_graph('circ_pkg')) == [['circ_pkg.a', 'circ_pkg.b']]


def _internal_imports(tree, mod: str):
    "(node, imported module, names, inside a function) for every import of a defect_sam module."
    pkg = mod.split('.') if Path(_modules()[mod]).name == '__init__.py' else mod.split('.')[:-1]
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inner = {id(x) for f in funcs for x in ast.walk(f)}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            base = '.'.join(pkg[:len(pkg) - n.level + 1]) if n.level else ''
            target = '.'.join(x for x in (base, n.module or '') if x)
            if target.split('.')[0] == 'defect_sam': yield n, target, [a.name for a in n.names], id(n) in inner
        elif isinstance(n, ast.Import):
            for a in n.names:
                if a.name.split('.')[0] == 'defect_sam': yield n, a.name, [], id(n) in inner


def test_no_private_name_crosses_a_module_and_no_internal_import_hides_in_a_function():
    bad_private, bad_inner = [], []
    for mod, p in _modules().items():
        for n, target, names, inner in _internal_imports(ast.parse(p.read_text()), mod):
            bad_private += [f'{mod}:{n.lineno} imports {target}.{x}' for x in names if x.startswith('_') and x != '__version__']
            if inner: bad_inner.append(f'{mod}:{n.lineno} imports {target} inside a function')
    assert bad_private == [] and bad_inner == []


def test_every_module_sits_on_a_floor():
    floors = [f for f in FLOORS]
    off = [m for m in _modules() if m != 'defect_sam' and not any(m == f or m.startswith(f + '.') for f in floors)]
    assert off == []
    assert FLOORS[-1] == 'defect_sam.core' and FLOORS[0] == 'defect_sam.cli'


def test_front_door():
    import defect_sam
    from defect_sam import build_model, evaluate, load_dataset, run_experiment, train   # the README's front door
    assert {f.__name__ for f in (build_model, evaluate, load_dataset, run_experiment, train)} == \
        {'build_model', 'evaluate', 'load_dataset', 'run_experiment', 'train'}
    for name, home in defect_sam.FRONT_DOOR.items():
        assert getattr(importlib.import_module(home), name) is getattr(defect_sam, name)


def test_modules_read_in_one_sitting():
    long = {m: len(p.read_text().splitlines()) for m, p in _modules().items()}
    assert {m: n for m, n in long.items() if n > 650 and m not in LONG_OK} == {}
    assert set(LONG_OK) <= set(long)


def test_docs_sidebar_lists_every_notebook_once():
    "nbs/sidebar.yml (the docs site's structure) names every notebook once and nothing else."
    import yaml
    def walk(x):
        if isinstance(x, str): yield x
        elif isinstance(x, dict): yield from walk(x.get('contents', []))
        elif isinstance(x, list):
            for y in x: yield from walk(y)
    listed = list(walk(yaml.safe_load((ROOT/'nbs'/'sidebar.yml').read_text())['website']['sidebar']['contents']))
    nbs = sorted(str(p.relative_to(ROOT/'nbs')) for p in (ROOT/'nbs').rglob('*.ipynb')
                 if not p.name.startswith('_') and '.ipynb_checkpoints' not in p.parts)
    assert sorted(listed) == nbs
