"""Trace the layers a policy can choose precisions for, with their real shapes and costs (the
proxies computed from them, BOPs and weight bytes, are in the torch-free edgempq.costs)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from .costs import F32, bops, policy_bops, policy_weight_bytes, weight_bytes
from .errors import ModelError
from .schema import Layer

__all__ = ["CONV_TYPES", "F32", "LAYER_TYPES", "apply_weights", "bops", "cannot_convert", "layer_edges", "layer_kind",
           "policy_bops", "policy_weight_bytes", "trace", "weight_axis", "weight_bytes"]
_FIXED_TYPES = {
    nn.Conv3d: "Conv3d has no per-layer precision path in the TFLite export; kept float",
    nn.ConvTranspose1d: ("a ConvTranspose1d has no quantized path in the TFLite export (only the 2-D TRANSPOSE_CONV "
                         "is quantized); kept float"),
    nn.ConvTranspose3d: "ConvTranspose3d has no per-layer precision path in the TFLite export; kept float",
}
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)  # the convs a policy can choose precisions for
LAYER_TYPES = (*CONV_TYPES, nn.Linear)


def apply_weights(layer: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """What the Conv/Linear `layer` computes on `x` with `weight` and `bias` in place of its own
    (for fake-quantized and mixed-precision stand-ins)."""
    if isinstance(layer, nn.ConvTranspose2d):
        return nn.functional.conv_transpose2d(x, weight, bias, layer.stride, layer.padding, layer.output_padding,
                                              layer.groups, layer.dilation)
    if isinstance(layer, nn.Conv1d | nn.Conv2d):
        return layer._conv_forward(x, weight, bias)
    return nn.functional.linear(x, weight, bias)


def weight_axis(layer: nn.Module) -> int:
    """The output-channel dimension of a layer's weight: 1 for a transposed conv's (in, out, kh, kw)."""
    return 1 if isinstance(layer, nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d) else 0


def cannot_convert(m: nn.Module) -> str | None:
    """Why TFLite's converter refuses this module outright (a dilated transposed conv), or None."""
    if isinstance(m, nn.ConvTranspose2d) and tuple(m.dilation) != (1, 1):
        return _tconv_reason(m)
    return None


