"""GMPQ (Wang et al., ICCV 2021, arXiv 2108.02720): a differentiable bit-width search that keeps
the quantized network's attribution map close to the float network's.

Every searched layer holds one fake-quantized branch per candidate weight width and per
candidate activation width, mixed by softmax(α^w) and softmax(α^a) (EdMIPS style):
x̂ = Σ_k π^a_k Q^a_k(x), Ŵ = Σ_j π^w_j Q^w_j(W). Training minimises
CE + aw · L_attr + cd · L_c, where L_attr compares L2-normalised Grad-CAM maps on the last
feature map (each network's own predicted class; the float teacher stays in eval mode) with the
teacher's map raised to a power p (fixed, or larger when the expected bits are fewer: the
capacity-aware imitation), and L_c = Σ MACs_l · E[b^w_l] · E[b^a_l] / MACs_first.

Departures, for a user's trained model on a CPU: the search network is the user's own network
(its BatchNorm kept and trained in train mode, weights initialised from it, the weights'
gradient norm clipped at `clip`, `init=scratch` re-initialises them as the
paper does), not a CIFAR hypernet, so it works at any input size; weight steps are per output
channel, set from the weights once and then frozen (the paper: one max|W| range, frozen at the
first forward); activation steps are calibrated by min-max, then learned (LSQ; the paper: a
learnable PACT clip per branch). Read-out as a Sensitivity: penalty = −ln π^w(b_w) − ln π^a(b_a),
minus the layer's smallest, so the unconstrained optimum is the paper's argmax policy; a float
precision scores as the widest integer branches. The complexity loss is off by default (`cd=0`;
the paper's 3e-4 with `cd=3e-4`): the solver holds the budget, and the complexity pressure,
which grows with a layer's MACs, otherwise decides π instead of the attribution."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..compute import computing, on_cpu, to_device
from ..data_parallel import average_gradients, global_means, local_loss, shard, synced_batchnorm
from ..errors import ConfigError
from ..layers import apply_weights, weight_axis
from ..progress import Progress
from ..quant import QuantConfig, apply
from ..quant.fold import set_module
from ..quant.quantizers import ActQuantizer, WeightQuantizer
from ..schema import Layer, Policy, Precision, Sensitivity
from .base import METHODS, Method, SensData, searchable


class MixedLayer(nn.Module):
    """A Conv2d / Linear whose weights and input are mixtures of fake-quantized branches."""

    def __init__(self, layer: nn.Module, weight_bits: list[int], act_bits: list[int], seed: int) -> None:
        super().__init__()
        self.layer = layer
        self.weight_bits, self.act_bits = list(weight_bits), list(act_bits)
        self.alpha_w = nn.Parameter(torch.full((len(weight_bits),), 0.01))
        self.alpha_a = nn.Parameter(torch.full((len(act_bits),), 0.01))
        self.wq = nn.ModuleList(WeightQuantizer(b, weight_axis(layer)) for b in weight_bits)
        for q in self.wq:
            q.calibrate(layer.weight)  # frozen from here on
        self.aq = nn.ModuleList(ActQuantizer(b, seed=seed) for b in act_bits)

    def expected_bits(self) -> tuple[Tensor, Tensor]:
        """E[b^w] and E[b^a] under softmax(α^w) and softmax(α^a), differentiable in α."""
        pw, pa = torch.softmax(self.alpha_w, 0), torch.softmax(self.alpha_a, 0)
        return (pw * torch.tensor(self.weight_bits, dtype=pw.dtype, device=pw.device)).sum(), \
            (pa * torch.tensor(self.act_bits, dtype=pa.dtype, device=pa.device)).sum()

    def forward(self, x: Tensor) -> Tensor:
        """The layer on the π^a-mixed quantized input with the π^w-mixed quantized weights."""
        pa = torch.softmax(self.alpha_a, 0)
        pw = torch.softmax(self.alpha_w, 0)
        xq = sum(p * q(x) for p, q in zip(pa, self.aq, strict=True))
        w = sum(p * q(self.layer.weight) for p, q in zip(pw, self.wq, strict=True))
        return apply_weights(self.layer, xq, w, self.layer.bias)


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return isinstance(m, MixedLayer) or super().is_leaf_module(m, name)


def with_last_feature(model: nn.Module, example: Tensor) -> torch.fx.GraphModule:
    """`model` as a graph that returns (its output, its last 4-D feature map): the map Grad-CAM
    reads, at whatever input size."""
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = torch.fx.GraphModule(model, _Tracer().trace(model))
    except Exception as e:  # noqa: BLE001 - untraceable user models
        raise ConfigError(f"gmpq needs the model's graph to find its last feature map, and torch.fx cannot "
                          f"trace it ({type(e).__name__}: {e})") from None
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    # the last map with more than one position: global pooling's N x C x 1 x 1 output is not one
    def spatial(n: torch.fx.Node) -> bool:
        shape = getattr(n.meta.get("tensor_meta"), "shape", None)
        return shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1

    maps = [n for n in gm.graph.nodes if n.op not in ("output", "placeholder") and spatial(n)]
    if not maps:
        raise ConfigError("gmpq needs a model with a spatial feature map (N x C x H x W, H x W > 1) "
                          "for its attribution")
    out = next(n for n in gm.graph.nodes if n.op == "output")
    result = out.args[0]
    gm.graph.erase_node(out)
    gm.graph.output((result, maps[-1]))
    gm.recompile()
    return gm


def attribution(logits: Tensor, feature: Tensor, create_graph: bool) -> Tensor:
    """Grad-CAM without the 1/hw: ReLU(Σ_c (Σ_hw ∂z_ŷ/∂f_c) f_c), ŷ the network's own
    prediction; N x 1 x H x W. For global-average-pooling + linear it is CAM, Σ_c W[ŷ, c] f_c."""
    cls = logits.argmax(1)
    score = logits.gather(1, cls[:, None]).sum()
    (g,) = torch.autograd.grad(score, feature, create_graph=create_graph)
    return torch.relu((g.sum((2, 3), keepdim=True) * feature).sum(1, keepdim=True))


def capacity_power(expected_bits: list[tuple[Tensor, Tensor]], product: float) -> Tensor:
    """The capacity-dependent power: product · mean_l 1 / (E[b^w_l] · E[b^a_l]); fewer expected
    bits give a larger power, a sharper target (a constant of the step: no gradient)."""
    return (product * torch.stack([1.0 / (bw * ba) for bw, ba in expected_bits]).mean()).detach()


def imitation_loss(teacher_map: Tensor, student_map: Tensor, p: Tensor | float) -> Tensor:
    """Mean squared difference of the L2-normalised maps, the teacher's raised to power p."""
    t = nn.functional.normalize((teacher_map.flatten(1) + 0.0) ** p, dim=1)
    s = nn.functional.normalize(student_map.flatten(1), dim=1)
    return ((t - s) ** 2).mean()


