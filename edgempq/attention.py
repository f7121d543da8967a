"""nn.MultiheadAttention rewritten as four nn.Linear projections and per-head matmuls.

PyTorch's MultiheadAttention reads its packed q/k/v weight inside a fused kernel, so its
projections cannot be quantized as layers, and onnx2tf cannot convert the reshapes its ONNX export
makes across the feature axis. `unfused(model)` puts an `Attention` in place of each one, right
after the model (and its weights) are loaded: the same function (to float rounding) made of Linear
layers (`in_proj`, packed as MultiheadAttention packs it, or `q_proj`/`k_proj`/`v_proj` when key and
value have their own widths, and `out_proj`), which the search, the simulation and the converter
all see as ordinary linear layers, and heads split by fixed slices of the feature axis (which
onnx2tf keeps in one layout). The 1/sqrt(head_dim) scale multiplies q before the heads are split (a
scale on the scores is an op onnx2tf mishandles). Separate q/k/v layers over one input are not an
option: the TFLite converter fuses them into one op.

Weights keep MultiheadAttention's names (`in_proj_weight`, `in_proj_bias`, ...): the rewritten
model loads a user's weights, and `saved_state` gives the weights their own model loads.
MultiheadAttention with `add_bias_kv` or `add_zero_attn` is left as it is (its projections are
listed as fixed, see `layers.attention_layers`)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

_PARTS = ("q", "k", "v")


class Attention(nn.Module):
    """Multi-head attention with the call signature and results of nn.MultiheadAttention: one
    `in_proj` Linear (E -> 3E) where q, k and v share the width E, as MultiheadAttention packs
    them, else `q_proj`, `k_proj` and `v_proj`; then `out_proj`."""

    # Read by nn.TransformerEncoder(Layer)'s fused fast path, which would bypass the projections
    # (and their fake quantization): False makes it decline, and run this module's forward.
    _qkv_same_embed_dim = False
    bias_k = bias_v = None
    add_zero_attn = False

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        e = mha.embed_dim
        self.embed_dim, self.num_heads, self.head_dim = e, mha.num_heads, mha.head_dim
        self.kdim, self.vdim = mha.kdim, mha.vdim
        self.batch_first, self.dropout, self.packed = mha.batch_first, mha.dropout, mha._qkv_same_embed_dim
        self.scale = 1.0 / math.sqrt(self.head_dim)
        like = mha.out_proj.weight
        bias, kw = mha.in_proj_bias is not None, {"device": like.device, "dtype": like.dtype}
        if self.packed:
            self.in_proj = nn.Linear(e, 3 * e, bias=bias, **kw)
        else:
            for part, width in zip(_PARTS, (e, mha.kdim, mha.vdim), strict=True):
                setattr(self, f"{part}_proj", nn.Linear(width, e, bias=bias, **kw))
        self.out_proj = nn.Linear(e, e, bias=mha.out_proj.bias is not None, **kw)
        self.register_load_state_dict_pre_hook(_unpacked_state)
        self.load_state_dict(mha.state_dict())
        theirs = dict(mha.named_parameters())
        for name, p in self.named_parameters():
            p.requires_grad_(theirs[_mha_name(name, self.packed)].requires_grad)

    @property
    def in_proj_weight(self) -> Tensor | None:
        """MultiheadAttention's packed q/k/v weight (None when key and value have their own widths)."""
        return self.in_proj.weight if self.packed else None

    @property
    def in_proj_bias(self) -> Tensor | None:
        """MultiheadAttention's packed q/k/v bias (None without biases; q's bias when unpacked)."""
        proj = self.in_proj if self.packed else self.q_proj
        return proj.bias

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,  # noqa: PLR0913 - MultiheadAttention's
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """(attention output, the attention weights when `need_weights`), as MultiheadAttention returns them."""
        given = query
        inputs = "self" if key is query and value is query else "kv" if value is key else "apart"
        query, key, value = _batch_first(query, key, value, self.batch_first)
        q, k, v = self._projected(query, key, value, inputs)
        mask = None if attn_mask is None and key_padding_mask is None and not is_causal else \
            _attention_mask(attn_mask, key_padding_mask, is_causal, q, self.num_heads)
        outs, weights = [], []
        d = self.head_dim
        for h in range(self.num_heads):
            scores = q[..., h * d:(h + 1) * d] @ k[..., h * d:(h + 1) * d].transpose(-1, -2)
            if mask is not None:
                scores = scores + mask[:, h]
            p = F.dropout(torch.softmax(scores, -1), self.dropout, self.training)
            outs.append(p @ v[..., h * d:(h + 1) * d])
            weights.append(p)
        out = self.out_proj(torch.cat(outs, -1))
        w = None
        if need_weights:
            w = torch.stack(weights, 1)
            w = w.mean(1) if average_attn_weights else w
        return _as_given(out, w, given, self.batch_first)

    def _projected(self, query: Tensor, key: Tensor, value: Tensor, inputs: str) -> tuple[Tensor, Tensor, Tensor]:
        """q (scaled by 1/sqrt(head_dim)), k and v, each N x L x E. Packed: self-attention
        (`inputs` "self") runs `in_proj` once; otherwise once per distinct input ("kv": key and
        value are one tensor), each keeping its part (its weight is one layer)."""
        e = self.embed_dim
        if not self.packed:
            return self.q_proj(query) * self.scale, self.k_proj(key), self.v_proj(value)
        if inputs == "self":
            qkv = self.in_proj(query)
            return qkv[..., :e] * self.scale, qkv[..., e:2 * e], qkv[..., 2 * e:]
        kv = self.in_proj(key)
        v = kv if inputs == "kv" else self.in_proj(value)
        return self.in_proj(query)[..., :e] * self.scale, kv[..., e:2 * e], v[..., 2 * e:]


