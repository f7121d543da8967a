"""Per-layer cost tables measured on the device (`edgempq profile`).

Each distinct (layer signature, precision) the target can run becomes a single-layer TFLite
model, quantized the way deployment quantizes, timed on the device; with the model itself, the
whole model at the uniform, alternating and probe policies. Every timing is taken in interleaved
rounds, the fastest kept (`rounds`), and written to the cache as soon as it completes
(`profile_cache`: atomically, with a checksum, keyed by the device's fingerprint), so a second
profile is near-free and an interrupted one resumes."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

from .assign import alternating_policies, probe_assignments, uniform_assignment
from .backends import Backend, backend_for
from .backends.base import check_runtime
from .cache import cache_dir
from .errors import ConfigError
from .layers import layer_edges
from .profile_cache import Job, RowCache, device_key, device_lock, digest, jobs_for
from .progress import Progress
from .rounds import Timed, fastest, timed_rounds
from .schema import CostRow, CostTable, Layer, Precision, Probe, Target, Timing

PROBES = 24  # random mixed policies measured whole, which the latency model is fitted on


def measure_rows(backend: Backend, jobs: list[Job], cache: RowCache, on_step: Progress | None = None) -> list[CostRow]:
    """The row of every job: from the cache, else its single-layer model built, timed in
    interleaved rounds with the others (the fastest round kept, `rounds`) and its RAM measured
    on TFLite Micro; each row cached as it is made."""
    from . import stop
    from .export.layer_model import float_layer_model

    rows = {j.key: r for j in jobs if (r := cache.get(j)) is not None}
    built: list[tuple[Job, bytes]] = []
    floats: dict[str, bytes] = {}
    for i, job in enumerate(j for j in jobs if j.key not in rows):
        stop.check()  # a Ctrl-C that a converter swallowed still stops here, between measurements
        if on_step:
            on_step(i, 2 * len(jobs), f"building {job.layer.kind} {job.precision}")
        sig = job.layer.signature
        if sig not in floats:
            floats = {sig: float_layer_model(job.layer)}  # keep one: jobs come grouped by layer
        built.append((job, build_model(job, floats[sig])))
    times = timed_rounds(backend, [Timed(j.key, f"{j.layer.kind} {j.precision}", m) for j, m in built], cache,
                         on_step=_offset(on_step, len(jobs), 2 * len(jobs)))
    for job, model in built:
        rows[job.key] = _row(backend, job, model, fastest(times[job.key]))
        cache.put(job, rows[job.key])
    return [rows[j.key] for j in jobs]


def build_model(job: Job, float_model: bytes) -> bytes:
    """The single-layer model of `job`, quantized as deployment quantizes (from the layer's float
    model `float_model`)."""
    from .export.layer_model import layer_model

    return layer_model(job.layer, job.precision, float_model)


def _row(backend: Backend, job: Job, model: bytes, t: Timing) -> CostRow:
    from .export.recipe import weight_ops

    return CostRow(job.layer.signature, str(job.precision), t.median_ms, t.p10_ms, t.p90_ms, t.runs,
                   weight_ops(model)[0].weight_bytes, len(model), backend.ram_bytes(model))


def _offset(on_step: Progress | None, start: int, total: int) -> Progress | None:
    """`on_step` for a stage that fills the bar from `start` of `total` to its end."""
    if on_step is None:
        return None
    return lambda i, n, msg: on_step(start + (total - start) * i // max(1, n), total, msg)


@dataclass(frozen=True)
class Whole:
    """What the whole model measured at the uniform, alternating and probe policies: median
    latencies (ms) by precision (or pair key, or probe), and per uniform precision the
    flatbuffer's bytes and, on TFLite Micro, the arena's."""

    uniform_ms: dict[str, float]
    mixed_ms: dict[str, float]
    model_bytes: dict[str, int]
    arena_bytes: dict[str, int]
    graph: Any = None  # the float graph's skeleton (schema.graph.Graph): the latency model's and the arena's
    probes: dict[str, Probe] = field(default_factory=dict)  # random mixed policies, for the latency model's fit


@dataclass(frozen=True)
class WholeModel:
    """The model itself, for end-to-end timings at each uniform precision, alternating pair and
    `probes` random mixed policies."""

    module: Any
    input_shape: tuple[int, ...]
    probes: int = PROBES
    part: tuple[int, int] = (0, 1)  # (i, n): measure only every n-th whole model from the i-th (a farm's board)

    def key(self, layers: list[Layer]) -> str:
        """Architecture and input size, which set latency (the weights' values do not): the
        modules, the forward graph as torch.fx sees it, and every layer's signature."""
        import torch.fx

        try:
            code = torch.fx.symbolic_trace(self.module).code
        except Exception:  # noqa: BLE001 - untraceable models: modules and shapes only
            code = ""
        sigs = "|".join(la.signature for la in layers)
        return digest(repr(self.module) + code + sigs + repr(tuple(self.input_shape)))[:16]

    def timing_copy(self) -> Any:
        """A copy whose BatchNorm statistics are re-estimated on random inputs, so every layer
        sees unit-scale activations. Latency does not depend on the values, but an untrained
        net's vanishing activations give int16 scales so small that TFLite's fused-ReLU6 range
        overflows int32 and the model refuses to load; and timing stays independent of the
        weights, as its cache key is."""
        import copy

        import torch

        m = copy.deepcopy(self.module)
        bns = [b for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)]
        if bns:
            for b in bns:
                b.reset_running_stats()
                b.momentum = None  # cumulative average over the batches below
            m.train()
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for _ in range(4):
                    m(torch.randn((8, *self.input_shape), generator=gen))
        return m.eval()


