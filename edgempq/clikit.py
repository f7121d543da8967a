"""What the commands share: their error handling (one sentence, exit 1), the progress bar, and
the options several commands take, folded into typed values (`Source`, `QuantConfig`, `Budget`,
`TrainConfig`, `DeployConfig`) before a command sees them. Nothing here imports torch at load."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .errors import EdgeMPQError
from .stop import Terminated

if TYPE_CHECKING:
    from .export.stage import DeployConfig
    from .quant import QuantConfig

MODEL_HELP = ("zoo:NAME[?key=value&...], path/to/file.py:factory or package.module:factory "
              "(a file or module is executed to build the model)")
MIN_AGREEMENT_DEFAULT = 0.99  # edgempq.validate.MIN_AGREEMENT, without importing numpy for --help
# Paths are checked by the code that opens them, which says what is wrong in one sentence (click's
# own check would be a usage error with status 2).
PATH = click.Path(readable=False)
DATA_HELP = "a built-in set (mnist, digits), an image folder, a .npz with x and y, or a .toml manifest"
PTQ_DEFAULT = "gptq"  # edgempq.quant.DEFAULT_WEIGHTS, without importing torch for --help


def quant_config(ptq: str, ptq_params: tuple[str, ...], bias_correction: bool, act_range: str) -> QuantConfig:
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


class Group(click.Group):
    """Turns our errors into one line on stderr and exit status 1, never a traceback."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        """Parse the group's own options; a bad one is one sentence and exit 1."""
        try:  # the group's own options (`edgempq --bogus`)
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:
            _usage_error(e)
            raise  # pragma: no cover - _usage_error exits

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command: our errors and bad options print one line and exit 1, interrupts 130/143."""
        from . import stop

        try:
            from .distributed import Standby, finish

            _join_torchrun(ctx.args)
            try:
                result = super().invoke(ctx)
            except Standby:
                result = None
            finish()
            return result
        except KeyboardInterrupt as e:
            _interrupted(isinstance(e, Terminated))
        except Exception as e:
            # a library that swallowed the KeyboardInterrupt (a converter, TensorFlow) fails instead:
            # the failure is the interrupt's doing, so it is reported as the interrupt
            if stop.requested() is not None:
                _interrupted(stop.requested() == signal.SIGTERM)
            if isinstance(e, EdgeMPQError):
                click.echo(f"{_rank_prefix()}error: {e}", err=True)
                sys.exit(1)
            if isinstance(e, click.UsageError):  # a bad option or value: one sentence, not click's usage block
                _usage_error(e)
            raise

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Run the CLI with SIGTERM and SIGINT unwinding like Ctrl-C, so temporary folders are removed."""
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


def _interrupted(terminated: bool) -> NoReturn:
    """Exit 130 (Ctrl-C) or 143 (SIGTERM) after saying that nothing was left half-written."""
    # every output is written atomically, so an interrupted command leaves none behind;
    # a profile keeps the measurements it finished in the cache and resumes from them
    click.echo("interrupted; no file was left half-written (a profile keeps its finished "
               "measurements in the cache and resumes from them)", err=True)
    sys.exit(143 if terminated else 130)


def _join_torchrun(args: list[str]) -> None:
    """Under torchrun, join the command's process group (on the device the command's --compute
    names, read from its arguments here: the group is joined before they are parsed); every
    rank but 0 prints nothing on stdout (its errors still reach stderr, named by rank) and
    writes no file (`files`)."""
    import os

    from .distributed import is_main, start, world

    if world().size > 1:
        for i, arg in enumerate(args):
            if arg.startswith("--compute="):
                os.environ["EDGEMPQ_DEVICE"] = arg.split("=", 1)[1]
            elif arg == "--compute" and i + 1 < len(args):
                os.environ["EDGEMPQ_DEVICE"] = args[i + 1]
        start()
        if not is_main():
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of this process


def _rank_prefix() -> str:
    from .distributed import world

    return f"rank {world().rank}: " if world().size > 1 else ""


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int, float | str], None]]:
    """A rich progress bar with ETA driven by (done, total, info) callbacks; a float info is a
    training loss."""
    with progress_bars([label]) as steps:
        yield steps[0]