def _tconv_reason(m: nn.ConvTranspose2d) -> str | None:
    """Why a ConvTranspose2d cannot be a quantized TRANSPOSE_CONV, or None."""
    if m.groups != 1:
        return f"a grouped transposed convolution (groups={m.groups}) has no TFLite kernel; kept float"
    if tuple(m.dilation) != (1, 1):
        return (f"a dilated transposed convolution (dilation={tuple(m.dilation)}) has no TFLite kernel (TFLite's "
                "converter refuses it); replace it, e.g. by upsampling and a dilated Conv2d")
    return None


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
    if isinstance(m, nn.ConvTranspose2d):
        if why := _tconv_reason(m):
            return "convtranspose2d", why
        kind = "tconv"
    elif isinstance(m, nn.Linear):
        kind = "linear"
    elif not isinstance(m, nn.Conv1d | nn.Conv2d):
        return type(m).__name__.lower(), "not a Conv1d, Conv2d, ConvTranspose2d or Linear layer"
    elif m.groups == 1:
        kind = "conv"  # a Conv1d too: the artifact runs it as a CONV_2D of height 1
    elif m.groups == m.in_channels and isinstance(m, nn.Conv2d):
        kind = "dwconv"
    elif isinstance(m, nn.Conv1d):
        return "grouped_conv", (f"a grouped Conv1d (groups={m.groups}) converts to a grouped CONV_2D, which TFLite's "
                                "integer kernels do not run; kept float")
    else:
        return "grouped_conv", f"grouped convolution (groups={m.groups}) has no quantized TFLite kernel; kept float"
    base = next(t for t in LAYER_TYPES if isinstance(m, t))
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
        transposed = isinstance(m, nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d)
        macs = math.prod(in_shape) * (cout // groups) * math.prod(kernel) if transposed \
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
    kinds = (*LAYER_TYPES, *_FIXED_TYPES)
    seen: dict[str, list] = {}
    names = {m: n for n, m in model.named_modules()}

    def hook(mod: nn.Module, inp: tuple, out: Tensor) -> None:
        n = names[mod]
        if n in seen:
            seen[n][3] += 1
        elif isinstance(inp[0], Tensor) and isinstance(out, Tensor):
            seen[n] = [mod, inp[0].detach(), out.detach(), 1]

    def attention_hook(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        n = names[mod]
        if n in seen:
            seen[n][3] += 1
            return
        given = dict(zip(("query", "key", "value"), args, strict=False)) | kwargs
        seen[n] = [mod, given["query"].detach(), (given["key"].detach(), given["value"].detach()), 1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    handles += [m.register_forward_hook(attention_hook, with_kwargs=True) for m in model.modules()
                if isinstance(m, nn.MultiheadAttention)]
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
    layers = []
    for n, (m, i, o, c) in seen.items():
        layers += attention_layers(n, m, i, o, c) if isinstance(m, nn.MultiheadAttention) else [_layer(n, m, i, o, c)]
    layers += _never_ran(model, seen)
    if not any(la.searchable for la in layers):
        raise ModelError("the model has no Conv1d, Conv2d or Linear layer that can be quantized; nothing to search")
    return layers


ATTENTION_REASON = ("a projection inside nn.MultiheadAttention with add_bias_kv or add_zero_attn, which edgempq "
                    "does not rewrite into separate Linear layers (its fused kernel reads the weights directly): "
                    "not searchable; kept float, counted in size and MACs")
UNREWRITTEN_REASON = ("a projection inside nn.MultiheadAttention, whose fused kernel reads the weights directly (the "
                      "model was not loaded with edgempq.models.load_model, which rewrites it into Linear layers): "
                      "not searchable; kept float, counted in size and MACs")


def attention_layers(name: str, m: nn.MultiheadAttention, query: Tensor, kv: tuple[Tensor, Tensor],
                     calls: int) -> list[Layer]:
    """The projections of a MultiheadAttention as fixed linear layers, with their real shapes and
    MACs on this input: the packed q/k/v projection (or q, k and v apart when key and value have
    their own widths) and the output projection."""
    def tokens(t: Tensor) -> int:  # one sample's sequence length
        return t.shape[0] if t.dim() == 2 else t.shape[1] if m.batch_first else t.shape[0]

    from .attention import rewritable

    e, lq, lk, lv = m.embed_dim, tokens(query), tokens(kv[0]), tokens(kv[1])
    bias = m.in_proj_bias is not None
    why = UNREWRITTEN_REASON if rewritable(m) else ATTENTION_REASON
    rows = []
    if m.in_proj_weight is not None:  # q, k and v packed in one (3E, E) weight
        macs = (lq + lk + lv) * e * e
        rows.append(_fixed_linear(f"{name}.in_proj", ((lq, e), (lq, 3 * e)), bias, macs, why))
    else:
        for part, width, length in (("q", e, lq), ("k", m.kdim, lk), ("v", m.vdim, lv)):
            rows.append(_fixed_linear(f"{name}.{part}_proj", ((length, width), (length, e)), bias, length * width * e,
                                      why))
    out = m.out_proj
    rows.append(_fixed_linear(f"{name}.out_proj", ((lq, e), (lq, e)), out.bias is not None, lq * e * e, why))
    if calls > 1:
        rows = [replace(r, macs=r.macs * calls) for r in rows]
    return rows


def _fixed_linear(name: str, shapes: tuple[tuple[int, ...], tuple[int, ...]], bias: bool, macs: int,
                  reason: str = ATTENTION_REASON) -> Layer:
    """A linear layer kept float, described from its (input, output) shapes alone (features last)."""
    in_shape, out_shape = shapes
    cin, cout = in_shape[-1], out_shape[-1]
    sig = f"linear in{'x'.join(map(str, in_shape))} out{'x'.join(map(str, out_shape))} b{int(bias)}"
    return Layer(name, "linear", in_shape, out_shape, cin, cout, (1,), (1,), (0,), (1,), 1, bias,
                 cin * cout + (cout if bias else 0), macs, sig, reason)


def _never_ran(model: nn.Module, seen: dict[str, list]) -> list[Layer]:
    """Conv/Linear modules whose own forward never ran (their weights used by a parent's code, or
    unused on this input), listed as fixed so that none goes missing; MultiheadAttention's own
    projections are described by `attention_layers`."""
    inside_attention = {f"{n}.{c}" for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
                        for c, _ in m.named_modules() if c}
    out = []
    for n, m in model.named_modules():
        if n in seen or n in inside_attention or not isinstance(m, (*LAYER_TYPES, *_FIXED_TYPES)):
            continue
        reason = ("its forward never ran on this input (unused, or its weights are read by its parent's code); "
                  "kept float")
        if isinstance(m, nn.Linear):
            out.append(_fixed_linear(n, ((m.in_features,), (m.out_features,)), m.bias is not None, 0, reason))
        else:
            kernel = tuple(m.kernel_size)
            params = sum(p.numel() for p in (m.weight, m.bias) if p is not None)
            out.append(Layer(n, type(m).__name__.lower(), (m.in_channels,), (m.out_channels,), m.in_channels,
                             m.out_channels, kernel, _pair(m.stride), _pair(m.padding), _pair(m.dilation), m.groups,
                             m.bias is not None, params, 0, f"{type(m).__name__.lower()} unrun k{kernel}", reason))
    return out


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
