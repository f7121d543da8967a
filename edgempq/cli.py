"""The command line: parse, call one library function, save, print a short summary.

Heavy imports (torch, TensorFlow) happen inside the commands, so `edgempq --help` is fast.
Loading a model from a .py file or module executes that code, as Python's import does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import show
from .clikit import (
    DATA_HELP,
    MIN_AGREEMENT_DEFAULT,
    PATH,
    Group,
    Source,
    budget_options,
    compute_option,
    deploy_options,
    progress_bar,
    quant_options,
    source_options,
    train_options,
)
from .errors import EdgeMPQError
from .files import check_output


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgempq")
def main() -> None:
    """edgempq: mixed-precision quantization chosen from what the device really does.

    Pipeline: profile -> sensitivity -> search -> deploy -> validate; `demo` runs all of it on
    the built-in default. Helpers: targets, models, data, layers, train, evaluate.
    """


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
    click.echo(f"preprocessing: {ds.preprocessing}")


@main.command()
@source_options(weights="a state_dict saved with torch.save", data=None)
@click.option("--input-shape", help="CxHxW of one sample when the model does not declare it")
@click.option("--check", is_flag=True, help="the preflight: convert the float model to TFLite once and show which "
              "op carries each layer's precision (or why it stays float); a model that cannot deploy fails here")
@click.option("-o", "--output", type=PATH, help="write the layers as JSON")
def layers(source: Source, input_shape: str | None, check: bool, output: str | None) -> None:
    """Trace the model and list its layers (names, shapes, MACs, kind)."""
    if output:
        check_output(output)
    from .files import write_json
    from .layers import trace

    m = _model_with_shape(source, input_shape)
    ls = trace(m.module, m.input_shape)
    fates = None
    if check:
        from .preflight import preflight

        with progress_bar("preflight: converting the float model") as step:
            step(0, 1, "")
            fates = preflight(m.module, m.input_shape, ls)
    show.layers(ls, fates)
    if output:
        write_json(output, {"schema_version": 1, "model": source.model, "model_hash": m.model_hash,
                            "layers": [la.to_dict() for la in ls]})
        click.echo(f"wrote {output}")


def _model_with_shape(source: Source, input_shape: str | None) -> Any:
    """The model of `source` with its input shape (`--input-shape` CxHxW, or 1xCxHxW) known."""
    from .models import load_model, parse_shape

    shape = parse_shape(input_shape) if input_shape else None
    if shape and len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    m = load_model(source.model, source.weights, shape)
    if m.input_shape is None:
        raise EdgeMPQError(f"model {source.model} does not declare its input shape; give --input-shape CxHxW")
    return m


@main.command()
@source_options(weights=None)
@train_options
@compute_option
@click.option("-o", "--output", required=True, type=PATH, help="where to save the weights (.pt)")
def train(source: Source, cfg: Any, output: str) -> None:
    """Train a model (on the GPU when there is one) and save its state_dict."""
    check_output(output)
    import torch

    from .files import atomic_write_bytes
    from .pipeline import train_model
    from .simulation import load_model_and_data, state_bytes
    from .tasks import describe

    torch.manual_seed(cfg.seed)
    model, ds = load_model_and_data(source.model, source.data, task=source.task)
    with progress_bar(f"training {source.model}") as step:
        res, test = train_model(model, ds, cfg, step)
    atomic_write_bytes(output, state_bytes(model.module))
    click.echo(f"trained {cfg.epochs} epochs in {res.seconds:.1f} s ({model.task}): validation "
               f"{describe(res.val_scores) or '–'}; test {describe(test)}; wrote {output}")


@main.command()
@source_options(weights="a state_dict saved with torch.save")
@click.option("--policy", "policy_path", type=PATH, help="a policy.json to simulate")
@click.option("--precision", "precisions", multiple=True, help="a uniform precision to simulate (repeatable)")
@quant_options
@compute_option
def evaluate(source: Source, policy_path: str | None, precisions: tuple[str, ...], quant: Any,
             qat_epochs: int) -> None:
    """Test top-1 of the float model and of simulated (fake-quantized) policies."""
    from dataclasses import replace

    from .layers import trace
    from .schema import Policy, Precision
    from .simulation import float_result, load_model_and_data, simulate

    model, ds = load_model_and_data(source.model, source.data, source.weights, task=source.task)
    ls = trace(model.module, model.input_shape)
    policies = [(p, Policy.uniform(ls, Precision.parse(p))) for p in precisions]
    if policy_path:
        policies.append((policy_path, Policy.load(policy_path)))
    rows = [float_result(model, ds)]
    for label, pol in policies:
        with progress_bar(f"QAT {label}" if qat_epochs else f"PTQ {label} ({quant.weights})") as step:
            rows.append(replace(simulate(model, ds, pol, quant, qat_epochs, step)[1], label=label))
    show.rows(rows, f"{source.model} on {ds.name} (test split, {len(ds.splits['test'])} samples)")
    show.ptq_used(quant, len(ds.splits["calibration"]))


@main.command()
def targets() -> None:
    """List the built-in device targets (copy a TOML file to describe your own device)."""
    from rich.table import Column, Table

    from .schema import SEARCHABLE_KINDS
    from .targets import builtin_targets, load_target

    t = Table(Column("target", no_wrap=True), "backend", "threads", *SEARCHABLE_KINDS, "limits", "description")
    for name in builtin_targets():
        tg = load_target(name)
        limits = ", ".join(f"{k.removesuffix('_kb')} {getattr(tg, k):g} KB" for k in ("ram_kb", "flash_kb")
                           if getattr(tg, k) is not None)
        if tg.microcontroller:
            limits += "; float allowed" if tg.allow_float else "; integer only"
        if tg.emulated:
            limits = (limits + "; " if limits else "") + "emulated: validate only"
        t.add_row(name + (" (template)" if tg.template else ""), tg.backend, str(tg.threads),
                  *(" ".join(map(str, tg.allowed(k))) for k in SEARCHABLE_KINDS), limits or "-", tg.description)
    show.console().print(t)


@main.command()
@click.option("--device", "devices", required=True, multiple=True,
              help="a built-in target name or a target .toml file; repeat it for a farm of devices, profiled at "
                   "once, one profile each (PROFILE-NAME.json)")
@click.option("--spread", is_flag=True, help="the devices are identical boards: share this model's measurements "
              "between them and write one profile")
@source_options(weights="a state_dict (optional: latency does not depend on the weights, and the profile is "
                "checked against the architecture and input shape only)", data=None)
@click.option("--input-shape", help="CxHxW (or 1,C,H,W) when the model does not declare it")
@click.option("--no-cache", is_flag=True, help="measure everything again, and do not store it")
@click.option("--layers-only", is_flag=True, help="skip the end-to-end timings of the whole model")
@click.option("--probes", type=click.IntRange(0, 500), default=None,
              help="random mixed policies timed whole, which the latency model is fitted on  [default: 24; "
                   "0: fit on the uniform and alternating policies only]")
@click.option("--no-check", is_flag=True, help="skip the preflight (the float conversion that refuses, before any "
              "measurement, a model that cannot deploy)")
@click.option("-o", "--output", default="profile.json", show_default=True, type=PATH)
def profile(devices: tuple[str, ...], source: Source, input_shape: str | None, output: str, **flags: Any) -> None:
    """Measure what each layer costs on the device at each precision it can run."""
    check_output(output)
    from .profile_command import ProfileOptions
    from .profile_command import profile as run

    run(source, _model_with_shape(source, input_shape), ProfileOptions(devices, output, **flags))


@main.command()
@click.option("--method", required=True, help="the method: ompq, csmpq, hawq, measured, clado, gmpq or limpq "
              "(the README's method table says which to use)")
@source_options(data=DATA_HELP + " (default: the zoo model's); its calibration split is used")
@click.option("--precisions", help="comma-separated precisions to score for every layer (default: all deployable)")
@click.option("--device", help="score the precisions this target runs for each layer's kind")
@click.option("--param", "params", multiple=True, help="a method parameter as key=value (repeatable)")
@compute_option
@click.option("-o", "--output", default="sensitivity.json", show_default=True, type=PATH)
def sensitivity(method: str, source: Source, precisions: str | None, device: str | None, params: tuple[str, ...],
                output: str) -> None:
    """Score each layer's sensitivity to each precision (lower penalty = safer to quantize)."""
    check_output(output)
    from . import pipeline
    from .sensitivity import get_method, parse_params

    parse_params(get_method(method), list(params))  # bad names and values fail before the model loads
    model, ds = pipeline.load_model_and_data(source.model, source.data, source.weights, task=source.task)
    layers = pipeline.trace(model.module, model.input_shape)
    chosen = pipeline.layer_precisions(layers, tuple(p for p in (precisions or "").split(",") if p), device)
    with progress_bar(f"{method} sensitivity") as step:
        sens = pipeline.sensitivity(model, ds, method, chosen, list(params), step)
    sens.save(output)
    show.sensitivity(sens, layers, f"{method} on {source.model} ({ds.name}, calibration split)")
    show.standing(sens)
    click.echo(f"scored {len(sens.penalties)} (layer, precision) pairs{show.quantizer_said(sens.params)}; "
               f"wrote {output}")