def measure_whole(backend: Backend, whole: WholeModel, layers: list[Layer], target: Target, cache: RowCache,
                  on_step: Progress | None = None) -> Whole:
    """End-to-end median latency of the whole model at every uniform precision of the target,
    of the policies alternating two domains (for the conversion costs) and of `whole.probes`
    random mixed ones (what the latency model is fitted on), exported through the same per-layer recipe
    (and checks) as any policy; the uniform models' sizes and arenas too."""
    todo = _whole_policies(layers, target, whole.probes)[whole.part[0]::whole.part[1]]
    key = whole.key(layers)
    out = Whole({}, {}, {}, {}, _cached_graph(cache, key))
    pending: list[tuple[str, str, str, bytes, dict[str, Precision]]] = []
    built: list[tuple[bytes, Any]] = []

    def float_base() -> tuple[bytes, Any]:
        """The float flatbuffer and the module it was converted from, built once when needed."""
        if not built:
            from .export.float_graph import float_tflite

            module = whole.timing_copy()
            built.append((float_tflite(module, whole.input_shape), module))
        return built[0]

    for i, (what, p, assign) in enumerate(todo):
        if on_step:
            on_step(i, len(todo) * 2, f"building whole model {p}")
        variant = digest(json.dumps(sorted((la.name, str(assign[la.name])) for la in layers if la.searchable)))[:8]
        cached = cache.get_sizes(f"{key}-{variant}", p)
        if "median_ms" in cached and (what != "uniform" or "model_bytes" in cached):
            _record(out, what, p, assign, cached)
            continue
        base, module = float_base()
        pending.append((what, p, f"{key}-{variant}", whole_tflite(layers, base, assign, module), assign))
    if out.graph is None and whole.part[0] == 0:
        base, module = float_base()
        out = replace(out, graph=_skeleton(layers, base, module))
        cache.put_graph(key, out.graph.to_dict())
    times = timed_rounds(backend, [Timed(f"whole-{ck}-{p}", f"whole model {p}", m) for _, p, ck, m, _ in pending],
                         cache, on_step=_offset(on_step, len(todo), 2 * len(todo)))
    for what, p, ck, model, assign in pending:
        sizes = {"model_bytes": len(model)} if what == "uniform" else {}
        arena = backend.ram_bytes(model) if what == "uniform" else None
        if arena is not None:
            sizes["arena_bytes"] = arena
        ms = fastest(times[f"whole-{ck}-{p}"]).median_ms
        cache.put_whole(ck, p, ms, sizes)
        _record(out, what, p, assign, {"median_ms": ms, **sizes})
    return out


