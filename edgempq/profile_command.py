"""The profile command: one device, a farm of devices (one profile each, measured at once), or
a model spread over identical boards (one profile); the preflight once, each profile saved and
shown."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import click

from . import show
from .clikit import Source, progress_bar, progress_bars
from .errors import EdgeMPQError
from .files import check_output


@dataclass(frozen=True)
class ProfileOptions:
    """The profile command's options, as the CLI folds them."""

    devices: tuple[str, ...]
    output: str
    probes: int | None = None
    no_cache: bool = False
    layers_only: bool = False
    no_check: bool = False
    spread: bool = False


def profile(source: Source, model: Any, opts: ProfileOptions) -> None:
    """Profile `model` (loaded from `source`, its input shape known) on every device of `opts`
    and write one profile per device, or one for a spread."""
    from . import farm
    from .layers import trace
    from .targets import load_target

    outputs = _outputs(opts)
    targets = [load_target(d) for d in opts.devices]  # every target file checked before any work
    for t in targets:
        t.check_timeable()
    layers = trace(model.module, model.input_shape)
    folded = {} if opts.no_check else _preflight(model, layers)
    tables = []
    if len(targets) > 1:
        request = _request(source, model, opts)
        if opts.spread:
            farm.check_identical(request)
        with progress_bars([f"profiling on {t.name}" for t in targets]) as steps:
            results = farm.run(request, steps)
        if opts.spread:
            click.echo(f"--spread over {len(targets)} identical boards: " + "; ".join(results)
                       + f"; the profile is assembled from the shared cache on {targets[0].name}")
        else:
            from .schema import CostTable

            tables = [CostTable.from_dict(r) for r in results]
    if not tables:
        tables = [_one(model, layers, targets[0], opts)]
    for table, output in zip(tables, outputs, strict=True):
        _save(replace(table, arch_hash=model.arch_hash, folded=folded or table.folded), source, layers, output)


def _outputs(opts: ProfileOptions) -> list[str]:
    from .farm import output_names

    if opts.spread and len(opts.devices) < 2:
        raise EdgeMPQError("--spread splits one model's measurements over several identical boards; give "
                           "--device two or more times")
    if opts.spread and opts.no_cache:
        raise EdgeMPQError("--spread puts the boards' measurements together through the profile cache; "
                           "drop --no-cache")
    outputs = [opts.output] if opts.spread else output_names(opts.devices, opts.output)
    for o in outputs:
        check_output(o)
    return outputs


def _request(source: Source, model: Any, opts: ProfileOptions) -> Any:
    from .farm import Request
    from .profile import PROBES

    return Request(opts.devices, source.model, source.weights, tuple(model.input_shape),
                   PROBES if opts.probes is None else opts.probes, opts.layers_only, not opts.no_cache, opts.spread)


def _preflight(model: Any, layers: list) -> dict[str, Any]:
    """The float conversion once, before any measurement; the layers the converter folds (each
    named with what it folds into)."""
    from .preflight import preflight

    with progress_bar("preflight: converting the float model") as step:
        step(0, 1, "")
        checked = preflight(model.module, model.input_shape, layers)
    click.echo(f"preflight: {checked.searchable} searchable layers each mapped to its TFLite op "
               f"({checked.seconds:.1f} s)")
    if checked.folded:
        click.echo(f"preflight: kept at f32, the converter folds into their weights: {', '.join(checked.folded)}")
    return dict(checked.folded)


def _one(model: Any, layers: list, target: Any, opts: ProfileOptions) -> Any:
    """The profile on one device in this process (after a spread: every measurement cached)."""
    from .profile import PROBES, WholeModel
    from .profile import profile as run_profile

    label = f"assembling from the cache on {target.name}" if opts.spread else f"profiling on {target.name}"
    with progress_bar(label) as step:
        probes = PROBES if opts.probes is None else opts.probes
        whole = None if opts.layers_only else WholeModel(model.module, model.input_shape, probes)
        return run_profile(layers, target, model.model_hash, use_cache=not opts.no_cache, on_step=step, whole=whole)


def _save(table: Any, source: Source, layers: list, output: str) -> None:
    table.save(output)
    show.profile(table, f"{source.model} on {table.target.name}")
    click.echo(f"{len(table.rows)} measurements for {sum(la.searchable for la in layers)} layers; wrote {output}")