@main.command()
@click.option("--profile", "profile_path", required=True, type=PATH, help="the profile.json of the model")
@click.option("--sensitivity", "sens_path", required=True, type=PATH, help="a sensitivity.json")
@budget_options
@click.option("--no-target-limits", is_flag=True, help="do not apply the profiled target's own ram_kb and flash_kb")
@click.option("--group", "groups", multiple=True, help="comma-separated layers that share one precision (repeatable)")
@click.option("--group-shared-inputs", is_flag=True, help="layers that read the same activation share one precision")
@click.option("--pin", "--fixed", "pins", multiple=True, metavar="NAME[=PRECISION]",
              help="keep a layer out of the search at PRECISION (default: the widest the target offers; repeatable)")
@click.option("--allow", "allow", multiple=True, metavar="PRECISION[,...]",
              help="the only precisions the other layers may take (repeatable)")
@click.option("--exclude", "exclude", multiple=True, metavar="PRECISION[,...]",
              help="precisions no layer but a pinned one may take (repeatable)")
@click.option("--sweep", "sweep_spec", help="solve N budgets: latency_ms=LO:HI:N (or size_kb, flash_kb, bops, ram_kb)")
@click.option("--time-limit", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="seconds for the solver; past it the best policy found is kept with its gap")
@click.option("--near-tie", default=0.01, show_default=True, type=click.FloatRange(0, 1),
              help="without --latency-ms: policies within this fraction of the least penalty are tied, and the "
              "fastest on the device wins")
