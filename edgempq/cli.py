"""The command line: parse, call one library function, save, print a short summary.

Heavy imports (torch, TensorFlow) happen inside the commands, so `edgempq --help` is fast.
Loading a model from a .py file or module executes that code, as Python's import does."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any

import click

from . import show
from .errors import EdgeMPQError
from .files import check_output
from .stop import Terminated

MODEL_HELP = ("zoo:NAME[?key=value&...], path/to/file.py:factory or package.module:factory "
              "(a file or module is executed to build the model)")
MIN_AGREEMENT_DEFAULT = 0.99  # edgempq.validate.MIN_AGREEMENT, without importing numpy for --help
# Paths are checked by the code that opens them, which says what is wrong in one sentence (click's
# own check would be a usage error with status 2).
PATH = click.Path(readable=False)
DATA_HELP = "a built-in set (mnist, digits), an image folder, a .npz with x and y, or a .toml manifest"


PTQ_DEFAULT = "gptq"  # edgempq.quant.DEFAULT_WEIGHTS, without importing torch for --help


def _ptq_options(f):
    """--ptq, --ptq-param, --bias-correction and --act-range: how a policy is quantized."""
    for opt in reversed([
        click.option("--ptq", "ptq", default=PTQ_DEFAULT, show_default=True,
                     help="the weight algorithm: minmax, mse, gptq or adaround"),
        click.option("--ptq-param", "ptq_params", multiple=True, help="a parameter of the algorithm as key=value "
                     "(repeatable), e.g. iters=500 or granularity=block for adaround"),
        click.option("--bias-correction/--no-bias-correction", default=True, show_default=True,
                     help="correct each layer's bias for the mean shift quantization causes (empirical, per "
                     "output channel)"),
        click.option("--act-range", default="minmax", show_default=True,
                     type=click.Choice(["minmax", "percentile", "mse"]), help="how activation ranges are calibrated"),
    ]):
        f = opt(f)
    return f


def _quant_config(ptq: str, ptq_params: tuple[str, ...], bias_correction: bool, act_range: str):
    """The QuantConfig of the options; a bad algorithm name or parameter is an error listing the valid ones."""
    from dataclasses import asdict

    from .quant import QuantConfig
    from .quant.weights import algorithm

    params = asdict(algorithm(ptq, list(ptq_params)).params)
    return QuantConfig(weights=ptq, weight_params=params, bias_correction=bias_correction, act_method=act_range)


def _usage_error(e: click.UsageError) -> None:
    where, msg = e.ctx.command_path if e.ctx else "edgempq", e.format_message().rstrip(".")
    click.echo(f"error: {msg}{' ' if msg.endswith('?') else '; '}see `{where} --help`", err=True)
    sys.exit(1)


class _Group(click.Group):
    """Turns our errors into one line on stderr and exit status 1, never a traceback."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:  # the group's own options (`edgempq --bogus`)
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            _usage_error(e)
            raise  # pragma: no cover - _usage_error exits

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeMPQError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except click.UsageError as e:  # a bad option or value: one sentence too, not click's usage block
            _usage_error(e)
        except KeyboardInterrupt as e:
            # every output is written atomically, so an interrupted command leaves none behind;
            # a profile keeps the measurements it finished in the cache and resumes from them
            click.echo("interrupted; no file was left half-written (a profile keeps its finished "
                       "measurements in the cache and resumes from them)", err=True)
            sys.exit(143 if isinstance(e, Terminated) else 130)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return super().main(*args, **kwargs)

        from . import stop

        def terminate(signum: int, frame: Any) -> None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup short
            stop.request(signum)
            raise Terminated

        def interrupt(signum: int, frame: Any) -> None:
            stop.request(signum)  # remembered: a library may swallow the KeyboardInterrupt below
            raise KeyboardInterrupt

        # SIGTERM unwinds like Ctrl-C, so temporary folders on the device and here are removed
        previous = signal.signal(signal.SIGTERM, terminate), signal.signal(signal.SIGINT, interrupt)
        try:
            return super().main(*args, **kwargs)
        finally:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgempq")
