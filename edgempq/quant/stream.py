"""Walk a model layer by layer (or block by block) over the calibration data, so that a PTQ
algorithm can quantize each unit from the inputs it really sees: those of the already quantized
earlier layers (`sequential`), or the float model's (`sequential=False`, each layer alone).

On the torch.fx graph every node runs once per batch, for the float model and the quantized one
side by side, and a value is dropped once its last reader ran: the whole walk costs one forward
pass of each model. A model fx cannot trace is walked with hooks instead, one forward pass per
layer up to that layer (no blocks there)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from torch.fx import GraphModule, Node

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
MAX_BLOCK_LAYERS = 4  # a module with more quantized layers is split into its children


@dataclass
class Unit:
    """One layer or block to quantize, with what it sees over the calibration batches."""

    layers: list[str]  # its quantized layers, in execution order
    inputs: list[tuple[Tensor, ...]]  # per batch, its inputs in the quantized model
    float_inputs: list[tuple[Tensor, ...]] | None  # per batch, in the float model (when asked)
    float_outputs: list[tuple[Tensor, ...]] | None  # per batch, the float model's outputs of it
    run: Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]]  # the quantized unit, with gradients


@dataclass
class _Plan:
    layers: list[str]
    nodes: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


@dataclass(frozen=True)
class Walk:
    """What to walk and what to keep: `layers` (names, any order), `granularity` (layer or
    block), whether the float model's values are needed, and whether inputs come from the
    quantized earlier layers."""

    layers: tuple[str, ...]
    granularity: str = "layer"
    need_float: bool = False
    sequential: bool = True


def walk(fmodel: nn.Module, qmodel: nn.Module, xs: list[Tensor], spec: Walk,
         notes: list[str] | None = None) -> Iterator[Unit]:
    """Yield each unit in execution order; the caller quantizes it before asking for the next,
    and the walk then runs the quantized unit to feed the layers after it. `fmodel` is the
    float model with BatchNorm folded as in `qmodel` (same module paths)."""
    try:
        gm = torch.fx.symbolic_trace(fmodel)
    except Exception as e:  # noqa: BLE001 - any tracing failure: fall back to hooks
        (notes if notes is not None else []).append(
            f"torch.fx cannot trace the model ({type(e).__name__}); walked layer by layer with hooks")
        yield from _walk_hooks(fmodel, qmodel, xs, spec, notes)
        return
    try:
        plans = _plans(gm, fmodel, spec, notes)
    except _NotInGraph as e:
        (notes if notes is not None else []).append(f"{e}; walked layer by layer with hooks")
        yield from _walk_hooks(fmodel, qmodel, xs, spec, notes)
        return
    yield from _walk_graph(gm, fmodel, qmodel, xs, plans, spec)


class _NotInGraph(Exception):
    """A layer the traced graph does not call as a module."""


# ---- plans: which graph nodes make each unit -------------------------------------------------


def block_paths(model: nn.Module, layers: set[str]) -> list[str]:
    """The module paths that make blocks (BRECQ's granularity): the deepest modules with their
    own forward (not containers) that hold quantized layers and no such module inside, with
    at most MAX_BLOCK_LAYERS layers: a ResNet's BasicBlock, a MobileNetV2 inverted residual."""
    out: list[str] = []

    def inside(path: str) -> list[str]:
        return [n for n in layers if not path or n == path or n.startswith(path + ".")]

    def visit(path: str, module: nn.Module) -> None:
        held = inside(path)
        if not held or path in layers:
            return
        kids = [(f"{path}.{n}" if path else n, c) for n, c in module.named_children()]
        nested = any(not isinstance(c, CONTAINERS) and p not in layers and inside(p) for p, c in kids)
        if path and not isinstance(module, CONTAINERS) and not nested and len(held) <= MAX_BLOCK_LAYERS:
            out.append(path)
            return
        for p, c in kids:
            visit(p, c)

    visit("", model)
    return out


def _plans(gm: GraphModule, model: nn.Module, spec: Walk, notes: list[str] | None) -> list[_Plan]:
    nodes = list(gm.graph.nodes)
    wanted = set(spec.layers)
    calls = {n.target: n for n in nodes if n.op == "call_module" and n.target in wanted}
    missing = wanted - set(calls)
    if missing:
        raise _NotInGraph(f"torch.fx's graph does not call {', '.join(sorted(missing))} as a module")
    plans: list[_Plan] = []
    taken: set = set()
    if spec.granularity == "block":
        for path in block_paths(model, wanted):
            members = [n for n in nodes if path in n.meta.get("nn_module_stack", {})]
            idx = [nodes.index(n) for n in members]
            if members and idx == list(range(idx[0], idx[0] + len(idx))):
                plans.append(_Plan([n.target for n in members if n.target in calls and calls[n.target] is n],
                                   members))
                taken.update(members)
            elif notes is not None:
                notes.append(f"block {path} is not one contiguous piece of the graph; its layers are reconstructed "
                             "one by one")
    plans += [_Plan([t], [n]) for t, n in calls.items() if n not in taken]
    for p in plans:
        inner = set(p.nodes)
        p.inputs = list(dict.fromkeys(a for n in p.nodes for a in n.all_input_nodes if a not in inner))
        p.outputs = [n for n in p.nodes if any(u not in inner for u in n.users)]
    return sorted((p for p in plans if p.layers), key=lambda p: nodes.index(p.nodes[0]))


# ---- the graph walk -------------------------------------------------------------------------


def _attr(model: nn.Module, target: str) -> Any:
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def exec_node(node: Node, env: dict, module: Callable[[str], nn.Module], root: nn.Module, x: Tensor | None) -> Any:
    """One torch.fx node's value: its inputs from `env`, modules from `module(target)`,
    attributes from `root`, the (single) placeholder from `x`; the output node's is the
    model's output."""
    from torch.fx.node import map_arg

    if node.op == "placeholder":
        return x
    if node.op == "get_attr":
        return _attr(root, node.target)
    args = map_arg(node.args, lambda n: env[n])
    kwargs = map_arg(node.kwargs, lambda n: env[n])
    if node.op == "call_module":
        return module(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return args[0]  # output


def _exec(node: Node, env: dict, model: nn.Module, x: Tensor | None) -> Any:
    return exec_node(node, env, model.get_submodule, model, x)


def _run_plan(plan: _Plan, model: nn.Module, inputs: tuple) -> tuple:
    env = dict(zip(plan.inputs, inputs, strict=True))
    for node in plan.nodes:
        env[node] = _exec(node, env, model, None)
    return tuple(env[n] for n in plan.outputs)


class _Env:
    """Every live node's value, one per batch, for one model."""

    def __init__(self, model: nn.Module, xs: list[Tensor]) -> None:
        self.model, self.xs, self.values = model, xs, {}

    @torch.no_grad()
    def step(self, node: Node) -> None:
        self.values[node] = [_exec(node, {a: self.values[a][b] for a in node.all_input_nodes}, self.model, x)
                             for b, x in enumerate(self.xs)]

    def gather(self, nodes: list) -> list[tuple]:
        return [tuple(self.values[n][b] for n in nodes) for b in range(len(self.xs))]

    def run(self, plan: _Plan) -> None:
        for node in plan.nodes:
            self.step(node)

    def drop(self, nodes: list[Node]) -> None:
        for n in nodes:
            self.values.pop(n, None)


def _walk_graph(gm: GraphModule, fmodel: nn.Module, qmodel: nn.Module, xs: list[Tensor], plans: list[_Plan],
                spec: Walk) -> Iterator[Unit]:
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    last = {n: max((pos[u] for u in n.users), default=pos[n]) for n in nodes}
    starts = {p.nodes[0]: p for p in plans}
    envs = {}
    if spec.need_float or not spec.sequential:
        envs["f"] = _Env(fmodel, xs)
    if spec.sequential:
        envs["q"] = _Env(qmodel, xs)
    # No torch.no_grad() around the loop: a generator suspended inside it would leave gradients
    # off for the caller (who may train a block); each environment step turns them off itself.
    i, left = 0, len(plans)
    while i < len(nodes) and left:
        plan = starts.get(nodes[i])
        if plan is None:
            for env in envs.values():
                env.step(nodes[i])
            done = i
        else:
            yield _unit(plan, envs, qmodel)  # runs the float unit; the caller quantizes the unit
            if "q" in envs:
                envs["q"].run(plan)
            done, left = pos[plan.nodes[-1]], left - 1
        dead = [n for n in nodes[:done + 1] if last[n] <= done]
        for env in envs.values():
            env.drop(dead)
        i = done + 1


def _unit(plan: _Plan, envs: dict, qmodel: nn.Module) -> Unit:
    f = envs.get("f")
    f_in = f.gather(plan.inputs) if f else None
    f_out = None
    if f is not None:
        f.run(plan)
        f_out = f.gather(plan.outputs)
    q_in = envs["q"].gather(plan.inputs) if "q" in envs else f_in

    def run(inputs: tuple) -> tuple:
        return _run_plan(plan, qmodel, inputs)

    return Unit(list(plan.layers), q_in, f_in, f_out, run)


def _storages(v: object, out: dict[int, int]) -> dict[int, int]:
    """Storage address -> bytes of every tensor in `v` (an alias, a view, counts once)."""
    if isinstance(v, Tensor):
        st = v.untyped_storage()
        out[st.data_ptr()] = st.nbytes()
    elif isinstance(v, tuple | list):
        for a in v:
            _storages(a, out)
    return out


def _bytes(*values: object) -> int:
    out: dict[int, int] = {}
    for v in values:
        _storages(v, out)
    return sum(out.values())


@torch.no_grad()
def sample_bytes(fmodel: nn.Module, x1: Tensor, spec: Walk) -> int:
    """The most memory one calibration sample takes at any point of the walk, over every model
    it keeps values of (from a run on the sample `x1`, a batch of one)."""
    envs = int(spec.need_float or not spec.sequential) + int(spec.sequential)
    try:
        gm = torch.fx.symbolic_trace(fmodel)
    except Exception:  # noqa: BLE001 - the hook walk keeps one layer's inputs and outputs
        sizes = []
        mods = [fmodel.get_submodule(n) for n in spec.layers]
        hs = [m.register_forward_hook(lambda m, a, o: sizes.append(_bytes(a) + _bytes(o))) for m in mods]
        try:
            fmodel(x1)
        finally:
            for h in hs:
                h.remove()
        return envs * max(sizes, default=0)
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    last = {n: max((pos[u] for u in n.users), default=pos[n]) for n in nodes}
    env, peak = {}, 0
    for i, node in enumerate(nodes):
        env[node] = _exec(node, env, fmodel, x1)
        peak = max(peak, _bytes(*env.values()))
        for n in [n for n in env if last[n] <= i]:
            del env[n]
    return envs * peak


# ---- the hook walk (models torch.fx cannot trace) -------------------------------------------


class _Stop(Exception):
    """Ends a forward pass once the layer of interest has run."""


def execution_order(model: nn.Module, x: Tensor, names: set[str]) -> list[str]:
    """`names` in the order one forward pass calls them."""
    order: list[str] = []
    mods = {m: n for n, m in model.named_modules() if n in names}
    handles = [m.register_forward_pre_hook(lambda m, a: order.append(mods[m])) for m in mods]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return list(dict.fromkeys(order))


@torch.no_grad()
def _capture(model: nn.Module, name: str, xs: list[Tensor], output: bool) -> tuple[list, list]:
    """The layer's input (and output) for every batch, stopping each pass at the layer."""
    from ..errors import ConfigError

    ins, outs = [], []

    def hook(m: nn.Module, args: tuple, out: Tensor | None = None) -> None:
        ins.append(tuple(a.detach() for a in args))
        if output:
            outs.append((out.detach(),))
        raise _Stop

    mod = model.get_submodule(name)
    h = mod.register_forward_hook(hook) if output else mod.register_forward_pre_hook(hook)
    try:
        for x in xs:
            with contextlib.suppress(_Stop):
                model(x)
    finally:
        h.remove()
    if len(ins) != len(xs):
        raise ConfigError(f"layer {name} ran on {len(ins)} of the {len(xs)} calibration batches (the model skips it "
                          "for some inputs), so it cannot be quantized from its inputs; use --ptq minmax")
    return ins, outs


def _walk_hooks(fmodel: nn.Module, qmodel: nn.Module, xs: list[Tensor], spec: Walk,
                notes: list[str] | None) -> Iterator[Unit]:
    order = execution_order(fmodel, xs[0], set(spec.layers))
    missing = [n for n in spec.layers if n not in order]
    if missing and notes is not None:
        notes.append(f"layers {', '.join(missing)} did not run on the first calibration batch: they keep "
                     "round-to-nearest weights")
    for name in order:
        f_in, f_out = _capture(fmodel, name, xs, output=True) if spec.need_float or not spec.sequential \
            else (None, None)
        q_in = _capture(qmodel, name, xs, output=False)[0] if spec.sequential else f_in
        module = qmodel.get_submodule(name)
        yield Unit([name], q_in, f_in, f_out, lambda inputs, m=module: (m(*inputs),))
