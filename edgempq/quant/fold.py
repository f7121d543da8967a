"""Fold each BatchNorm into the convolution (or Linear) that feeds it, as the TFLite export
will, so that per-channel weight scales are computed on the same folded weights the artifact
stores."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

log = logging.getLogger(__name__)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _pairs_up(conv: nn.Module | None, bn: nn.Module | None) -> bool:
    """A Conv1d or Linear feeding a BatchNorm1d, or a (transposed) Conv2d a BatchNorm2d (with
    running statistics)."""
    if getattr(bn, "running_mean", None) is None or isinstance(conv, nn.ConvTranspose2d) and conv.groups != 1:
        return False  # a grouped transposed conv's weight holds out / groups channels in its dim 1
    return isinstance(conv, nn.Conv1d | nn.Linear) and isinstance(bn, nn.BatchNorm1d) or \
        isinstance(conv, nn.Conv2d | nn.ConvTranspose2d) and isinstance(bn, nn.BatchNorm2d)


def conv_bn_pairs(model: nn.Module, example: torch.Tensor | None = None) -> list[tuple[str, str]]:
    """(conv name, bn name) for every BatchNorm whose only input is a conv used only by it.

    Found on the torch.fx graph; for a model fx cannot trace, from one forward pass on
    `example` (see `_pairs_by_hooks`); without an example such a model gets no folding (logged)."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:  # noqa: BLE001 - any tracing failure: fall back to a forward pass
        if example is not None:
            return _pairs_by_hooks(model, example)
        log.warning("BatchNorm not folded: torch.fx cannot trace the model (%s)", e)
        return []
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _NORMS):
            continue
        src = node.args[0] if node.args else None
        if (
            isinstance(src, torch.fx.Node) and src.op == "call_module"
            and _pairs_up(modules.get(src.target), modules.get(node.target))
            and len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1
        ):
            pairs.append((src.target, node.target))
    return pairs


@torch.no_grad()
def _pairs_by_hooks(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """Conv -> BatchNorm pairs seen in one forward pass (the BatchNorm's input is the conv's
    output tensor itself, each called once), kept only if folding them all leaves the model's
    output unchanged: a conv output that is also read elsewhere would not."""
    import copy

    names = {m: n for n, m in model.named_modules()}
    outs: dict[int, tuple[str, torch.Tensor]] = {}
    calls: dict[str, int] = {}
    found: list[tuple[str, str]] = []

    def conv_hook(m: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        calls[names[m]] = calls.get(names[m], 0) + 1
        outs[id(out)] = (names[m], out)

    def bn_hook(m: nn.Module, args: tuple) -> None:
        calls[names[m]] = calls.get(names[m], 0) + 1
        src = outs.get(id(args[0]))
        if src is not None and src[1] is args[0]:
            found.append((src[0], names[m]))

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, _CONVS)]
    hooks += [m.register_forward_pre_hook(bn_hook) for m in model.modules() if isinstance(m, _NORMS)]
    try:
        ref = model(example)
    finally:
        for h in hooks:
            h.remove()
    pairs = [(c, b) for c, b in found if calls[c] == 1 and calls[b] == 1]
    trial = copy.deepcopy(model)
    _fold(trial, pairs)
    out = trial(example)
    if isinstance(ref, torch.Tensor) and torch.allclose(out, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max())):
        return pairs
    log.warning("BatchNorm not folded: torch.fx cannot trace the model and folding changed its output")
    return []


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None) -> list[tuple[str, str]]:
    """Fold in place (call on a copy, in eval mode): conv gets the folded weight and a bias,
    the BatchNorm becomes nn.Identity under its own name. Returns the folded pairs. `example`
    (a batch the model takes) lets a model torch.fx cannot trace be folded too."""
    pairs = _checked_linear_pairs(model, conv_bn_pairs(model, example), example)
    _fold(model, pairs)
    return pairs


def _checked_linear_pairs(model: nn.Module, pairs: list[tuple[str, str]],
                          example: torch.Tensor | None) -> list[tuple[str, str]]:
    """`pairs`, with the Linear -> BatchNorm1d ones kept only if folding leaves the model's
    output on `example` unchanged (a BatchNorm1d normalises dim 1, which is a Linear's output
    features only for 2-D activations); without an example they are not folded."""
    import copy

    modules = dict(model.named_modules())
    linear = [p for p in pairs if isinstance(modules[p[0]], nn.Linear)]
    if not linear:
        return pairs
    convs = [p for p in pairs if p not in linear]
    if example is None:
        return convs
    trial = copy.deepcopy(model)
    _fold(trial, linear)
    ref, out = model(example), trial(example)
    same = isinstance(ref, torch.Tensor) and torch.allclose(out, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    return pairs if same else convs


def _fold(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    modules = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        stats = (bn.running_mean, bn.running_var, bn.eps, gamma, beta)
        if isinstance(conv, nn.Linear):
            w, b = fuse_linear_bn_weights(conv.weight, conv.bias, *stats)
        else:  # a transposed conv's output channels are its weight's dim 1
            w, b = fuse_conv_bn_weights(conv.weight, conv.bias, *stats, transpose=isinstance(conv, nn.ConvTranspose2d))
        conv.weight = nn.Parameter(w.detach().clone())
        conv.bias = nn.Parameter(b.detach().clone())
        set_module(model, bn_name, nn.Identity())


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` in place of the submodule called `name`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
