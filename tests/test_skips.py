"""Pairing a model's adds with the artifact's ADD ops reads the torch.fx graph: which adds count,
and a model fx cannot trace keeps float adds with a note."""

from __future__ import annotations

import torch
from torch import nn

from edgempq.export.skips import _fx_adds, describe, measure, trace, wrap


class Adds(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)

    def forward(self, x):
        y = self.a(x) + x  # a skip: the input and a
        z = torch.add(self.b(y), y)  # b and the first add (so a and the input)
        w = self.c(z)
        w.add_(z)  # in place: its later readers read w, so rounding the node would not reach them
        return w + 1.0  # a constant: not a residual add


class Branchy(Adds):
    def forward(self, x):
        if float(x.mean()) > 100:  # fx cannot know
            x = x * 0
        return super().forward(x)


def test_residual_adds_are_described_by_the_layers_they_sum():
    graph = trace(Adds())
    found = {tuple(sorted(tuple(sorted(s)) for s in sig)) for _, sig in _fx_adds(graph, {"a", "b", "c"})}
    assert found == {(("<input>",), ("a",)), (("<input>", "a"), ("b",))}


def test_a_model_fx_cannot_trace_keeps_float_adds_and_says_so():
    grids, notes = measure(Branchy(), b"", {"a": 0})
    assert grids == {} and "cannot trace" in notes[0]
    m = Branchy()
    assert wrap(m, {}) is m


def test_wrap_rounds_exactly_the_named_adds():
    torch.manual_seed(0)
    m = Adds().eval()
    node = next(n for n, _ in _fx_adds(trace(m), {"a", "b", "c"}))
    grid = {"kind": "add", "scale": 0.5, "zero_point": 0, "qmin": -128, "qmax": 127}
    wrapped = wrap(m, {node.name: grid})
    x = torch.randn(3, 2, 4, 4)
    seen = {}
    m.b.register_forward_pre_hook(lambda _m, a: seen.setdefault("b_in", a[0]))
    with torch.no_grad():
        wrapped(x)
    assert torch.equal(seen["b_in"], torch.round(seen["b_in"] / 0.5) * 0.5)  # b reads the rounded add
    assert describe({node.name: grid, "c": {"kind": "float layer"}}) == "1 residual add(s) and 1 float layer output(s)"
    assert wrapped.a is m.a  # shares the simulation's modules: its state is the simulation's