@METHODS.register("gmpq")
class GMPQ(Method):
    """Attribution-rank-preserving differentiable search; penalties from the learned α."""

    name = "gmpq"
    monotone_exception = "the search trades accuracy for complexity: a layer may come to prefer fewer bits"

    @dataclass(frozen=True)
    class Params:
        epochs: int = 25  # the paper's CIFAR-10 search
        batch_size: int = 64  # 256 in the paper; a calibration split holds a few hundred samples
        lr: float = 0.01  # network weights and activation steps (0.1 in the paper, from scratch)
        lr_alpha: float = 0.01
        weight_decay: float = 1e-4  # on both, as the paper (it pulls α toward uniform)
        aw: float = 40.0  # weight of the attribution imitation
        # weight of the complexity loss; the paper's 3e-4 steers its argmax read-out to a BOPs
        # target, but the solver holds the budget here, and at 3e-4 the complexity gradient (by
        # MACs) drowned the attribution's in π: the least-penalty policy took 2-bit weights
        # nearly everywhere and fit every budget, the same policy at each (95 % on MNIST
        # MobileNet against HAWQ's 98 %)
        cd: float = 0.0
        pnorm: float = 3.0  # power of the teacher's map; <= 0: capacity-dependent
        product: float = 24.0  # capacity-dependent p = product · mean 1/(E[b^w]·E[b^a])
        init: str = "pretrained"  # or scratch: re-initialise the search network, as the paper
        clip: float = 5.0  # gradient-norm clip of the network's weights (not in the paper)
        seed: int = 0

        def __post_init__(self) -> None:
            if self.epochs < 1 or self.batch_size < 1:
                raise ConfigError("gmpq needs epochs >= 1 and batch_size >= 1")
            if min(self.lr, self.lr_alpha, self.product) <= 0 or min(self.aw, self.cd, self.weight_decay) < 0:
                raise ConfigError("gmpq needs positive learning rates and product, non-negative aw, cd, weight_decay")
            if self.init not in ("pretrained", "scratch"):
                raise ConfigError(f"gmpq init must be pretrained or scratch, not {self.init!r}")

    def compute(self, model: nn.Module, layers: list[Layer], precisions: dict[str, list[Precision]],
                data: SensData, on_step: Progress | None = None) -> Sensitivity:
        """Search the bit widths by attribution imitation and read the learned α out as penalties."""
        data.require_classes("gmpq (its attribution is of each sample's class)")
        p = self.params
        torch.manual_seed(p.seed)
        teacher, student = self._networks(model)
        todo = searchable(layers, precisions)
        scored = [la for la in todo if any(not q.is_float for q in precisions[la.name])]
        if not scored:  # only float choices: nothing to search
            return Sensitivity(self.name, {(la.name, str(q)): 0.0 for la in todo for q in precisions[la.name]},
                               info={"read_out": {}, "steps": 0})
        with on_cpu():  # built and calibrated on the CPU, moved to the compute device to train
            mixed = _mix(student, scored, precisions, p.seed)
        x_all = torch.from_numpy(np.ascontiguousarray(data.inputs)).float()
        y_all = torch.from_numpy(np.asarray(data.labels)).long()
        _calibrate_acts(student, x_all[: 4 * p.batch_size], p.batch_size)  # observed on the CPU
        with computing(teacher), computing(student):  # the learned α are read back on the CPU
            history = _Search(teacher, student, mixed, scored, x_all, p).train(x_all, y_all, on_step)
        penalties, read = _read_out(todo, precisions, mixed)
        last = np.mean(history[-max(1, len(history) // 10):], axis=0).tolist() if history else []
        info = {"read_out": read, "final_losses": dict(zip(("ce", "attribution", "complexity"), last, strict=False)),
                "steps": len(history)}
        return Sensitivity(self.name, penalties, info=info)

    def _networks(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """The frozen float teacher and the student network to search (re-initialised with `init=scratch`)."""
        p = self.params
        cfg = QuantConfig(seed=p.seed)
        teacher = apply(model, Policy({}), cfg).eval()
        for t in teacher.parameters():
            t.requires_grad_(False)
        # the student keeps its BatchNorm and trains in train mode (the paper's search network has
        # BatchNorm too): without it, SGD on the folded network diverges within a few steps
        student = apply(model, Policy({}), QuantConfig(seed=p.seed, fold_bn=False))
        if p.init == "scratch":
            for m in student.modules():
                if hasattr(m, "reset_parameters") and m is not student:
                    m.reset_parameters()
        return teacher, student


def _mix(student: nn.Module, scored: list[Layer], precisions: dict[str, list[Precision]],
         seed: int) -> dict[str, MixedLayer]:
    """Swap each scored layer of `student` for a MixedLayer over its integer widths."""
    mixed: dict[str, MixedLayer] = {}
    for la in scored:
        ints = [q for q in precisions[la.name] if not q.is_float]
        mixed[la.name] = MixedLayer(student.get_submodule(la.name), sorted({q.weight_bits for q in ints}),
                                    sorted({q.act_bits for q in ints}), seed)
        set_module(student, la.name, mixed[la.name])
    return mixed


class _Search:
    """One GMPQ search: the teacher's and student's graphs, the losses and the two optimisers."""

    def __init__(self, teacher: nn.Module, student: nn.Module, mixed: dict[str, MixedLayer], scored: list[Layer],
                 x_all: Tensor, params: GMPQ.Params) -> None:
        p = self.params = params
        self.student, self.mixed = student, mixed
        (example,) = to_device(x_all[:2])
        self.t_gm, self.s_gm = with_last_feature(teacher, example), with_last_feature(student, example)
        self.macs = {la.name: float(max(la.macs, 1)) for la in scored}
        self.first = self.macs[scored[0].name]
        alphas = [q for m in mixed.values() for q in (m.alpha_w, m.alpha_a)]
        alpha_ids = {id(a) for a in alphas}
        self.rest = [q for q in student.parameters() if id(q) not in alpha_ids]
        self.opt_w = torch.optim.SGD(self.rest, lr=p.lr, momentum=0.9, weight_decay=p.weight_decay)
        self.opt_a = torch.optim.SGD(alphas, lr=p.lr_alpha, momentum=0.9, weight_decay=p.weight_decay)
        self.per_epoch = math.ceil(len(x_all) / p.batch_size)
        self.decay = [torch.optim.lr_scheduler.StepLR(o, step_size=10 * self.per_epoch, gamma=0.1)
                      for o in (self.opt_w, self.opt_a)]

    def train(self, x_all: Tensor, y_all: Tensor, on_step: Progress | None) -> list[list[float]]:
        """Every epoch's steps over shuffled batches; the (ce, attribution, complexity) losses of each step."""
        p = self.params
        gen = torch.Generator().manual_seed(p.seed)  # batches are drawn on the CPU, then moved
        steps = p.epochs * self.per_epoch
        history: list[list[float]] = []
        self.student.train()
        with synced_batchnorm(self.s_gm):  # the graph the steps run holds the BatchNorms
            for _ in range(p.epochs):
                order = torch.randperm(len(x_all), generator=gen, device=gen.device)
                for i in range(0, len(x_all), p.batch_size):
                    idx = order[i:i + p.batch_size]
                    loss, parts = self.step(x_all[idx], y_all[idx])
                    history.append(parts)
                    if on_step:
                        on_step(len(history) - 1, steps, f"loss {loss:.3f}")
        return history

    def step(self, xb: Tensor, yb: Tensor) -> tuple[float, list[float]]:
        """One optimisation step on a batch (under torchrun, on this rank's share of it, the
        gradients averaged); its total loss and the (ce, attribution, complexity) parts."""
        p = self.params
        part = shard(len(xb))
        xb, yb = to_device(xb[part.positions], yb[part.positions])
        t_logits, t_feat = self.t_gm(xb.clone().requires_grad_(True))  # so the map has a gradient
        t_map = attribution(t_logits, t_feat, create_graph=False).detach()
        s_logits, s_feat = self.s_gm(xb)
        s_map = attribution(s_logits, s_feat, create_graph=True)
        bits = {n: m.expected_bits() for n, m in self.mixed.items()}
        power = p.pnorm if p.pnorm > 0 else capacity_power(list(bits.values()), p.product)
        l_attr = imitation_loss(t_map, s_map, power)
        l_c = sum(self.macs[n] * bw * ba for n, (bw, ba) in bits.items()) / self.first  # scored layers: never empty
        ce = nn.functional.cross_entropy(s_logits, yb)
        per_sample = ce + p.aw * l_attr  # a mean over the samples; the complexity is the network's
        self.opt_w.zero_grad()
        self.opt_a.zero_grad()
        (local_loss(per_sample, part, s_logits, s_map) + p.cd * l_c).backward()
        average_gradients(list(self.student.parameters()))
        nn.utils.clip_grad_norm_(self.rest, p.clip)  # the second-order attribution gradient spikes
        self.opt_w.step()
        self.opt_a.step()
        for d in self.decay:  # x0.1 every 10 epochs, as the paper
            d.step()
        ce_v, attr_v = global_means([ce.item(), l_attr.item()], part)
        l_c_v = float(l_c.detach())
        return ce_v + p.aw * attr_v + p.cd * l_c_v, [ce_v, attr_v, l_c_v]


def _read_out(todo: list[Layer], precisions: dict[str, list[Precision]],
              mixed: dict[str, MixedLayer]) -> tuple[dict[tuple[str, str], float], dict[str, dict]]:
    """Penalties −ln π^w − ln π^a, minus each layer's smallest (0 for unsearched layers), and the learned π."""
    penalties, read = {}, {}
    for la in todo:
        m = mixed.get(la.name)
        if m is None:
            penalties |= {(la.name, str(q)): 0.0 for q in precisions[la.name]}
            continue
        lw = torch.log_softmax(m.alpha_w.detach(), 0).numpy()
        la_ = torch.log_softmax(m.alpha_a.detach(), 0).numpy()
        raw = {}
        for q in precisions[la.name]:
            wi = len(m.weight_bits) - 1 if q.is_float else m.weight_bits.index(q.weight_bits)
            ai = len(m.act_bits) - 1 if q.is_float else m.act_bits.index(q.act_bits)
            raw[str(q)] = float(-lw[wi] - la_[ai])
        low = min(raw.values())
        penalties |= {(la.name, q): v - low for q, v in raw.items()}
        read[la.name] = {"weight_bits": m.weight_bits, "pi_w": np.exp(lw).round(4).tolist(),
                         "act_bits": m.act_bits, "pi_a": np.exp(la_).round(4).tolist(),
                         "argmax": f"w{m.weight_bits[int(lw.argmax())]}a{m.act_bits[int(la_.argmax())]}"}
    return penalties, read


@torch.no_grad()
def _calibrate_acts(model: nn.Module, x: Tensor, batch_size: int) -> None:
    """Min-max activation ranges of every branch, then learnable steps (LSQ)."""
    acts = [m for m in model.modules() if isinstance(m, ActQuantizer)]
    for a in acts:
        a.start_observing()
    for i in range(0, len(x), batch_size):
        model(x[i:i + batch_size])
    for a in acts:
        a.finish_observing()
        if not a.calibrated:  # never reached: a unit step
            a.calibrated = True
        a.make_learnable()