def _batch_first(query: Tensor, key: Tensor, value: Tensor, batch_first: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The inputs as N x L x E (an unbatched L x E input as a batch of one)."""
    if query.dim() == 2:
        return query[None], key[None], value[None]
    if not batch_first:
        return query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    return query, key, value


def _as_given(out: Tensor, w: Tensor | None, query: Tensor, batch_first: bool) -> tuple[Tensor, Tensor | None]:
    """The N x L x E output (and weights) laid out as the `query` given was."""
    if query.dim() == 2:
        return out[0], None if w is None else w[0]
    return (out if batch_first else out.transpose(0, 1)), w


# torch.fx (layer_edges) records these as calls: their branches depend on the inputs' ranks and types.
torch.fx.wrap("_batch_first")
torch.fx.wrap("_as_given")
torch.fx.wrap("_attention_mask")


def _attention_mask(attn_mask: Tensor | None, key_padding_mask: Tensor | None, is_causal: bool, q: Tensor,
                    heads: int) -> Tensor:
    """One additive N x heads x L x S mask from MultiheadAttention's mask arguments: True (or
    -inf) masks a position out, float masks are added."""
    n, lq = q.shape[0], q.shape[1]
    if attn_mask is None and is_causal:
        attn_mask = torch.ones(lq, lq, dtype=torch.bool, device=q.device).triu(1)
    out = None
    if attn_mask is not None:
        m = _additive(attn_mask, q.dtype)
        out = m.reshape(n, heads, lq, -1) if m.dim() == 3 else m.expand(n, heads, lq, -1)  # noqa: PLR2004
    if key_padding_mask is not None:
        pad = _additive(key_padding_mask, q.dtype).reshape(n, 1, 1, -1)  # N x S, or S unbatched
        out = pad if out is None else out + pad
    return out.expand(n, heads, lq, out.shape[-1])


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def saved_state(model: nn.Module) -> dict[str, Tensor]:
    """`model.state_dict()` with each Attention's entries under MultiheadAttention's names: the
    weights a user's own model (and `load_model`) loads. (A state_dict hook cannot do this: the
    ONNX exporter reads the state_dict for the parameters themselves.)"""
    state = model.state_dict()
    for name, m in model.named_modules():
        if isinstance(m, Attention):
            _packed(m, state, f"{name}." if name else "")
    return state


def _mha_name(ours: str, packed: bool) -> str:
    """MultiheadAttention's name for one of Attention's parameters (the q/k/v biases apart are
    slices of its `in_proj_bias`), as `_packed` renames them."""
    part, _, kind = ours.partition(".")
    if part == "out_proj" or not kind:
        return ours
    return f"in_proj_{kind}" if packed or kind == "bias" else f"{part}_{kind}"


def _parts(module: Attention) -> list[str]:
    return ["in_proj"] if module.packed else [f"{p}_proj" for p in _PARTS]


def _packed(module: Attention, state: dict[str, Tensor], prefix: str) -> None:
    """Rename the projections' entries to MultiheadAttention's (in place): one `in_proj_weight`
    and one `in_proj_bias` (q, k and v biases apart concatenated), or `q_proj_weight`, ..."""
    for kind in ("weight", "bias"):
        ours = [f"{prefix}{part}.{kind}" for part in _parts(module) if f"{prefix}{part}.{kind}" in state]
        if ours and (module.packed or kind == "bias"):
            state[f"{prefix}in_proj_{kind}"] = torch.cat([state.pop(n) for n in ours])
        elif ours:
            state.update({f"{prefix}{part}_{kind}": state.pop(f"{prefix}{part}.{kind}") for part in _parts(module)})


def _unpacked_state(module: Attention, state: dict[str, Tensor], prefix: str, *_: Any) -> None:
    """MultiheadAttention's entries renamed to the projections' (in place), before loading."""
    parts = _parts(module)
    for kind in ("weight", "bias"):
        if module.packed or kind == "bias":
            packed = state.pop(f"{prefix}in_proj_{kind}", None)
            if packed is not None:
                pieces = [packed] if module.packed else packed.split(module.embed_dim)
                state.update({f"{prefix}{part}.{kind}": t for part, t in zip(parts, pieces, strict=True)})
        else:
            state.update({f"{prefix}{part}.{kind}": state.pop(f"{prefix}{part}_{kind}") for part in parts
                          if f"{prefix}{part}_{kind}" in state})


def rewritable(m: nn.Module) -> bool:
    """Whether `m` is a MultiheadAttention that `Attention` computes exactly."""
    return isinstance(m, nn.MultiheadAttention) and m.bias_k is None and not m.add_zero_attn


def unfused(model: nn.Module) -> nn.Module:
    """`model` with every rewritable nn.MultiheadAttention replaced in place by an `Attention`."""
    from .quant.fold import set_module

    if rewritable(model):
        return Attention(model).train(model.training)
    for name, m in [(n, m) for n, m in model.named_modules() if n and rewritable(m)]:
        set_module(model, name, Attention(m).train(m.training))
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoder):
            m.use_nested_tensor = False  # its nested-tensor fast path reads the packed weights itself
    return model
