"""Each layer's feature map as the OMPQ / CSMPQ papers read it, and their layer grouping.

A layer's feature is its output after the BatchNorm and activation that follow it (the papers
take `conv(+bn+relu)`), found on the torch.fx graph. With `residual` grouping, the convs whose
outputs meet in one residual add (a block's last conv and its downsample) share one decision,
and the feature of every conv that feeds a residual add is the add's output (the papers'
"block output", also for blocks without a downsample)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..layers import is_add
from ..schema import Layer

_FOLLOW_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU,
                   nn.LeakyReLU, nn.Identity, nn.Dropout)
_PASS_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Identity)  # between a conv and the add it feeds
_FOLLOW_FUNCS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.nn.functional.hardswish,
                 torch.nn.functional.silu, torch.nn.functional.gelu}


@dataclass(frozen=True)
class Unit:
    """One decision of the method: its layers (one, or a residual group) and the graph node
    whose output is its feature."""

    layers: tuple[str, ...]
    node: str


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    import torch.fx

    try:
        return torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - any failure means "not traceable"
        raise ConfigError(f"the model cannot be traced with torch.fx ({type(e).__name__}: {e}); "
                          "this method needs the graph to find each layer's feature map") from None


def _follows(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _FOLLOW_MODULES)
    if node.op == "call_function":
        return node.target in _FOLLOW_FUNCS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _chain_end(node: torch.fx.Node, modules: dict[str, nn.Module]) -> torch.fx.Node:
    while len(node.users) == 1 and _follows(next(iter(node.users)), modules):
        node = next(iter(node.users))
    return node


def _source_layer(node: torch.fx.Node | None, modules: dict[str, nn.Module], names: set[str]) -> str | None:
    """The searchable layer feeding `node` through BatchNorm / identity-like ops only."""
    while node is not None:
        if node.op == "call_module" and node.target in names:
            return node.target
        if not (node.op == "call_module" and isinstance(modules.get(node.target), _PASS_MODULES)):
            return None
        node = node.args[0] if node.args and hasattr(node.args[0], "op") else None
    return None


def units(model: nn.Module, layers: list[Layer], grouping: str = "none") -> tuple[torch.fx.GraphModule, list[Unit]]:
    """The fx graph module and the decisions in model order; `grouping` is none or residual."""
    if grouping not in ("none", "residual"):
        raise ConfigError(f"grouping must be none or residual, not {grouping!r}")
    gm = _trace(model)
    modules = dict(gm.named_modules())
    names = {la.name for la in layers}
    node_of = {n.target: n for n in gm.graph.nodes if n.op == "call_module" and n.target in names}
    missing = names - set(node_of)
    if missing:
        raise ConfigError(f"layer(s) {', '.join(sorted(missing))} do not appear once in the traced graph")
    grouped: dict[str, Unit] = {}
    if grouping == "residual":
        for n in gm.graph.nodes:
            if is_add(n):
                srcs = [s for a in n.args if hasattr(a, "op") and (s := _source_layer(a, modules, names))]
                if srcs:  # a block's last conv (and its downsample): their feature is the block output
                    u = Unit(tuple(la.name for la in layers if la.name in srcs), _chain_end(n, modules).name)
                    grouped |= {s: u for s in srcs}
    out: list[Unit] = []
    for la in layers:
        if la.name not in names:
            continue
        u = grouped.get(la.name) or Unit((la.name,), _chain_end(node_of[la.name], modules).name)
        if u not in out:
            out.append(u)
    return gm, out


@torch.no_grad()
def features(gm: torch.fx.GraphModule, unit_list: list[Unit], x: Tensor) -> list[Tensor]:
    """The feature map of each unit on batch `x`, one forward pass."""
    import torch.fx

    wanted = {u.node for u in unit_list}
    seen: dict[str, Tensor] = {}

    class Grab(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            v = super().run_node(n)
            if n.name in wanted:
                seen[n.name] = v.detach().clone()
            return v

    Grab(gm).run(x)
    return [seen[u.node] for u in unit_list]