@click.option("-o", "--output", default="policy.json", show_default=True, type=PATH,
              help="the policy (with --sweep: the front as JSON, and a PNG beside it)")
def search(profile_path: str, sens_path: str, budget: Any, sweep_spec: str | None, output: str, **how: Any) -> None:
    """Pick one precision per layer: the least sensitivity penalty under the budgets (and the
    profiled target's flash and RAM), against all-int8 and all-float on the device."""
    check_output(output)
    from .schema import CostTable, Sensitivity
    from .search import SearchRequest, precision_list
    from .search import search as run_search

    table, sens = CostTable.load(profile_path), Sensitivity.load(sens_path)
    request = SearchRequest(budget, how["groups"], how["group_shared_inputs"], how["pins"],
                            precision_list(how["allow"]), precision_list(how["exclude"]), how["time_limit"],
                            not how["no_target_limits"], how["near_tie"])
    if sweep_spec:
        _search_sweep(table, sens, sweep_spec, request, output)
        return
    res = run_search(table, sens, request)
    res.policy.save(output)
    show.searched(res)
    click.echo(f"wrote {output}")


def _search_sweep(table: Any, sens: Any, spec: str, request: Any, output: str) -> None:
    """search --sweep: the front of `spec` solved, written as JSON and a PNG, one line a budget."""
    from .files import write_json
    from .plots import pareto_front
    from .search import sweep_search

    with progress_bar(f"sweeping {spec.partition('=')[0]}") as step:
        step(0, 1, spec)
        front = sweep_search(table, sens, spec, request)
    write_json(Path(output), front.to_dict())
    png = pareto_front(front.points, front.key, f"{sens.method} on {front.target}", Path(output).with_suffix(".png"))
    show.front(front)
    click.echo(f"wrote {output} and {png}")


