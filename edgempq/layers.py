"""Trace the layers a policy can choose precisions for, with their real shapes and costs (the
proxies computed from them, BOPs and weight bytes, are in the torch-free edgempq.costs)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .costs import F32, bops, policy_bops, policy_weight_bytes, weight_bytes
from .errors import ModelError
from .schema import Layer

__all__ = ["F32", "bops", "layer_edges", "layer_kind", "policy_bops", "policy_weight_bytes", "trace", "weight_bytes"]
_FIXED_TYPES = {
    nn.Conv1d: "Conv1d has no per-layer precision path in the TFLite export; kept float",
    nn.Conv3d: "Conv3d has no per-layer precision path in the TFLite export; kept float",
    nn.ConvTranspose1d: "transposed convolution is not quantized by the deployment path; kept float",
    nn.ConvTranspose2d: "transposed convolution is not quantized by the deployment path; kept float",
    nn.ConvTranspose3d: "transposed convolution is not quantized by the deployment path; kept float",
}


def _pair(v: int | tuple[int, ...] | str) -> tuple[int, ...]:
    if isinstance(v, str):  # padding="same" / "valid": the traced shapes carry its effect
        return (-1,)
    return tuple(v) if isinstance(v, tuple | list) else (int(v),)


def layer_kind(m: nn.Module) -> tuple[str, str | None]:
    """(kind, reason it stays float or None) of a Conv/Linear module: the one rule that both
    tracing and fake quantization follow."""
    for t, why in _FIXED_TYPES.items():
        if isinstance(m, t):
            return t.__name__.lower(), why
    if isinstance(m, nn.Linear):
        kind = "linear"
    elif not isinstance(m, nn.Conv2d):
        return type(m).__name__.lower(), "not a Conv2d or Linear layer"
    elif m.groups == 1:
        kind = "conv"
    elif m.groups == m.in_channels:
        kind = "dwconv"
    else:
        return "grouped_conv", f"grouped convolution (groups={m.groups}) has no quantized TFLite kernel; kept float"
    base = nn.Linear if kind == "linear" else nn.Conv2d
    # edgempq's own fake-quantized modules override forward but keep the layer's function.
    if type(m).forward is not base.forward and not getattr(m, "keeps_layer_function", False):
        return kind, f"{type(m).__name__} overrides forward(), so its weights cannot be fake-quantized; kept float"
    return kind, None


def _layer(name: str, m: nn.Module, x: Tensor, y: Tensor, calls: int) -> Layer:
    kind, reason = layer_kind(m)
    in_shape, out_shape = tuple(x.shape[1:]), tuple(y.shape[1:])
    bias = getattr(m, "bias", None) is not None
    params = sum(p.numel() for p in (m.weight, m.bias) if p is not None)
    if isinstance(m, nn.Linear):
        cin, cout, kernel, stride, pad, dil, groups = m.in_features, m.out_features, (1,), (1,), (0,), (1,), 1
        macs = math.prod(out_shape) * cin
    else:
        cin, cout, groups = m.in_channels, m.out_channels, m.groups
        kernel, stride, pad, dil = (_pair(v) for v in (m.kernel_size, m.stride, m.padding, m.dilation))
        per_out = (cin // groups) * math.prod(kernel)
        # A transposed conv scatters each input element through the whole kernel instead.
        macs = math.prod(in_shape) * (cout // groups) * math.prod(kernel) if "transpose" in kind \
            else math.prod(out_shape) * per_out
    if calls > 1 and reason is None:
        reason = f"the module is called {calls} times in one forward pass; kept float"
    shp = "x".join
    sig = (f"{kind} in{shp(map(str, in_shape))} out{shp(map(str, out_shape))} k{shp(map(str, kernel))} "
           f"s{shp(map(str, stride))} p{shp(map(str, pad))} d{shp(map(str, dil))} g{groups} b{int(bias)}")
    return Layer(name, kind, in_shape, out_shape, cin, cout, kernel, stride, pad, dil, groups,
                 bias, params, macs, sig, reason)


def trace(model: nn.Module, example: Tensor | tuple[int, ...]) -> list[Layer]:
    """Every Conv/Linear of `model` in execution order, from one real forward pass on the first
    sample of `example` (a batch, or a per-sample shape such as (3, 224, 224))."""
    if not isinstance(example, Tensor):
        example = torch.zeros((1, *example))
    x = example[:1].float()
    kinds = (nn.Linear, nn.Conv2d, *_FIXED_TYPES)
    seen: dict[str, list] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(mod: nn.Module, inp: tuple, out: Tensor) -> None:
        n = names[mod]
        if n in seen:
            seen[n][3] += 1
        elif isinstance(inp[0], Tensor) and isinstance(out, Tensor):
            seen[n] = [mod, inp[0].detach(), out.detach(), 1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except Exception as e:  # noqa: BLE001 - the user's model may raise anything
        raise ModelError(
            f"the model failed on an input of shape {tuple(x.shape)} ({type(e).__name__}: {e}); "
            "give the input shape the model expects"
        ) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    layers = [_layer(n, m, i, o, c) for n, (m, i, o, c) in seen.items()]
    if not any(la.searchable for la in layers):
        raise ModelError("the model has no Conv2d or Linear layer that can be quantized; nothing to search")
    return layers


def layer_edges(model: nn.Module, layers: list[Layer]) -> list[tuple[str, str, int]]:
    """(producer, consumer, elements) for every searchable layer whose input comes from another
    searchable layer's output, through ops that are not searched (BatchNorm, activations, pools,
    reshapes, and back to the nearest residual sum only); elements = the consumer's input size.
    Where the two layers run in different domains (float, 8-bit, 16-bit activations), the device
    converts that tensor.
    Found on the torch.fx graph; a model fx cannot trace gets its layers chained in order."""
    import torch.fx

    names = [la.name for la in layers if la.searchable]
    size = {la.name: math.prod(la.in_shape) for la in layers}
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure: fall back to execution order
        return [(a, b, size[b]) for a, b in zip(names, names[1:], strict=False)]
    wanted = set(names)
    fixed = {la.name for la in layers if not la.searchable}
    out = []
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in wanted:
            continue
        producers, stack, seen = [], [(n, False) for n in node.all_input_nodes], set()
        while stack:
            n, past_add = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.op == "call_module" and n.target in wanted:
                producers.append(n.target)
            elif n.op == "call_module" and n.target in fixed:
                continue  # a float layer in between: its own conversions are in the uniform scales
            elif not (past_add and is_add(n)):  # an earlier residual sum was converted for its own readers
                stack.extend((m, past_add or is_add(n)) for m in n.all_input_nodes)
        out += [(p, node.target, size[node.target]) for p in sorted(set(producers), key=names.index)]
    return out


def is_add(node: torch.fx.Node) -> bool:
    """Whether a torch.fx node adds tensors (`a + b`, `a += b`, `torch.add`, `a.add(b)`, `a.add_(b)`)."""
    import operator

    return (node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add)) or \
        (node.op == "call_method" and node.target in ("add", "add_"))
