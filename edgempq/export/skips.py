"""Residual adds as the artifact holds them: each add's output on the artifact's integer grid
(and a float layer's output on the grid of the QUANTIZE op that converts it for the next op).

The simulation rounds what its layers read and write (`export.rounding`), but a residual skip
travels from one add to the next without passing a layer: PyTorch keeps it in float, while the
artifact's ADD op writes it as int8 (and the next ADD reads it so). Off by a fraction of a step
on every value, the skips make the simulation drift from the artifact block after block.

`measure` pairs every integer ADD op of the artifact with the add of the model's torch.fx graph
that sums the same things: each of the two inputs is described by the searched layers it comes
from (walking back through ops that are not layers, adds included), the same way in both graphs.
An ADD that pairs with exactly one add gives it its output grid; `wrap` inserts the rounding
after those adds. Both read only the graphs, so validate measures them again from any artifact."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ai_edge_quantizer.qtyping import ModelT
    from torch import nn
    from torch.fx import Graph, Node

_ADD = 0  # builtin operator code
_INPUT = "<input>"


def _tflite_adds(m: ModelT, layer_ops: dict[int, str]) -> list[tuple[int, frozenset]]:
    """(op index, what its two inputs come from) of every ADD of two computed tensors."""
    sg = m.subgraphs[0]
    producer = {t: i for i, op in enumerate(sg.operators) for t in op.outputs}
    memo: dict[int, frozenset] = {}

    def computed(t: int) -> bool:
        return t >= 0 and (t in producer or t in list(sg.inputs))

    def sources(t: int) -> frozenset:
        if t not in memo:
            p = producer.get(t)
            if p is None:
                memo[t] = frozenset({_INPUT})
            elif p in layer_ops:
                memo[t] = frozenset({layer_ops[p]})
            else:
                memo[t] = frozenset().union(*(sources(i) for i in sg.operators[p].inputs if computed(i)))
        return memo[t]

    out = []
    for i, op in enumerate(sg.operators):
        ins = [t for t in op.inputs if computed(t)]
        if int(m.operatorCodes[op.opcodeIndex].builtinCode) == _ADD and len(ins) == 2:
            out.append((i, frozenset({sources(ins[0]), sources(ins[1])})))
    return out


def _is_residual_add(node: Node) -> bool:
    """An add of two computed tensors; an in-place add_ is left float (its later readers read
    the mutated tensor, not the node)."""
    from ..layers import is_add

    return is_add(node) and node.target != "add_" and len(node.all_input_nodes) == 2


def _fx_adds(graph: Graph, layers: set[str]) -> list[tuple[Node, frozenset]]:
    """(node, what its two inputs come from) of every add of two computed tensors."""
    memo: dict[Node, frozenset] = {}

    def sources(n: Node) -> frozenset:
        if n not in memo:
            if n.op == "call_module" and n.target in layers:
                memo[n] = frozenset({n.target})
            elif n.op == "placeholder":
                memo[n] = frozenset({_INPUT})
            else:
                memo[n] = frozenset().union(*(sources(i) for i in n.all_input_nodes))
        return memo[n]

    return [(n, frozenset(sources(i) for i in n.all_input_nodes)) for n in graph.nodes if _is_residual_add(n)]


def trace(qmodel: nn.Module) -> Graph | None:
    """The simulated model's torch.fx graph, its layers as leaves; None if fx cannot trace it."""
    import torch

    from ..quant.modules import QUANT_TYPES

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: torch.nn.Module, name: str) -> bool:
            return isinstance(m, QUANT_TYPES) or super().is_leaf_module(m, name)

    try:
        return _Tracer().trace(qmodel)
    except Exception:  # noqa: BLE001 - fx raises many types for untraceable Python
        return None


def measure(qmodel: nn.Module, model: bytes, layer_ops: dict[str, int]) -> tuple[dict[str, dict], list[str]]:
    """Per add node of `qmodel`'s graph, the output grid of the artifact ADD op it pairs with
    (`layer_ops`: every policy layer -> its op index in `model`), and notes on adds left alone."""
    from .exact import _read
    from .rounding import _clamp, _grid

    graph = trace(qmodel)
    if graph is None:
        return {}, ["torch.fx cannot trace the model, so its residual adds keep float outputs in the simulation"]
    m = _read(model)
    sg = m.subgraphs[0]
    ops = _tflite_adds(m, {i: n for n, i in layer_ops.items()})
    nodes = _fx_adds(graph, set(layer_ops))
    out, notes = {}, []
    for index, sig in ops:
        same = [n for n, s in nodes if s == sig]
        there = [i for i, s in ops if s == sig]
        op = sg.operators[index]
        t = sg.tensors[op.outputs[0]]
        if _grid(t) is None:
            continue  # a float add: nothing to round
        if len(same) != 1 or len(there) != 1:
            notes.append(f"the artifact's add (op {index}) matches {len(same)} adds of the model, so it keeps a "
                         "float output in the simulation")
            continue
        scale, zp = _grid(t)[:2]
        lo, hi, note = _clamp(op, t.type, scale, zp)
        if note:
            notes.append(f"the artifact's add (op {index}): {note}")
            continue
        out[same[0].name] = {"kind": "add", "op_index": index, "scale": scale, "zero_point": zp, "qmin": lo,
                             "qmax": hi}
    out.update(_float_outputs(m, graph, layer_ops))
    return out, notes


def _float_outputs(m: ModelT, graph: Graph, layer_ops: dict[str, int]) -> dict[str, dict]:
    """Float layers whose output a QUANTIZE op turns into integers (for an integer op next):
    their node -> that grid."""
    from .rounding import neighbour_grids

    sg = m.subgraphs[0]
    nodes = {n.target: n.name for n in graph.nodes if n.op == "call_module"}
    out = {}
    for name, index in layer_ops.items():
        if sg.tensors[sg.operators[index].outputs[0]].type != 0 or name not in nodes:
            continue
        _, after = neighbour_grids(m, index)
        if after is not None:
            scale, zp, lo, hi = after
            out[nodes[name]] = {"kind": "float layer", "layer": name, "op_index": index, "scale": scale,
                                "zero_point": zp, "qmin": lo, "qmax": hi}
    return out


def describe(grids: dict[str, dict]) -> str:
    """"3 residual add(s) and 1 float layer output(s)", "" for none."""
    kinds = [g.get("kind") if isinstance(g, dict) else None for g in grids.values()]
    adds, floats = kinds.count("add"), kinds.count("float layer")
    parts = [f"{adds} residual add(s)"] * bool(adds) + [f"{floats} float layer output(s)"] * bool(floats)
    return " and ".join(parts)


def wrap(qmodel: nn.Module, grids: dict[str, dict]) -> nn.Module:
    """`qmodel` with each add of `grids` rounded to its grid: a torch.fx GraphModule sharing
    qmodel's modules (its state is qmodel's), or qmodel itself when there is nothing to round."""
    if not grids:
        return qmodel
    import torch

    from ..quant.requant import GridQuantizer

    gm = torch.fx.GraphModule(qmodel, trace(qmodel))
    for node in list(gm.graph.nodes):
        g = grids.get(node.name)
        if g is None:
            continue
        name = f"edgempq_skip_{node.name}"
        gm.add_submodule(name, GridQuantizer(g["scale"], g["zero_point"], g["qmin"], g["qmax"]))
        with gm.graph.inserting_after(node):
            rounded = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(rounded, delete_user_cb=lambda user, r=rounded: user is not r)
    gm.recompile()
    return gm.eval()
