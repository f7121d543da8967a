"""Which precision each layer gets in the policies edgempq measures whole: uniform ones, ones
alternating two activation domains (float, 8-bit, 16-bit) layer by layer, and random mixes (the
probes the latency model is fitted on). Torch-free: the profiler, the latency model and the
solver all use it."""

from __future__ import annotations

import itertools
import random

from .schema import Layer, Precision, Target

DOMAIN_PRECISION = {"f": "f32", "a8": "w8a8", "a16": "w8a16"}


def domain(p: Precision) -> str:
    """Where a layer's activations live: f (float), a8 or a16."""
    return "f" if p.is_float else ("a8" if p.act_bits <= 8 else "a16")


def pair_key(a: str, b: str) -> str:
    """The policy alternating domains `a` (on the first searchable layer, the third, ...) and
    `b`, as `mixed_ms` keys it: "w8a8~f32" alternates w8a8, f32, w8a8, ..."""
    return f"{DOMAIN_PRECISION[a]}~{DOMAIN_PRECISION[b]}"


def uniform_choice(target: Target, kind: str, precision: str) -> Precision | None:
    """What a layer of `kind` runs when the whole model is asked for `precision`: that precision
    if the target allows it for the kind, else the allowed one of the same activation bits with
    the fewest weight bits above it (int4 depthwise falls back to int8), else None."""
    allowed = target.allowed(kind)
    p = Precision.parse(precision)
    if p in allowed:
        return p
    up = sorted((q for q in allowed if q.is_float == p.is_float and q.act_bits == p.act_bits
                 and q.weight_bits > p.weight_bits), key=lambda q: q.weight_bits)
    return up[0] if up else None


def uniform_assignment(layers: list[Layer], target: Target, precision: str) -> dict[str, Precision] | None:
    """Layer name -> precision of the uniform `precision` policy on `target`, or None."""
    out = {}
    for la in layers:
        if la.searchable:
            q = uniform_choice(target, la.kind, precision)
            if q is None:
                return None
            out[la.name] = q
    return out


def alternating_assignment(layers: list[Layer], target: Target, a: str, b: str) -> dict[str, Precision] | None:
    """Searchable layers alternate `a`, `b`, `a`, ... in model order (each as the target runs
    it, see `uniform_choice`), so that most tensors cross between the two domains; None if the
    target cannot run one of them for some layer."""
    out = {}
    for i, la in enumerate(la for la in layers if la.searchable):
        q = uniform_choice(target, la.kind, a if i % 2 == 0 else b)
        if q is None:
            return None
        out[la.name] = q
    return out


def alternating_policies(layers: list[Layer], target: Target) -> dict[str, dict[str, Precision]]:
    """The alternating policies of every two domains the target runs, keyed like `mixed_ms`."""
    ran = {domain(p) for la in layers if la.searchable for p in target.allowed(la.kind)}
    out = {}
    for a, b in itertools.combinations(sorted(ran), 2):
        assign = alternating_assignment(layers, target, DOMAIN_PRECISION[a], DOMAIN_PRECISION[b])
        if assign is not None and len({domain(p) for p in assign.values()}) == 2:
            out[pair_key(a, b)] = assign
    return out


def probe_assignments(layers: list[Layer], target: Target, n: int, seed: int = 0) -> list[dict[str, Precision]]:
    """`n` random policies, each layer drawn from every precision the target runs for it
    (seeded, so a profile measures the same probes again and its cache holds them)."""
    rng = random.Random(seed)
    searched = [la for la in layers if la.searchable]
    return [{la.name: rng.choice(target.allowed(la.kind)) for la in searched} for _ in range(n)]
