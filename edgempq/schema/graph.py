"""The float graph's skeleton a profile keeps: what `edgempq.qgraph` derives any policy's
quantized graph from, for the latency model and TFLite Micro's arena."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

FIXED = "*float"  # an op that stays float whatever the policy: a fixed layer's, an unmapped transposed conv


@dataclass(frozen=True)
class GraphOp:
    """One op of the float graph: its type, the layer it carries ("" none, "*float" kept float),
    the activation tensors it reads and writes."""

    op: str
    layer: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Graph:
    """The float graph's skeleton: ops in order, element counts of its activation tensors, the
    model's inputs and outputs, and how many tensors the flatbuffer has (new tensors follow)."""

    ops: tuple[GraphOp, ...]
    elements: dict[int, int]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    tensors: int

    def to_dict(self) -> dict[str, Any]:
        """The skeleton as a profile holds it."""
        return {"ops": [[o.op, o.layer, list(o.inputs), list(o.outputs)] for o in self.ops],
                "elements": {str(k): v for k, v in self.elements.items()}, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "tensors": self.tensors}

    @classmethod
    def from_dict(cls, d: Any) -> Graph:
        """A skeleton from a profile, its shape checked."""
        try:
            ops = tuple(GraphOp(str(o), str(la), tuple(int(t) for t in i), tuple(int(t) for t in out))
                        for o, la, i, out in d["ops"])
            elements = {int(k): int(v) for k, v in d["elements"].items()}
            g = cls(ops, elements, tuple(int(t) for t in d["inputs"]), tuple(int(t) for t in d["outputs"]),
                    int(d["tensors"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ConfigError("profile graph must hold ops, elements, inputs, outputs and tensors") from None
        if any(t not in elements for o in ops for t in (*o.inputs, *o.outputs)):
            raise ConfigError("profile graph names a tensor without an element count")
        return g
