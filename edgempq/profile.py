"""Per-layer cost tables measured on the device (`edgempq profile`).

Each distinct (layer signature, precision) the target can run becomes a single-layer TFLite
model, quantized the way deployment quantizes, timed on the device. Every measurement is
written to the cache as soon as it completes (atomically, with a checksum), keyed by the
device's fingerprint, so a second profile is near-free and an interrupted one resumes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .assign import alternating_policies, probe_assignments, uniform_assignment
from .backends import Backend, backend_for
from .cache import cache_dir
from .errors import ConfigError
from .files import write_json
from .layers import layer_edges
from .progress import Progress
from .schema import CostRow, CostTable, Layer, Precision, Probe, Target

if TYPE_CHECKING:
    from collections.abc import Iterator


@dataclass(frozen=True)
class Job:
    """One measurement to make: a layer signature at one precision."""

    layer: Layer  # the first layer with this signature
    precision: Precision

    @property
    def key(self) -> str:
        """Cache file name: a digest of the layer's signature and the precision."""
        return f"{_digest(self.layer.signature)[:20]}-{self.precision}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


PROFILE_FORMAT = 3  # bump when the single-layer models or what a row means change
WHOLE_ROUNDS = 3  # whole-model timings: interleaved rounds, median
WHOLE_RUNS, WHOLE_SECONDS = 100, 0.25  # at most, invokes and seconds per whole-model timing (see whole_runs)
PROBES = 24  # random mixed policies measured whole, which the latency model is fitted on