@contextmanager
def progress_bars(labels: list[str]) -> Iterator[list[Callable[[int, int, float | str], None]]]:
    """One progress bar per label (the devices of a farm), each driven by its own callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .distributed import is_main

    if not is_main():  # under torchrun rank 0 shows the progress of its share
        yield [lambda i, total, info: None for _ in labels]
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=True) as bar:

        def stepper(task: Any) -> Callable[[int, int, float | str], None]:
            def step(i: int, total: int, info: float | str) -> None:
                text = f"loss {info:.3f}" if isinstance(info, float) else info
                bar.update(task, completed=i, total=total, info=text)
            return step

        yield [stepper(bar.add_task(label, total=None, info="")) for label in labels]


@dataclass(frozen=True)
class Source:
    """The model a command works on, its weights and its data, as the user named them."""

    model: str
    weights: str | None = None
    data: str | None = None
    task: str | None = None  # None: the one the model's outputs and the data's targets fit


TASK_HELP = ("what the model is for: classify (a label a sample), dense (a label a pixel), regress (float "
             "targets of the output's shape) or reconstruct (the input is the target); default: the one the "
             "outputs and the data's targets fit")


def _fold(options: list[Callable], fold: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable:
    """A decorator adding `options` to a command and replacing their values with what `fold`
    makes of them (it pops the options' names from the keyword arguments and adds its own)."""

    def wrap(f: Callable) -> Callable:
        @functools.wraps(f)
        def inner(*args: Any, **kwargs: Any) -> Any:
            return f(*args, **fold(kwargs))

        for opt in reversed(options):
            inner = opt(inner)
        return inner

    return wrap


def source_options(weights: str | None = "a state_dict saved with torch.save (the trained model)",
                   data: str | None = DATA_HELP + " (default: the zoo model's)") -> Callable:
    """--model, and --weights / --data unless their help is None, folded into `source: Source`."""
    options = [click.option("--model", "model_spec", required=True, help=MODEL_HELP)]
    if weights:
        options.append(click.option("--weights", type=PATH, help=weights))
    if data:
        options.append(click.option("--data", "data_spec", help=data))
        options.append(click.option("--task", type=click.Choice(["classify", "dense", "regress", "reconstruct"]),
                                    help=TASK_HELP))

    def fold(kw: dict[str, Any]) -> dict[str, Any]:
        source = Source(kw.pop("model_spec"), kw.pop("weights", None), kw.pop("data_spec", None), kw.pop("task", None))
        return {**kw, "source": source}

    return _fold(options, fold)


_PTQ_OPTIONS = [
    click.option("--ptq", "ptq", default=PTQ_DEFAULT, show_default=True,
                 help="the weight algorithm: minmax, mse, gptq or adaround"),
    click.option("--ptq-param", "ptq_params", multiple=True, help="a parameter of the algorithm as key=value "
                 "(repeatable), e.g. iters=500 or granularity=block for adaround"),
    click.option("--bias-correction/--no-bias-correction", default=True, show_default=True,
                 help="correct each layer's bias for the mean shift quantization causes (empirical, per "
                 "output channel)"),
    click.option("--act-range", default="minmax", show_default=True,
                 type=click.Choice(["minmax", "percentile", "mse"]), help="how activation ranges are calibrated"),
    click.option("--qat-epochs", default=0, show_default=True, type=click.IntRange(0),
                 help="epochs of quantization-aware training after PTQ (0: PTQ alone)"),
]


def _pop_quant(kw: dict[str, Any]) -> QuantConfig:
    return quant_config(kw.pop("ptq"), kw.pop("ptq_params"), kw.pop("bias_correction"), kw.pop("act_range"))


def quant_options(f: Callable) -> Callable:
    """--ptq, --ptq-param, --bias-correction, --act-range and --qat-epochs, folded into
    `quant: QuantConfig` and `qat_epochs: int` (a bad algorithm or parameter fails first)."""
    def fold(kw: dict[str, Any]) -> dict[str, Any]:
        quant = _pop_quant(kw)
        return {**kw, "quant": quant}

    return _fold(_PTQ_OPTIONS, fold)(f)


def deploy_options(f: Callable) -> Callable:
    """The quantization options with --profile and --sweep, folded into `cfg: DeployConfig` (the
    files read and checked before the model loads). Goes under `source_options`, whose weights
    and data the config records."""
    options = [*_PTQ_OPTIONS,
               click.option("--profile", "profile_path", type=PATH, help="the model's profile.json on this target: "
                            "records the predicted latency per layer for validate and the report"),
               click.option("--sweep", "sweep_path", type=PATH, help="search --sweep's JSON: the report shows the "
                            "front")]

    def fold(kw: dict[str, Any]) -> dict[str, Any]:
        from .export.stage import DeployConfig
        from .files import read_json
        from .report import check_sweep
        from .schema import CostTable

        quant = _pop_quant(kw)
        profile, sweep = kw.pop("profile_path"), kw.pop("sweep_path")
        table = CostTable.load(profile) if profile else None
        front = read_json(sweep, "sweep") if sweep else None
        if front is not None:
            check_sweep(front, sweep)
        src = kw["source"]
        cfg: DeployConfig = DeployConfig(quant, kw.pop("qat_epochs"), table, front, src.weights, src.data)
        return {**kw, "cfg": cfg}

    return _fold(options, fold)(f)


def budget_options(f: Callable) -> Callable:
    """--latency-ms, --size-kb, --bops and --ram-kb, folded into `budget: Budget`."""
    options = [
        click.option("--latency-ms", type=float, help="end-to-end latency budget on the profiled device"),
        click.option("--size-kb", type=float, help="weight storage budget (as the artifact stores it)"),
        click.option("--bops", type=float, help="bit-operations budget (MACs x weight bits x activation bits)"),
        click.option("--ram-kb", type=float, help="RAM budget: TFLite Micro's arena on microcontroller targets, "
                     "else the largest layer's working set (default: the profiled target's ram_kb)"),
        click.option("--flash-kb", type=float, help="flash budget: the whole .tflite, graph and quantization "
                     "included (default: the profiled target's flash_kb)"),
    ]

    def fold(kw: dict[str, Any]) -> dict[str, Any]:
        from .schema import Budget

        budget = Budget(**{k: kw.pop(k) for k in ("latency_ms", "size_kb", "bops", "ram_kb", "flash_kb")})
        return {**kw, "budget": budget}

    return _fold(options, fold)(f)


def compute_option(f: Callable) -> Callable:
    """--compute: where the heavy stage computes (edgempq.compute), set as EDGEMPQ_DEVICE for the
    process (under torchrun every rank reads it from its own arguments before it joins the group,
    `_join_torchrun`); a bad value or a missing GPU fails before the model loads."""
    option = click.option("--compute", metavar="cpu|cuda|cuda:N", help="where training and the sensitivity "
                          "search compute (default: the GPU when there is one, else the CPU; also EDGEMPQ_DEVICE)")

    def fold(kw: dict[str, Any]) -> dict[str, Any]:
        import os

        from .distributed import device

        chosen = kw.pop("compute")
        if chosen is not None:
            os.environ["EDGEMPQ_DEVICE"] = chosen
        device()
        return kw

    return _fold([option], fold)(f)


def train_options(f: Callable) -> Callable:
    """--epochs, --batch-size, --lr and --seed, folded into `cfg: TrainConfig`."""
    options = [
        click.option("--epochs", default=12, show_default=True, type=click.IntRange(1)),
        click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1)),
        click.option("--lr", default=0.1, show_default=True, type=click.FloatRange(min=0, min_open=True)),
        click.option("--seed", default=0, show_default=True),
    ]

    def fold(kw: dict[str, Any]) -> dict[str, Any]:
        from .train import TrainConfig

        cfg = TrainConfig(**{k: kw.pop(k) for k in ("epochs", "batch_size", "lr", "seed")})
        return {**kw, "cfg": cfg}

    return _fold(options, fold)(f)
