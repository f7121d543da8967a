"""A farm of devices for `edgempq profile --device a --device b ...`: one worker process per
device, all measuring at once, each device with its own cache folder (keyed by what it reports)
and its own lock (named by where it is reached), so several boards never wait for each other.

Several devices give one profile each. With `spread`, the devices must be identical boards (the
same fingerprint, so the same cache folder): one model's measurements are dealt out between them
(single-layer models by layer, balanced by MACs; whole models in turn), each board writes its
share to the shared cache, and the profile is then assembled from the cache on the first board,
as a profile whose measurements are all cached is. An interrupted farm resumes the same way."""

from __future__ import annotations

import contextlib
import queue as queues
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, DeviceError, EdgeMPQError

Step = Callable[[int, int, Any], None]


@dataclass(frozen=True)
class Request:
    """What one farm run profiles: the model as the user named it, the devices and how."""

    devices: tuple[str, ...]
    model: str
    weights: str | None
    input_shape: tuple[int, ...]
    probes: int
    layers_only: bool = False
    use_cache: bool = True
    spread: bool = False


@dataclass(frozen=True)
class _Work:
    request: Request
    device: int  # index into request.devices
    part: tuple[int, int] = (0, 1)  # (i, n): the board's share of a spread model


def output_names(devices: tuple[str, ...], output: str) -> list[str]:
    """Where each device's profile goes: `output` for one device, else `<stem>-<device>.json`
    beside it (the device's built-in name, or its target file's stem)."""
    if len(devices) == 1:
        return [output]
    names = [Path(d).stem for d in devices]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"--device names {twice[0]!r} twice; give each device once, or target files "
                          "with different names")
    out = Path(output)
    return [str(out.with_name(f"{out.stem}-{n}{out.suffix or '.json'}")) for n in names]


def check_identical(request: Request) -> str:
    """The one cache folder of a spread's boards: every board reached and asked what it is; a
    board that differs from the first is named (a spread merges timings of one kind of device)."""
    from .backends import backend_for
    from .profile_cache import device_key
    from .targets import load_target

    keys, seen, places = [], [], []
    for device in request.devices:
        target = load_target(device)
        place = (target.backend, sorted(target.connection.items()))
        if place in places:
            raise ConfigError(f"--spread: {device} reaches the same board as "
                              f"{request.devices[places.index(place)]}; give each board once")
        places.append(place)
        with backend_for(target) as backend:
            fingerprint = backend.check()
        keys.append(device_key(target, fingerprint))
        seen.append({k: fingerprint.get(k) for k in ("cpu", "machine", "cores", "runtime_version")})
        if keys[-1] != keys[0]:
            raise ConfigError(f"--spread needs identical boards, and {device} is not {request.devices[0]}'s kind "
                              f"({seen[-1]} against {seen[0]}, or other timing options); profile them without "
                              "--spread, one profile each")
    return keys[0]


def run(request: Request, steps: list[Step]) -> list[dict | str]:
    """Every device's part, one worker process each, at once; per device the profile (as a
    dict) or, under `spread`, what its share was (in words). A device that fails fails the run, naming it,
    after the others have finished (what they measured stays in the cache)."""
    import multiprocessing as mp

    n = len(request.devices)
    works = [_Work(request, i, (i, n) if request.spread else (0, 1)) for i in range(n)]
    ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch or TensorFlow state
    messages = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(w, messages), name=f"edgempq-farm-{i}") for i, w in enumerate(works)]
    results: dict[int, Any] = {}
    errors: dict[int, str] = {}
    try:
        for p in procs:
            p.start()
        while len(results) + len(errors) < n:
            _receive(messages, procs, steps, results, errors)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(timeout=30)
    if errors:
        first = min(errors)
        more = f" ({len(errors) - 1} other device(s) failed too)" if len(errors) > 1 else ""
        raise DeviceError(f"{request.devices[first]}: {errors[first]}{more}")
    return [results[i] for i in range(n)]


def _receive(messages: Any, procs: list[Any], steps: list[Step], results: dict, errors: dict) -> None:
    """Take the workers' next message (progress, result or error); a worker that died without
    one is an error of its device."""
    try:
        kind, i, *rest = messages.get(timeout=0.5)
    except queues.Empty:
        for i, p in enumerate(procs):
            if p.exitcode is not None and i not in results and i not in errors and messages.empty():
                errors[i] = f"its worker ended with exit code {p.exitcode} before it finished"
        return
    if kind == "step":
        steps[i](*rest)
    elif kind == "done":
        results[i] = rest[0]
    else:
        errors[i] = rest[0]


def _worker(work: _Work, messages: Any) -> None:
    """One device's worker process: its measurements, reported back through `messages`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the farm's process stops the workers itself
    try:
        messages.put(("done", work.device, _measure(work, lambda i, n, info: messages.put(
            ("step", work.device, i, n, info if isinstance(info, float | int) else str(info))))))
    except EdgeMPQError as e:
        messages.put(("error", work.device, str(e)))
    except BaseException as e:  # noqa: BLE001 - a bug: its traceback on stderr, the device named
        traceback.print_exc(file=sys.stderr)
        messages.put(("error", work.device, f"failed unexpectedly ({type(e).__name__}: {e}; see above)"))


def _measure(work: _Work, on_step: Step) -> dict | str:
    """The device's profile (a dict), or under `spread` its share measured into the cache (what
    it measured, in words)."""
    from .layers import trace
    from .models import load_model
    from .profile import WholeModel, profile
    from .targets import load_target

    r = work.request
    target = load_target(r.devices[work.device])
    m = load_model(r.model, r.weights, r.input_shape)
    layers = trace(m.module, m.input_shape)
    whole = None if r.layers_only else WholeModel(m.module, m.input_shape, r.probes, work.part)
    if not r.spread:
        table = profile(layers, target, m.model_hash, use_cache=r.use_cache, on_step=on_step, whole=whole)
        return table.to_dict()
    return _measure_share(layers, target, whole, work.part, on_step)


def _measure_share(layers: list, target: Any, whole: Any, part: tuple[int, int], on_step: Step) -> str:
    """A spread board's share: its single-layer models (whole layers, balanced by MACs) and its
    whole models, timed and written to the cache it shares with the other boards; what it
    measured, said in words."""
    from .backends import backend_for
    from .backends.base import check_runtime
    from .cache import cache_dir
    from .distributed import balance
    from .profile import measure_rows, measure_whole
    from .profile_cache import RowCache, device_key, device_lock, jobs_for

    target.check_timeable()

    jobs = jobs_for(layers, target)
    sizes = {j.layer.signature: float(j.layer.macs + 1) * sum(k.layer.signature == j.layer.signature for k in jobs)
             for j in jobs}
    mine = balance(sizes, part[1])[part[0]]
    with backend_for(target) as backend, contextlib.ExitStack() as held:
        fingerprint = backend.check()
        check_runtime(target, fingerprint)
        key = device_key(target, fingerprint)
        folder = cache_dir("profiles", key)
        held.enter_context(device_lock(folder, target, on_step))
        cache = RowCache(folder)
        rows = measure_rows(backend, [j for j in jobs if j.layer.signature in mine], cache, on_step)
        wholes = measure_whole(backend, whole, layers, target, cache, on_step) if whole is not None else None
    n_whole = len(wholes.uniform_ms) + len(wholes.mixed_ms) + len(wholes.probes) if wholes is not None else 0
    return f"{target.name} took {len(rows)} single-layer models and {n_whole} whole models"
