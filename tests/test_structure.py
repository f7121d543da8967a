"""The package's shape: no import cycles (imports inside functions count too), plugin registries
full after a plain import, and a torch-free core."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edgempq"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _targets(module: str, path: Path, node: ast.AST, known: dict[str, Path]) -> list[str]:
    """The package's modules an import statement of `module` loads (its names, when they are
    modules, else the module they come from)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(max(node.level - 1, 0)):
            base = base.rpartition(".")[0]
        origin = node.module if not node.level else ".".join(p for p in (base, node.module) if p)
        names = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin for a in node.names]
    out = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    known = _modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom) and not (
                    isinstance(node, ast.ImportFrom) and node.module == "__future__"):
                graph[module].update(_targets(module, path, node, known))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
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
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_the_package_imports_itself_round_a_cycle():
    graph = import_graph()
    assert "edgempq.validate" in graph and "edgempq.pipeline" in graph["edgempq.cli"]
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_registries_are_full_after_a_plain_import():
    out = _run("from edgempq.sensitivity.base import METHODS\n"
               "from edgempq.quant.weights.base import ALGORITHMS\n"
               "from edgempq.backends.base import BACKENDS\n"
               "for r in (METHODS, ALGORITHMS, BACKENDS): print(' '.join(r.names()))")
    assert out.splitlines() == ["clado csmpq gmpq hawq limpq measured ompq", "adaround gptq minmax mse",
                                "adb litert ssh tflm"]


def test_the_core_loads_no_torch():
    out = _run("import sys\nimport edgempq.assign, edgempq.costs, edgempq.latency, edgempq.schema\n"
               "import edgempq.program, edgempq.solve, edgempq.search, edgempq.memory, edgempq.arena\n"
               "import edgempq.qgraph, edgempq.latency_fit, edgempq.latency_program, edgempq.problem\n"
               "import edgempq.cli\nprint('torch' in sys.modules)")
    assert out == "False"


PLUGIN = '''
from dataclasses import dataclass

from edgempq.backends.base import backend
from edgempq.backends.litert import LiteRTBackend
from edgempq.quant.weights.base import ALGORITHMS
from edgempq.quant.weights.minmax import MinMax
from edgempq.sensitivity.base import METHODS
from edgempq.sensitivity.ompq import OMPQ


@METHODS.register("third")
class Third(OMPQ):
    """A third party's method (here OMPQ under another name)."""


@ALGORITHMS.register("third")
class ThirdPTQ(MinMax):
    """A third party's PTQ algorithm."""


@backend("third")
class ThirdBackend(LiteRTBackend):
    """A third party's backend, with a [connection] of its own."""

    connection_keys = frozenset({"bench"})
'''


def _install(site: Path, name: str, module: str, source: str, groups: dict[str, str]) -> None:
    """A distribution installed the way pip leaves one: its module and a .dist-info folder with
    entry points, on a folder of sys.path."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("".join(f"[{g}]\n{v}\n\n" for g, v in groups.items()))


def test_third_party_plugins_register_through_entry_points(tmp_path):
    import os

    _install(tmp_path, "edgempq_third", "edgempq_third", PLUGIN,
             {"edgempq.methods": "third = edgempq_third", "edgempq.ptq": "third = edgempq_third",
              "edgempq.backends": "third = edgempq_third"})
    _install(tmp_path, "edgempq_broken", "edgempq_broken", "raise ImportError('needs libfoo')",
             {"edgempq.methods": "broken = edgempq_broken"})
    code = ("from edgempq.sensitivity import get_method\nfrom edgempq.quant.weights import algorithm\n"
            "from edgempq.backends import BACKENDS\nfrom edgempq.targets import load_target\n"
            "from dataclasses import replace\nfrom edgempq.errors import ConfigError\n"
            "print(get_method('third').__name__, type(algorithm('third')).__name__, BACKENDS.get('third').__name__)\n"
            "t = load_target('host')\n"
            "print(replace(t, backend='third', connection={'bench': 'fast'}).backend)\n"
            "try:\n    get_method('nope')\nexcept ConfigError as e:\n    print(e)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         timeout=1800).stdout.splitlines()
    assert out[0] == "Third ThirdPTQ ThirdBackend"
    assert out[1] == "third"  # a target may name the third party's backend and its [connection] keys
    assert "choose one of: clado, csmpq, gmpq, hawq, limpq, measured, ompq, third" in out[2]
    assert "installed plugin broken did not load (ImportError: needs libfoo)" in out[2]


def test_stages_leave_the_callers_random_state_alone():
    import numpy as np
    import torch

    from edgempq.train import TrainConfig, fit

    torch.manual_seed(123)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2))
    before = torch.random.get_rng_state()
    x, y = np.random.default_rng(0).normal(size=(8, 1, 2, 2)).astype(np.float32), np.array([0, 1] * 4)
    fit(net, x, y, TrainConfig(epochs=1, batch_size=4, lr=0.01, seed=7))
    assert torch.equal(torch.random.get_rng_state(), before)