def _toolchain() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("ai-edge-quantizer", "tensorflow", "onnx2tf"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "none"
    return out


def device_key(target: Target, fingerprint: dict[str, Any]) -> str:
    """Cache folder name: the target's timing options, what the device reported (not where it
    is reached, nor the target's name or limits: a renamed or re-limited copy of a target finds
    the same measurements), and the toolchain that builds the measured models."""
    ident = {k: fingerprint.get(k) for k in ("backend", "cpu", "machine", "cores", "runtime", "runtime_version")}
    ident |= {"threads": target.threads, "warmup": target.warmup, "runs": target.runs,
              "max_seconds": target.max_seconds, "format": PROFILE_FORMAT, **_toolchain()}
    return _digest(json.dumps(ident, sort_keys=True))[:16]


def jobs_for(layers: list[Layer], target: Target) -> list[Job]:
    """One job per distinct (signature, precision) of the searchable layers."""
    seen: dict[tuple[str, str], Job] = {}
    for la in layers:
        if la.searchable:
            for p in target.allowed(la.kind):
                seen.setdefault((la.signature, str(p)), Job(la, p))
    return list(seen.values())


class RowCache:
    """One JSON file per measurement, with a checksum: a truncated or hand-edited file is
    ignored and measured again. `folder=None` caches nothing."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def _get(self, key: str) -> dict | None:
        if self.folder is None:
            return None
        try:
            doc = json.loads((self.folder / f"{key}.json").read_text())
            ok = doc.get("sha256") == _digest(json.dumps(doc["row"], sort_keys=True))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return doc["row"] if ok else None

    def _put(self, key: str, d: dict) -> None:
        if self.folder is not None:
            write_json(self.folder / f"{key}.json", {"row": d, "sha256": _digest(json.dumps(d, sort_keys=True))})

    def get(self, job: Job) -> CostRow | None:
        """The cached row of `job`, or None if it is missing, damaged or of another measurement."""
        d = self._get(job.key)
        try:
            row = CostRow.from_dict(d) if d is not None else None
        except (ConfigError, TypeError):
            return None
        # the file name says which measurement it holds; a row of another layer or precision
        # (a copied or renamed file) is measured again, never used in its place
        ok = row is not None and row.signature == job.layer.signature and str(row.precision) == str(job.precision)
        return row if ok else None

    def put(self, job: Job, row: CostRow) -> None:
        """Cache the measured `row` of `job`."""
        self._put(job.key, row.to_dict())

    def get_whole(self, arch_key: str, precision: str) -> float | None:
        """The cached whole-model median latency (ms) of `arch_key` at `precision`, or None."""
        v = self.get_sizes(arch_key, precision).get("median_ms")
        return float(v) if v is not None else None

    def get_sizes(self, arch_key: str, precision: str) -> dict[str, float]:
        """The cached whole-model record of `arch_key` at `precision`: median_ms, and when
        measured model_bytes (the flatbuffer) and arena_bytes (TFLite Micro's); {} if none."""
        d = self._get(f"whole-{arch_key}-{precision}")
        if not isinstance(d, dict):
            return {}
        return {k: v for k, v in d.items() if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0}

    def get_graph(self, arch_key: str) -> dict | None:
        """The cached float-graph skeleton of `arch_key`, or None."""
        return self._get(f"graph-{arch_key}")

    def put_graph(self, arch_key: str, graph: dict) -> None:
        """Cache the float-graph skeleton of `arch_key`."""
        self._put(f"graph-{arch_key}", graph)

    def put_whole(self, arch_key: str, precision: str, ms: float, sizes: dict[str, int] | None = None) -> None:
        """Cache a whole-model median latency of `ms` milliseconds (and its `sizes`)."""
        self._put(f"whole-{arch_key}-{precision}", {"median_ms": ms, **(sizes or {})})


@contextlib.contextmanager
def device_lock(folder: Path, target_name: str, on_step: Progress | None = None) -> Iterator[None]:
    """Hold the device's cache folder for one profile at a time (an advisory lock on a file in
    it): a second profile of the same device waits, then finds the first one's measurements in
    the cache, instead of measuring everything again while the device is busy with the first
    (which would also skew both timings)."""
    import fcntl  # POSIX: edgempq runs on Linux and macOS hosts

    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / ".lock", "a+")  # noqa: SIM115 - held across the yield below
    except OSError as e:
        raise ConfigError(f"cannot use the profile cache {folder} ({e.strerror}); make it writable, set "
                          "EDGEMPQ_CACHE to another folder") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_step:
                on_step(0, 0, f"waiting for another profile of {target_name} to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:
            pass  # a file system without locks: profiles of one device are not kept apart
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(f, fcntl.LOCK_UN)


def measure(backend: Backend, job: Job, float_model: bytes) -> CostRow:
    """Build the single-layer model of `job` and time it (and its RAM, on TFLite Micro)."""
    from .export.layer_model import layer_model
    from .export.recipe import weight_ops

    model = layer_model(job.layer, job.precision, float_model)
    t = backend.time(model)
    return CostRow(job.layer.signature, str(job.precision), t.median_ms, t.p10_ms, t.p90_ms, t.runs,
                   weight_ops(model)[0].weight_bytes, len(model), backend.ram_bytes(model))


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

    def key(self, layers: list[Layer]) -> str:
        """Architecture and input size, which set latency (the weights' values do not): the
        modules, the forward graph as torch.fx sees it, and every layer's signature."""
        import torch.fx

        try:
            code = torch.fx.symbolic_trace(self.module).code
        except Exception:  # noqa: BLE001 - untraceable models: modules and shapes only
            code = ""
        sigs = "|".join(la.signature for la in layers)
        return _digest(repr(self.module) + code + sigs + repr(tuple(self.input_shape)))[:16]

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
    todo = _whole_policies(layers, target, whole.probes)
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
        variant = _digest(json.dumps(sorted((la.name, str(assign[la.name])) for la in layers if la.searchable)))[:8]
        cached = cache.get_sizes(f"{key}-{variant}", p)
        if "median_ms" in cached and (what != "uniform" or "model_bytes" in cached):
            _record(out, what, p, assign, cached)
            continue
        base, module = float_base()
        pending.append((what, p, f"{key}-{variant}", whole_tflite(layers, base, assign, module), assign))
    if out.graph is None:
        base, module = float_base()
        out = replace(out, graph=_skeleton(layers, base, module))
        cache.put_graph(key, out.graph.to_dict())
    times = _timed_rounds(backend, pending, len(todo), cache, on_step)
    for what, p, ck, model, assign in pending:
        sizes = {"model_bytes": len(model)} if what == "uniform" else {}
        arena = backend.ram_bytes(model) if what == "uniform" else None
        if arena is not None:
            sizes["arena_bytes"] = arena
        cache.put_whole(ck, p, statistics.median(times[ck]), sizes)
        _record(out, what, p, assign, {"median_ms": statistics.median(times[ck]), **sizes})
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


def _timed_rounds(backend: Backend, pending: list[tuple[str, str, str, bytes, Any]], n_todo: int, cache: RowCache,
                  on_step: Progress | None) -> dict[str, list[float]]:
    """Round-robin rounds over `pending`: a slow or fast moment of the device then falls on
    every policy alike instead of on whichever one was being timed. Each round's timing is
    cached as it finishes, so an interrupted profile keeps them too."""
    from . import stop

    times: dict[str, list[float]] = {}
    first: dict[str, float] = {}
    for r in range(WHOLE_ROUNDS):
        for j, (_, p, ck, model, _) in enumerate(pending):
            if on_step:
                on_step(n_todo + (r * len(pending) + j) * n_todo // max(1, WHOLE_ROUNDS * len(pending)),
                        n_todo * 2, f"timing whole model {p} (round {r + 1}/{WHOLE_ROUNDS})")
            stop.check()
            ms = cache.get_whole(f"{ck}-round{r}", p)
            if ms is None:
                ms = backend.time(model, whole_runs(backend.target, first.get(ck))).median_ms
                cache.put_whole(f"{ck}-round{r}", p, ms)
            first.setdefault(ck, ms)
            times.setdefault(ck, []).append(ms)
    return times


def whole_runs(target: Target, first_ms: float | None) -> int:
    """Invokes per whole-model timing: the target's in the first round; after it, as many more
    (up to WHOLE_RUNS) as fit in WHOLE_SECONDS at the first round's median, since a fast model's
    median over a few invokes is noisy and a slow model's is not."""
    if first_ms is None or first_ms <= 0:
        return target.runs
    return max(target.runs, min(WHOLE_RUNS, int(WHOLE_SECONDS / (first_ms / 1e3))))


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
    with backend_for(target) as backend, contextlib.ExitStack() as held:
        fingerprint = backend.check()
        folder = cache_dir("profiles", device_key(target, fingerprint))
        held.enter_context(device_lock(folder, target.name, on_step))  # with --no-cache too: one at a time
        cache = RowCache(folder if use_cache else None)
        jobs = jobs_for(layers, target)
        rows, floats = [], {}
        from . import stop

        for i, job in enumerate(jobs):
            stop.check()  # a Ctrl-C that a converter swallowed still stops here, between measurements
            if on_step:
                on_step(i, len(jobs), f"{job.layer.kind} {job.precision}")
            row = cache.get(job)
            if row is None:
                sig = job.layer.signature
                if sig not in floats:
                    from .export.layer_model import float_layer_model

                    floats = {sig: float_layer_model(job.layer)}  # keep one: jobs come grouped by layer
                row = measure(backend, job, floats[sig])
                cache.put(job, row)
            rows.append(row)
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
