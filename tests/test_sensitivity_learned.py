"""GMPQ and LIMPQ pieces on inputs worked by hand: LSQ levels, outlier erasure, switchable
BatchNorm, Grad-CAM against CAM, the capacity-aware power and the imitation loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgempq.sensitivity.gmpq import attribution, capacity_power, imitation_loss, with_last_feature
from edgempq.sensitivity.limpq import MultiBitLayer, SwitchableBN, erase_outliers, lsq


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_lsq_at_b_bits_gives_at_most_2_to_the_b_levels(bits):
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(bits)) * 3
    signed = lsq(x, torch.tensor(0.05), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    unsigned = lsq(x.abs(), torch.tensor(0.05), 0, 2 ** bits - 1)
    assert len(torch.unique(signed)) <= 2 ** bits and len(torch.unique(unsigned)) <= 2 ** bits
    assert len(torch.unique(signed)) == 2 ** bits  # a wide input reaches every level
    # the layer itself: the weight and the input it convolves take at most 2^b values
    conv = nn.Conv2d(3, 4, 3)
    layer = MultiBitLayer(conv, sorted({bits, 8}), sorted({bits, 16}))
    seen = {}
    conv._conv_forward = lambda x, w, b: seen.update(x=x, w=w) or nn.functional.conv2d(x, w, b)
    layer.use((bits, bits))
    layer(torch.randn(4, 3, 9, 9))  # signed input: a signed range
    assert len(torch.unique(seen["w"])) <= 2 ** bits and len(torch.unique(seen["x"])) <= 2 ** bits
    assert bool(layer.a_signed) and bool(layer.a_ready[layer.act_bits.index(bits)])


def test_lsq_passes_gradients_to_the_step_and_through_the_rounding():
    x = torch.linspace(-1, 1, 101, requires_grad=True)
    s = torch.tensor(0.1, requires_grad=True)
    lsq(x, s, -8, 7).sum().backward()
    assert s.grad is not None and s.grad != 0
    assert torch.all(x.grad[(x.detach() > -0.8) & (x.detach() < 0.7)] == 1)  # STE inside the range


def test_outlier_erasure_cascades_below_the_first_violation():
    assert erase_outliers({8: 0.01, 4: 0.05, 2: 0.2}, 1e4) == {8: 0.01, 4: 0.05, 2: 0.2}
    # 4 bits learned a finer step than 8: 4 is an outlier, and everything below it goes too
    assert erase_outliers({8: 0.01, 4: 0.005, 2: 0.2}, 1e4) == {8: 0.01, 4: 1e4, 2: 1e4}
    assert erase_outliers({16: 0.002, 8: 0.03, 4: 0.02}, 99.0) == {16: 0.002, 8: 0.03, 4: 99.0}


def test_switchable_batchnorm_uses_the_copy_of_the_current_precision():
    conv = MultiBitLayer(nn.Conv2d(1, 2, 1), [4, 8], [8])
    bn = SwitchableBN(nn.BatchNorm2d(2), ["w4a8", "w8a8"], conv).train()
    x = torch.randn(8, 2, 3, 3) + 5
    conv.use((4, 8))
    bn(x)
    assert bn.copies[0].running_mean.abs().sum() > 0
    assert bn.copies[1].running_mean.abs().sum() == 0 and bn.float_bn.running_mean.abs().sum() == 0


class GapHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


class PooledHead(GapHead):
    """The same head with a pooling module and flatten (as the zoo models pool)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


@pytest.mark.parametrize("size", [7, 32, 45])
@pytest.mark.parametrize("head", [GapHead, PooledHead])
def test_grad_cam_of_a_gap_linear_head_is_cam_at_any_input_size(size, head):
    torch.manual_seed(0)
    m = head().eval()
    x = torch.randn(6, 3, size, size)
    gm = with_last_feature(m, x[:2])
    logits, feat = gm(x.requires_grad_(True))
    assert torch.allclose(logits, m(x), atol=1e-6) and feat.shape == (6, 5, size, size)
    got = attribution(logits, feat, create_graph=False)
    cls = logits.argmax(1)
    cam = torch.relu(torch.einsum("nc,nchw->nhw", m.fc.weight[cls], feat))[:, None]
    assert torch.allclose(got, cam, atol=1e-5)


def test_capacity_power_grows_as_expected_bits_shrink_and_imitation_is_zero_for_matching_maps():
    wide = capacity_power([(torch.tensor(8.0), torch.tensor(8.0))] * 3, 24.0)
    narrow = capacity_power([(torch.tensor(2.0), torch.tensor(4.0))] * 3, 24.0)
    assert wide == pytest.approx(24 / 64) and narrow == pytest.approx(24 / 8) and narrow > wide
    t = torch.rand(4, 1, 5, 5)
    assert imitation_loss(t, 3.0 * t, 1.0) == pytest.approx(0.0, abs=1e-12)  # scale does not matter
    assert imitation_loss(t, t ** 3, 3.0) == pytest.approx(0.0, abs=1e-12)
    assert imitation_loss(t, torch.rand(4, 1, 5, 5), 3.0) > 0