def _whole_policies(layers: list[Layer], target: Target, probes: int) -> list[tuple[str, str, dict]]:
    """(uniform, mixed or probe; precision, pair key or probe label; assignment) of every whole
    model to measure. No probes when no layer has a choice (they would all be the uniform one)."""
    precisions = sorted({str(p) for la in layers if la.searchable for p in target.allowed(la.kind)})
    todo: list[tuple[str, str, dict[str, Precision]]] = []
    for p in precisions:
        assign = uniform_assignment(layers, target, p)
        if assign is not None and p in {str(q) for q in assign.values()}:
            todo.append(("uniform", p, assign))
    todo += [("mixed", k, a) for k, a in alternating_policies(layers, target).items()]
    if any(len(target.allowed(la.kind)) > 1 for la in layers if la.searchable):
        todo += [("probe", f"probe {i:02d}", a) for i, a in enumerate(probe_assignments(layers, target, probes))]
    return todo


def _cached_graph(cache: RowCache, key: str) -> Any:
    from .schema.graph import Graph

    d = cache.get_graph(key)
    try:
        return Graph.from_dict(d) if d is not None else None
    except ConfigError:
        return None  # a damaged entry: built again


def _skeleton(layers: list[Layer], base: bytes, module: Any) -> Any:
    """The float graph's skeleton (see arena.Graph), its ops named by the layers they carry."""
    from .export.mapping import fixed_ops, map_layers, torch_weights
    from .export.skeleton import skeleton

    mapping = map_layers(layers, base, torch_weights(module, layers))
    return skeleton(base, mapping, fixed_ops(layers, base, torch_weights(module, layers, fixed=True), mapping))


def whole_tflite(layers: list[Layer], base: bytes, assign: dict[str, Precision], module: Any) -> bytes:
    """The whole model `base` (the float flatbuffer of `module`) at `assign`, quantized as deploy's
    recipe does, the fixed layers' ops kept float."""
    from .export.mapping import torch_weights
    from .export.mixed import quantize_policy

    return quantize_policy(layers, base, assign, torch_weights(module, layers),
                           fixed_weights=torch_weights(module, layers, fixed=True))


def _record(out: Whole, what: str, p: str, assign: dict[str, Precision], rec: dict[str, float]) -> None:
    if what == "probe":
        out.probes[p] = Probe({k: str(q) for k, q in assign.items()}, float(rec["median_ms"]))
        return
    (out.uniform_ms if what == "uniform" else out.mixed_ms)[p] = float(rec["median_ms"])
    for k in ("model_bytes", "arena_bytes"):
        if what == "uniform" and k in rec:
            getattr(out, k)[p] = int(rec[k])


def overheads(table_rows: dict[tuple[str, str], CostRow], layers: list[Layer], target: Target,
              whole_ms: dict[str, float]) -> dict[str, float]:
    """Per uniform precision: measured whole model minus the sum of its layers' rows."""
    out = {}
    for p, ms in whole_ms.items():
        assign = uniform_assignment(layers, target, p) or {}
        out[p] = ms - sum(table_rows[(la.signature, str(assign[la.name]))].latency_ms for la in layers if la.searchable)
    return out


def profile(layers: list[Layer], target: Target, model_hash: str, use_cache: bool = True,
            on_step: Progress | None = None, whole: WholeModel | None = None) -> CostTable:
    """The cost table of `layers` on `target`, measuring only what the cache lacks; with
    `whole`, also the whole model end to end at each uniform precision and the overheads, and
    at its random mixed probes (for the latency model)."""
    target.check_timeable()
    with backend_for(target) as backend, contextlib.ExitStack() as held:
        fingerprint = backend.check()
        check_runtime(target, fingerprint)
        folder = cache_dir("profiles", device_key(target, fingerprint))
        held.enter_context(device_lock(folder, target, on_step))  # with --no-cache too: one at a time
        cache = RowCache(folder if use_cache else None)
        jobs = jobs_for(layers, target)
        rows = measure_rows(backend, jobs, cache, on_step)
        measured = Whole({}, {}, {}, {}, None)
        if whole is not None:
            measured = measure_whole(backend, whole, layers, target, cache, on_step)
        if on_step:
            on_step(len(jobs), len(jobs), "done")
    by_key = {(r.signature, r.precision): r for r in rows}
    edges = tuple(layer_edges(whole.module, layers)) if whole is not None else ()
    return CostTable(target, fingerprint, model_hash, tuple(layers), tuple(rows), measured.uniform_ms,
                     overheads(by_key, layers, target, measured.uniform_ms), edges, measured.mixed_ms,
                     whole_bytes=measured.model_bytes, whole_arena_bytes=measured.arena_bytes, graph=measured.graph,
                     probes=tuple(measured.probes[k] for k in sorted(measured.probes)))