@main.command()
@source_options(data=DATA_HELP + " (default: the zoo model's); calibrates the quantization")
@click.option("--policy", "policy_path", required=True, type=PATH, help="a policy.json (search's, or by hand)")
@click.option("--device", required=True, help="the target: a built-in name or a target .toml file")
@deploy_options
@compute_option
@click.option("-o", "--output", default="build", show_default=True, type=PATH)
def deploy(source: Source, policy_path: str, device: str, cfg: Any, output: str) -> None:
    """Build the mixed-precision .tflite (and C array for TFLite Micro) the policy describes,
    with deploy.json and a report (report.md, report.html) beside it. The artifact's integer
    weights, scales and biases are the simulation's, checked bit for bit."""
    check_output(output, folder=True)
    from dataclasses import replace

    from . import pipeline
    from .schema import Policy
    from .targets import load_target

    policy = Policy.load(policy_path)
    load_target(device)  # a bad target fails before the model loads
    model, ds = pipeline.load_model_and_data(source.model, source.data, source.weights, task=source.task)
    with progress_bar("quantizing and converting") as step:
        step(0, 1, "")
        report = pipeline.deploy(model, ds, policy, device, output, replace(cfg, on_step=step))
    show.deployed(report, output, device)  # the hint names the target as the user did (a .toml file, say)


@main.command()
@click.argument("artifact", type=PATH)
@click.option("--device", required=True, help="the target to run it on: a built-in name or a target .toml file")
@click.option("--data", help=DATA_HELP + " (default: the deployed one); its test split is used")
@click.option("--task", type=click.Choice(["classify", "dense", "regress", "reconstruct"]),
              help="how the outputs are scored (default: deploy's, else the one the outputs and targets fit)")
@click.option("--model", help="the float model (default: the one it was deployed from)")
@click.option("--weights", type=PATH, help="the float model's weights (default: those it was deployed with)")
@click.option("--policy", type=PATH, help="the policy to simulate (default: the deployed one)")
@click.option("--profile", type=PATH, help="the profile.json that predicts its latency")
@click.option("--samples", type=click.IntRange(1), help="only the first N test samples")
@click.option("--runs", type=click.IntRange(1, 100_000), help="timed runs (default: the target's)")
@click.option("--min-agreement", default=MIN_AGREEMENT_DEFAULT, show_default=True, type=click.FloatRange(0, 1),
              help="below this top-1 agreement with the simulation (per pixel for dense outputs; an SNR under "
              "30 dB for values), find the layer where they part")
@click.option("--layers/--no-layers", "find_divergence", default=None,
              help="always (or never) compare the layers' outputs with the simulation")
@click.option("-o", "--output", "out_dir", type=PATH,
              help="where validation.json and the report go (default: beside the artifact)")
@click.option("--trust", is_flag=True,
              help="import the model code the deploy folder names (by default only zoo: models load from it)")
def validate(artifact: str, device: str, **options: Any) -> None:
    """Run a deployed artifact (a deploy folder or a .tflite) on the device over the test split:
    accuracy against the float model and the simulation, latency against the prediction, size;
    writes validation.json and the report beside it.\f The options are `pipeline.ValidateOptions`."""
    if options["out_dir"]:
        check_output(options["out_dir"], folder=True)
    from dataclasses import replace

    from .pipeline import ValidateOptions
    from .pipeline import validate as run_validate
    from .targets import load_target

    opts = ValidateOptions(**options)
    load_target(device)  # a bad target fails before anything loads
    with progress_bar(f"validating on {device}") as step:
        result = run_validate(artifact, device, replace(opts, on_step=step))
    folder = Path(opts.out_dir) if opts.out_dir else Path(result.artifact).parent
    show.validation(result, str(folder / "report.html"))


@main.command()
@click.option("--retrain", is_flag=True, help="train again even if cached weights exist")
@compute_option
@click.option("-o", "--output", default="edgempq-demo", show_default=True, type=PATH,
              help="where the profile, sensitivity, policy, artifact and report go")
def demo(retrain: bool, output: str) -> None:
    """The whole pipeline offline on the built-in default: MNIST ResNet-8 trained (or cached),
    profiled on this machine, CSMPQ sensitivity, searched under a budget derived from the
    profile, deployed, validated, reported."""
    check_output(output, folder=True)
    from .demo import demo as run_demo

    with progress_bar("demo") as step:
        summary = run_demo(output, retrain, step)
    show.demo(summary)