def main() -> None:
    """edgempq: mixed-precision quantization chosen from what the device really does.

    Pipeline: profile -> sensitivity -> search -> deploy -> validate; `demo` runs all of it on
    the built-in default. Helpers: targets, models, data, layers, train, evaluate.
    """


@contextmanager
def _progress(label: str):
    """A rich progress bar with ETA driven by (done, total, info) callbacks; a float info is a
    training loss."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(label, total=None, info="")

        def step(i: int, total: int, info: float | str) -> None:
            text = f"loss {info:.3f}" if isinstance(info, float) else info
            bar.update(task, completed=i, total=total, info=text)

        yield step


@main.command()
def models() -> None:
    """List the built-in zoo models."""
    from rich.table import Table

    from .zoo import ZOO

    t = Table("model", "input", "classes", "dataset", "description")
    for e in ZOO.values():
        t.add_row(f"zoo:{e.name}", "x".join(map(str, e.input_shape)), str(e.num_classes),
                  e.dataset or "-", e.description)
    show.console().print(t)


@main.command()
@click.option("--data", "data_spec", required=True, help=DATA_HELP)
@click.option("--input-shape", help="resample to this CxHxW (as a model would take it)")
def data(data_spec: str, input_shape: str | None) -> None:
    """Describe a dataset: samples, classes and the split sizes."""
    from .data import load_data
    from .models import parse_shape

    ds = load_data(data_spec, parse_shape(input_shape) if input_shape else None)
    click.echo(f"{ds.name}: {len(ds.y)} samples of shape {'x'.join(map(str, ds.sample_shape))}, "
               f"{len(ds.classes)} classes, id {ds.data_id}")
    for k, idx in ds.splits.items():
        click.echo(f"  {k:<12}{len(idx):>7}")


@main.command()
@click.option("--model", "model_spec", required=True, help=MODEL_HELP)
@click.option("--weights", type=PATH, help="a state_dict saved with torch.save")
@click.option("--input-shape", help="CxHxW of one sample when the model does not declare it")
@click.option("-o", "--output", type=PATH, help="write the layers as JSON")
def layers(model_spec: str, weights: str | None, input_shape: str | None, output: str | None) -> None:
    """Trace the model and list its layers (names, shapes, MACs, kind)."""
    if output:
        check_output(output)
    from rich.table import Table

    from .files import write_json
    from .layers import trace
    from .models import load_model, parse_shape

    m = load_model(model_spec, weights, parse_shape(input_shape) if input_shape else None)
    if m.input_shape is None:
        raise EdgeMPQError(f"model {model_spec} does not declare its input shape; give --input-shape CxHxW")
    ls = trace(m.module, m.input_shape)
    t = Table("layer", "kind", "in", "out", "params", "MACs", "note")
    for la in ls:
        t.add_row(la.name, la.kind, "x".join(map(str, la.in_shape)), "x".join(map(str, la.out_shape)),
                  f"{la.params:,}", f"{la.macs:,}", la.fixed_reason or "")
    show.console().print(t)
    click.echo(f"{sum(la.searchable for la in ls)} searchable layers, {sum(la.macs for la in ls):,} MACs")
    if output:
        write_json(output, {"schema_version": 1, "model": model_spec, "model_hash": m.model_hash,
                            "layers": [la.to_dict() for la in ls]})
        click.echo(f"wrote {output}")


@main.command()
@click.option("--model", "model_spec", required=True, help=MODEL_HELP)
@click.option("--data", "data_spec", help=DATA_HELP + " (default: the zoo model's)")
@click.option("--epochs", default=12, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=0.1, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--seed", default=0, show_default=True)
@click.option("-o", "--output", required=True, type=PATH, help="where to save the weights (.pt)")
def train(model_spec: str, data_spec: str | None, epochs: int, batch_size: int, lr: float,
          seed: int, output: str) -> None:
    """Train a model on the CPU and save its state_dict."""
    check_output(output)
    import torch

    from .files import atomic_write_bytes
    from .pipeline import state_bytes, train_model
    from .simulation import load_model_and_data
    from .train import TrainConfig

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    torch.manual_seed(seed)
    model, ds = load_model_and_data(model_spec, data_spec)
    with _progress(f"training {model_spec}") as step:
        res, test_top1 = train_model(model, ds, cfg, step)
    atomic_write_bytes(output, state_bytes(model.module))
    click.echo(f"trained {epochs} epochs in {res.seconds:.1f} s: validation top-1 {res.val_top1:.2%}, "
               f"test top-1 {test_top1:.2%}; wrote {output}")


@main.command()
@click.option("--model", "model_spec", required=True, help=MODEL_HELP)
@click.option("--weights", type=PATH, help="a state_dict saved with torch.save")
@click.option("--data", "data_spec", help=DATA_HELP + " (default: the zoo model's)")
@click.option("--policy", "policy_path", type=PATH, help="a policy.json to simulate")
@click.option("--precision", "precisions", multiple=True, help="a uniform precision to simulate (repeatable)")
@_ptq_options
@click.option("--qat-epochs", default=0, show_default=True, type=click.IntRange(0))
def evaluate(model_spec: str, weights: str | None, data_spec: str | None, policy_path: str | None,
             precisions: tuple[str, ...], ptq: str, ptq_params: tuple[str, ...], bias_correction: bool,
             act_range: str, qat_epochs: int) -> None:
    """Test top-1 of the float model and of simulated (fake-quantized) policies."""
    from dataclasses import replace

    from .layers import trace
    from .schema import Policy, Precision
    from .simulation import float_result, load_model_and_data, simulate

    cfg = _quant_config(ptq, ptq_params, bias_correction, act_range)
    model, ds = load_model_and_data(model_spec, data_spec, weights)
    ls = trace(model.module, model.input_shape)
    policies = [(p, Policy.uniform(ls, Precision.parse(p))) for p in precisions]
    if policy_path:
        policies.append((policy_path, Policy.load(policy_path)))
    rows = [float_result(model, ds)]
    for label, pol in policies:
        if qat_epochs:
            with _progress(f"QAT {label}") as step:
                rows.append(replace(simulate(model, ds, pol, cfg, qat_epochs, step)[1], label=label))
        else:
            with _progress(f"PTQ {label} ({ptq})") as step:
                rows.append(replace(simulate(model, ds, pol, cfg, on_step=step)[1], label=label))
    show.rows(rows, f"{model_spec} on {ds.name} (test split, {len(ds.splits['test'])} samples)")
    given = ", ".join(ptq_params) or "default parameters"
    click.echo(f"PTQ {ptq} ({given}), {'with' if bias_correction else 'without'} bias correction, activation "
               f"ranges {act_range}, on the calibration split ({len(ds.splits['calibration'])} samples)")



@main.command()
def targets() -> None:
    """List the built-in device targets (copy a TOML file to describe your own device)."""
    from rich.table import Table

    from .targets import builtin_targets, load_target

    t = Table("target", "backend", "threads", "conv", "dwconv", "linear", "description")
    for name in builtin_targets():
        tg = load_target(name)
        t.add_row(name + (" (template)" if tg.template else ""), tg.backend, str(tg.threads),
                  *(" ".join(map(str, tg.allowed(k))) for k in ("conv", "dwconv", "linear")), tg.description)
    show.console().print(t)


@main.command()
@click.option("--device", "device", required=True, help="a built-in target name or a target .toml file")
@click.option("--model", "model_spec", required=True, help=MODEL_HELP)
@click.option("--weights", type=PATH, help="a state_dict: weights do not change latency, but the profile is "
              "checked against the model deploy and validate load, so give the weights you will deploy")
@click.option("--input-shape", help="CxHxW (or 1,C,H,W) when the model does not declare it")
@click.option("--no-cache", is_flag=True, help="measure everything again, and do not store it")
@click.option("--layers-only", is_flag=True, help="skip the end-to-end timings of the whole model")
@click.option("-o", "--output", default="profile.json", show_default=True, type=PATH)
def profile(device: str, model_spec: str, weights: str | None, input_shape: str | None, no_cache: bool,
            layers_only: bool, output: str) -> None:
    """Measure what each layer costs on the device at each precision it can run."""
    check_output(output)
    from .layers import trace
    from .models import load_model, parse_shape
    from .profile import WholeModel
    from .profile import profile as run_profile
    from .targets import load_target

    target = load_target(device)
    shape = parse_shape(input_shape) if input_shape else None
    if shape and len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    m = load_model(model_spec, weights, shape)
    if m.input_shape is None:
        raise EdgeMPQError(f"model {model_spec} does not declare its input shape; give --input-shape CxHxW")
    layers = trace(m.module, m.input_shape)
    with _progress(f"profiling on {target.name}") as step:
        whole = None if layers_only else WholeModel(m.module, m.input_shape)
        table = run_profile(layers, target, m.model_hash, use_cache=not no_cache, on_step=step, whole=whole)
    table.save(output)
    show.profile(table, f"{model_spec} on {target.name}")
    click.echo(f"{len(table.rows)} measurements for {sum(la.searchable for la in layers)} layers; wrote {output}")



@main.command()
@click.option("--method", required=True, help="the method: ompq, csmpq, hawq, measured, clado, gmpq or limpq")
@click.option("--model", "model_spec", required=True, help=MODEL_HELP)
@click.option("--weights", type=PATH, help="a state_dict saved with torch.save (the trained model)")
@click.option("--data", "data_spec", help=DATA_HELP + " (default: the zoo model's); its calibration split is used")
@click.option("--precisions", help="comma-separated precisions to score for every layer (default: all deployable)")
@click.option("--device", help="score the precisions this target runs for each layer's kind")
@click.option("--param", "params", multiple=True, help="a method parameter as key=value (repeatable)")
@click.option("-o", "--output", default="sensitivity.json", show_default=True, type=PATH)
def sensitivity(method: str, model_spec: str, weights: str | None, data_spec: str | None, precisions: str | None,
                device: str | None, params: tuple[str, ...], output: str) -> None:
    """Score each layer's sensitivity to each precision (lower penalty = safer to quantize)."""
    check_output(output)
    from . import pipeline
    from .sensitivity import get_method, parse_params

    parse_params(get_method(method), list(params))  # bad names and values fail before the model loads
    model, ds = pipeline.load_model_and_data(model_spec, data_spec, weights)
    layers = pipeline.trace(model.module, model.input_shape)
    chosen = pipeline.layer_precisions(layers, tuple(p for p in (precisions or "").split(",") if p), device)
    with _progress(f"{method} sensitivity") as step:
        sens = pipeline.sensitivity(model, ds, method, chosen, list(params), step)
    sens.save(output)
    show.sensitivity(sens, layers, f"{method} on {model_spec} ({ds.name}, calibration split)")
    quant = ""
    if "ptq" in sens.params:
        p = sens.params
        quant = (f", each layer quantized by PTQ {p['ptq']} ({p.get('ptq_params') or 'default parameters'}, "
                 f"{'with' if p.get('bias_correction') else 'without'} bias correction, activation ranges "
                 f"{p.get('act_range')})")
    click.echo(f"scored {len(sens.penalties)} (layer, precision) pairs{quant}; wrote {output}")



