"""The built-in default end to end: the cached (or freshly trained) MNIST ResNet-8, profiled on
this machine, CSMPQ sensitivity, an exact search under 65 % of the int8 size and the tightest of
110 %, 125 %, ... of the int8 latency that the size budget leaves feasible (else 110 % of the
least latency that size allows, as where int4 kernels are slow; and a size sweep
for the front), deploy, validate on the device, report. Every stage's file goes into one
folder; `demo` returns a `DemoSummary`, nothing prints."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InfeasibleError
from .progress import Progress
from .schema import Budget, CostTable, Layer, Policy, Sensitivity, Target
from .schema.results import DeployResult, ValidationReport

DEMO_MODEL = "zoo:mnist_resnet8"
DEMO_DATA = "mnist"
DEMO_TARGET = "host"
DEMO_METHOD = "csmpq"
DEMO_SIZE_SHARE = 0.65  # of the all-int8 model's weight bytes
# of the all-int8 model's measured latency: the tightest that can be met with the size budget
# (on a CPU where int4 kernels are slower than int8, a smaller model costs time)
DEMO_LATENCY_SHARES = (1.1, 1.25, 1.5, 2.0, 3.0)
SWEEP_POINTS = 12
SWEEP_FROM = 0.45  # of the int8 size: where the demo's size sweep starts


@dataclass(frozen=True)
class DemoSummary:
    """What the demo did: the chosen policy against float and int8, the artifact as deployed and
    as validated, where its files are, and how long each stage took."""

    target: str
    method: str
    train: dict[str, Any]  # the cached model's record: test_top1, train_seconds, cached, weights
    budget: Budget
    policy: Policy
    float_result: Any  # simulation.SimResult
    int8_result: Any
    int8_latency_ms: float
    f32_latency_ms: float | None
    deploy: DeployResult
    validation: ValidationReport
    folder: Path
    seconds: dict[str, float] = field(default_factory=dict)
    model: str = DEMO_MODEL
    data: str = DEMO_DATA

    @property
    def report(self) -> Path:
        """The artifact's HTML report."""
        return self.folder / "artifact" / "report.html"


class _Clock:
    """Seconds per stage, and each stage's progress labelled with its name."""

    def __init__(self, on_step: Progress | None) -> None:
        self.seconds: dict[str, float] = {}
        self.step = on_step or (lambda *a: None)

    def progress(self, name: str) -> Progress:
        """`on_step` with the stage's name before each message."""
        return lambda i, n, info: self.step(i, n, f"{name}: {info}" if isinstance(info, str) else info)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage `name`."""
        t = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - t


def demo(out_dir: str | Path = "edgempq-demo", retrain: bool = False, on_step: Progress | None = None) -> DemoSummary:
    """Run the built-in default end to end into `out_dir` (see the module's description)."""
    from .layers import trace
    from .pipeline import DEMO_TRAIN, ValidateOptions, cached_model, deploy, validate
    from .simulation import float_result, simulate
    from .targets import load_target

    out, clock = Path(out_dir), _Clock(on_step)
    out.mkdir(parents=True, exist_ok=True)
    with clock.stage("train"):
        model, ds, meta = cached_model(DEMO_MODEL, DEMO_DATA, DEMO_TRAIN, retrain, clock.progress("training"))
    layers, target = trace(model.module, model.input_shape), load_target(DEMO_TARGET)
    with clock.stage("profile"):
        table = _profile(model, layers, target, clock.progress("profiling"), out)
    with clock.stage("sensitivity"):
        sens = _sensitivity(model, ds, layers, clock.progress("sensitivity"), out)
    with clock.stage("search"):
        budget, policy, front = _search(layers, sens, table, target, out, clock.step)
    with clock.stage("baselines"):
        rows = float_result(model, ds), simulate(model, ds, Policy.uniform(layers, "w8a8"))[1]
    with clock.stage("deploy"):
        from .export.stage import DeployConfig

        cfg = DeployConfig(on_step=clock.progress("deploy"), profile=table, sweep=front, weights=meta["weights"],
                           data_spec=DEMO_DATA)
        dep = deploy(model, ds, policy, DEMO_TARGET, out / "artifact", cfg)
    with clock.stage("validate"):
        val = validate(out / "artifact", DEMO_TARGET, ValidateOptions(on_step=clock.progress("validate")))
    return DemoSummary(target.name, sens.method, meta, budget, policy, rows[0], rows[1], table.whole_ms["w8a8"],
                       table.whole_ms.get("f32"), dep, val, out, clock.seconds)


def _profile(model: Any, layers: list[Layer], target: Target, step: Progress, out: Path) -> CostTable:
    """This machine's profile of the model, whole-model timings included, saved as profile.json."""
    from dataclasses import replace

    from .profile import WholeModel, profile

    table = profile(layers, target, model.model_hash, on_step=step, whole=WholeModel(model.module, model.input_shape))
    table = replace(table, arch_hash=model.arch_hash)
    table.save(out / "profile.json")
    return table


def _sensitivity(model: Any, ds: Any, layers: list[Layer], step: Progress, out: Path) -> Sensitivity:
    """The demo method's scores for the precisions the target runs, saved as sensitivity.json."""
    from .pipeline import layer_precisions, sensitivity

    sens = sensitivity(model, ds, DEMO_METHOD, layer_precisions(layers, device=DEMO_TARGET), None, step)
    sens.save(out / "sensitivity.json")
    return sens


def _search(layers: list[Layer], sens: Sensitivity, table: CostTable, target: Target, out: Path,
            step: Progress) -> tuple[Budget, Policy, dict[str, Any]]:
    """The policy under the size budget and the tightest feasible latency share, and a size
    sweep at that latency; saved as policy.json and sweep.json."""
    from .files import write_json
    from .layers import policy_weight_bytes
    from .program import least_under
    from .solve import build_problem, solve
    from .sweep import Sweep, sweep

    int8_bytes = policy_weight_bytes(layers, Policy.uniform(layers, "w8a8"))
    step(0, 1, "search")
    size_kb = DEMO_SIZE_SHARE * int8_bytes / 1024
    for share in DEMO_LATENCY_SHARES:
        budget = Budget(latency_ms=share * table.whole_ms["w8a8"], size_kb=size_kb)
        try:
            policy = solve(layers, sens, table, budget, target)
            break
        except InfeasibleError:
            continue
    else:  # the size budget needs layers slower than every share allows (slow int4 kernels here)
        least = least_under(build_problem(layers, sens, table, target), Budget(size_kb=size_kb), "latency_ms")
        if least is None:
            raise InfeasibleError(f"no policy of the demo's model fits {size_kb:.1f} KB on {target.name}")
        budget = Budget(latency_ms=DEMO_LATENCY_SHARES[0] * least, size_kb=size_kb)
        policy = solve(layers, sens, table, budget, target)
    policy.save(out / "policy.json")
    spec = f"size_kb={SWEEP_FROM * int8_bytes / 1024:.3f}:{int8_bytes / 1024:.3f}:{SWEEP_POINTS}"
    budgets = Sweep.parse(spec, Budget(latency_ms=budget.latency_ms))
    front = {"sweep": "size_kb", "method": sens.method, "target": target.name,
             "held": {"latency_ms": budget.latency_ms}, "points": sweep(layers, sens, table, budgets, target)}
    write_json(out / "sweep.json", front)
    return budget, policy, front