@main.command()
@click.option("--profile", "profile_path", required=True, type=PATH, help="the profile.json of the model")
@click.option("--sensitivity", "sens_path", required=True, type=PATH, help="a sensitivity.json")
@click.option("--latency-ms", type=float, help="end-to-end latency budget on the profiled device")
@click.option("--size-kb", type=float, help="weight storage budget (as the artifact stores it)")
@click.option("--bops", type=float, help="bit-operations budget (MACs x weight bits x activation bits)")
@click.option("--ram-kb", type=float, help="per-layer working-set budget (microcontrollers)")
@click.option("--group", "groups", multiple=True, help="comma-separated layers that share one precision (repeatable)")
@click.option("--group-shared-inputs", is_flag=True, help="layers that read the same activation share one precision")
@click.option("--sweep", "sweep_spec", help="solve N budgets: latency_ms=LO:HI:N (or size_kb, bops, ram_kb)")
@click.option("--time-limit", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="seconds for the solver; past it the best policy found is kept with its gap")
@click.option("-o", "--output", default="policy.json", show_default=True, type=PATH,
              help="the policy (with --sweep: the front as JSON, and a PNG beside it)")
def search(profile_path: str, sens_path: str, latency_ms: float | None, size_kb: float | None, bops: float | None,
           ram_kb: float | None, groups: tuple[str, ...], group_shared_inputs: bool, sweep_spec: str | None,
           time_limit: float, output: str) -> None:
    """Pick one precision per layer: the least sensitivity penalty under the budgets."""
    check_output(output)
    from .schema import Budget, CostTable, Sensitivity
    from .solve import solve

    table, sens = CostTable.load(profile_path), Sensitivity.load(sens_path)
    budget = Budget(latency_ms=latency_ms, size_kb=size_kb, bops=bops, ram_kb=ram_kb)
    group_list = tuple(tuple(n.strip() for n in g.split(",") if n.strip()) for g in groups)
    if group_shared_inputs:
        from .solve import shared_input_groups

        group_list += shared_input_groups(table)
    layers = list(table.layers)
    if sweep_spec:
        _search_sweep(layers, sens, table, budget, group_list, sweep_spec, time_limit, output)
        return
    if not budget.items():
        raise EdgeMPQError("give at least one budget: --latency-ms, --size-kb, --bops or --ram-kb (or --sweep)")
    policy = solve(layers, sens, table, budget, table.target, group_list, time_limit)
    policy.save(output)
    show.policy(policy, layers, table)
    click.echo(f"wrote {output}")


def _search_sweep(layers, sens, table, budget, groups, spec, time_limit, output) -> None:
    from pathlib import Path

    from .files import write_json
    from .plots import pareto_front
    from .solve import parse_sweep, sweep

    key = parse_sweep(spec)[0]
    with _progress(f"sweeping {key}") as step:
        step(0, 1, spec)
        points = sweep(layers, sens, table, budget, table.target, spec, groups, time_limit)
    if not any(p["feasible"] for p in points):
        from .errors import InfeasibleError

        raise InfeasibleError(f"none of the budgets of the sweep {spec} can be met; at the loosest, "
                              f"{points[-1]['reason']}")
    write_json(Path(output), {"sweep": key, "method": sens.method, "target": table.target.name,
                              "held": budget.to_dict(), "points": points})
    png = pareto_front(points, key, f"{sens.method} on {table.target.name}", Path(output).with_suffix(".png"))
    for p in points:
        pred = p.get("predicted", {})
        click.echo(f"{key}={p['budget'][key]:<12.6g} " + (
            f"objective {p['objective']:<10.4g} latency {pred.get('latency_ms', float('nan')):.3f} ms, "
            f"size {pred['size_bytes'] / 1024:.1f} KB" if p["feasible"] else "infeasible"))
    click.echo(f"wrote {output} and {png}")



@main.command()
@click.option("--model", "model_spec", required=True, help=MODEL_HELP)
@click.option("--weights", type=PATH, help="a state_dict saved with torch.save (the trained model)")
@click.option("--policy", "policy_path", required=True, type=PATH, help="a policy.json (search's, or by hand)")
@click.option("--data", "data_spec", help=DATA_HELP + " (default: the zoo model's); calibrates the quantization")
@click.option("--device", required=True, help="the target: a built-in name or a target .toml file")
@_ptq_options
@click.option("--qat-epochs", default=0, show_default=True, type=click.IntRange(0))
@click.option("--profile", "profile_path", type=PATH, help="the model's profile.json on this target: "
              "records the predicted latency per layer for validate and the report")
@click.option("--sweep", "sweep_path", type=PATH, help="search --sweep's JSON: the report shows the front")
@click.option("-o", "--output", default="build", show_default=True, type=PATH)
def deploy(model_spec: str, weights: str | None, policy_path: str, data_spec: str | None, device: str,
           ptq: str, ptq_params: tuple[str, ...], bias_correction: bool, act_range: str,
           qat_epochs: int, profile_path: str | None, sweep_path: str | None, output: str) -> None:
    """Build the mixed-precision .tflite (and C array for TFLite Micro) the policy describes,
    with deploy.json and a report (report.md, report.html) beside it. The artifact's integer
    weights, scales and biases are the simulation's, checked bit for bit."""
    check_output(output, folder=True)
    from . import pipeline
    from .files import read_json
    from .schema import CostTable, Policy
    from .targets import load_target

    policy = Policy.load(policy_path)
    cfg = _quant_config(ptq, ptq_params, bias_correction, act_range)  # a bad name or key fails first
    load_target(device)  # a bad target fails before the model loads
    table = CostTable.load(profile_path) if profile_path else None
    sweep = read_json(sweep_path, "sweep") if sweep_path else None
    if sweep is not None:
        from .report import check_sweep

        check_sweep(sweep, sweep_path)
    model, ds = pipeline.load_model_and_data(model_spec, data_spec, weights)
    with _progress("quantizing and converting") as step:
        step(0, 1, "")
        report = pipeline.deploy(model, ds, policy, device, output, qat_epochs, cfg, on_step=step, profile=table,
                                 sweep=sweep, weights=weights, data_spec=data_spec)
    show.deployed(report, output)


@main.command()
@click.argument("artifact", type=PATH)
@click.option("--device", required=True, help="the target to run it on: a built-in name or a target .toml file")
@click.option("--data", "data_spec", help=DATA_HELP + " (default: the deployed one); its test split is used")
@click.option("--model", "model_spec", help="the float model (default: the one it was deployed from)")
@click.option("--weights", type=PATH, help="the float model's weights (default: those it was deployed with)")
@click.option("--policy", "policy_path", type=PATH, help="the policy to simulate (default: the deployed one)")
@click.option("--profile", "profile_path", type=PATH, help="the profile.json that predicts its latency")
@click.option("--samples", type=click.IntRange(1), help="only the first N test samples")
@click.option("--runs", type=click.IntRange(1), help="timed runs (default: the target's)")
@click.option("--min-agreement", default=MIN_AGREEMENT_DEFAULT, show_default=True, type=click.FloatRange(0, 1),
              help="below this top-1 agreement with the simulation, find the layer where they part")
@click.option("--layers/--no-layers", "find_divergence", default=None,
              help="always (or never) compare the layers' outputs with the simulation")
@click.option("-o", "--output", type=PATH,
              help="where validation.json and the report go (default: beside the artifact)")
def validate(artifact: str, device: str, data_spec: str | None, model_spec: str | None, weights: str | None,
             policy_path: str | None, profile_path: str | None, samples: int | None, runs: int | None,
             min_agreement: float, find_divergence: bool | None, output: str | None) -> None:
    """Run a deployed artifact (a deploy folder or a .tflite) on the device over the test split:
    accuracy against the float model and the simulation, latency against the prediction, size;
    writes validation.json and the report beside it."""
    if output:
        check_output(output, folder=True)
    from .targets import load_target
    from .validate import validate as run_validate

    load_target(device)  # a bad target fails before anything loads
    with _progress(f"validating on {device}") as step:
        result = run_validate(artifact, device, data_spec, model_spec, weights, policy_path, profile_path, samples,
                              runs, min_agreement, find_divergence, step, output)
    show.validation(result)


@main.command()
@click.option("--retrain", is_flag=True, help="train again even if cached weights exist")
@click.option("-o", "--output", default="edgempq-demo", show_default=True, type=PATH,
              help="where the profile, sensitivity, policy, artifact and report go")
def demo(retrain: bool, output: str) -> None:
    """The whole pipeline offline on the built-in default: MNIST ResNet-8 trained (or cached),
    profiled on this machine, CSMPQ sensitivity, searched under a budget derived from the
    profile, deployed, validated, reported."""
    check_output(output, folder=True)
    from . import pipeline

    with _progress("demo") as step:
        summary = pipeline.demo(output, retrain, step)
    show.demo(summary)
