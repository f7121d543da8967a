"""Eleven small architectures of the kinds edge users deploy, for `tools/bench_models.py`.

Each factory returns a freshly initialised model with `input_shape` set and says which task it
serves (`TASKS`). They are written here from the architectures' published descriptions, scaled
down where noted so that the benchmark runs in minutes on a CPU:
- MLPerf Tiny's four reference models: DS-CNN (keyword spotting on 49x10 MFCCs), MobileNetV1
  at width 0.25 (visual wake words, 96x96), ResNet-8 (CIFAR-10 image classification) and the
  fully connected autoencoder (anomaly detection on 640-value log-mel windows);
- a MobileNetV3-small-like net (Hardswish, squeeze-excitation), an EfficientNet-like SiLU net
  (MBConv with SE), an inception-like net (parallel branches concatenated), a segmentation
  encoder-decoder, a tiny ViT (nn.MultiheadAttention), a Conv1d audio net, a GroupNorm net.
"""

from __future__ import annotations

from torch import nn


def _cbr(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: type = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), act())


def ds_cnn() -> nn.Module:
    """MLPerf Tiny KWS: a 10x4 stride-2 conv, four depthwise-separable blocks of 64, pool, 12 classes."""
    layers = [nn.Conv2d(1, 64, (10, 4), 2, (5, 1), bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    for _ in range(4):
        layers += [*_cbr(64, 64, 3, 1, 64), *_cbr(64, 64, 1)]
    m = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 12))
    m.input_shape = (1, 49, 10)
    return m


def mobilenet_v1_025() -> nn.Module:
    """MLPerf Tiny VWW: MobileNetV1 at width 0.25 on 96x96 RGB, 2 classes."""
    cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]
    c = 8
    layers = [*_cbr(3, c, 3, 2)]
    for width, stride in cfg:
        w = width // 4
        layers += [*_cbr(c, c, 3, stride, c), *_cbr(c, w, 1)]
        c = w
    m = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 2))
    m.input_shape = (3, 96, 96)
    return m


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.a, self.b = _cbr(cin, cout, 3, stride), nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                                                   nn.BatchNorm2d(cout))
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.b(self.a(x)) + self.skip(x))


def resnet8() -> nn.Module:
    """MLPerf Tiny IC: ResNet-8 on 32x32 RGB (16, 32, 64 channels), 10 classes."""
    m = nn.Sequential(*_cbr(3, 16), _Basic(16, 16, 1), _Basic(16, 32, 2), _Basic(32, 64, 2),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    m.input_shape = (3, 32, 32)
    return m


def fc_autoencoder() -> nn.Module:
    """MLPerf Tiny AD: 640 -> 4 x 128 -> 8 -> 4 x 128 -> 640 (its output reconstructs its input)."""
    dims = [640, 128, 128, 128, 128, 8, 128, 128, 128, 128]
    layers: list[nn.Module] = []
    for a, b in zip(dims, dims[1:], strict=False):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    m = nn.Sequential(*layers, nn.Linear(128, 640))
    m.input_shape = (640,)
    return m


class _SE(nn.Module):
    def __init__(self, c: int, act: type = nn.ReLU, gate: type = nn.Hardsigmoid) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, max(8, c // 4), 1), act(),
                               nn.Conv2d(max(8, c // 4), c, 1), gate())

    def forward(self, x):
        return x * self.f(x)


class _MB(nn.Module):
    """An inverted residual: expand, depthwise, squeeze-excite, project (skip when shapes allow)."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int, act: type, gate: type) -> None:
        super().__init__()
        mid = cin * expand
        self.f = nn.Sequential(*_cbr(cin, mid, 1, act=act), *_cbr(mid, mid, 3, stride, mid, act=act),
                               _SE(mid, act, gate), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.f(x) if self.skip else self.f(x)


def mobilenet_v3_small_like() -> nn.Module:
    """MobileNetV3-small-like: Hardswish, squeeze-excitation with hard sigmoid, 64x64 RGB, 10 classes."""
    m = nn.Sequential(*_cbr(3, 16, 3, 2, act=nn.Hardswish), _MB(16, 16, 2, 2, nn.ReLU, nn.Hardsigmoid),
                      _MB(16, 24, 3, 2, nn.Hardswish, nn.Hardsigmoid), _MB(24, 24, 3, 1, nn.Hardswish, nn.Hardsigmoid),
                      *_cbr(24, 96, 1, act=nn.Hardswish), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 10))
    m.input_shape = (3, 64, 64)
    return m


def efficientnet_like() -> nn.Module:
    """EfficientNet-like: MBConv blocks with SiLU and sigmoid-gated SE, 64x64 RGB, 10 classes."""
    m = nn.Sequential(*_cbr(3, 16, 3, 2, act=nn.SiLU), _MB(16, 16, 1, 1, nn.SiLU, nn.Sigmoid),
                      _MB(16, 24, 4, 2, nn.SiLU, nn.Sigmoid), _MB(24, 40, 4, 2, nn.SiLU, nn.Sigmoid),
                      *_cbr(40, 128, 1, act=nn.SiLU), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
    m.input_shape = (3, 64, 64)
    return m


class _Inception(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1, self.b3 = _cbr(cin, 16, 1), nn.Sequential(*_cbr(cin, 12, 1), *_cbr(12, 16, 3))
        self.b5 = nn.Sequential(*_cbr(cin, 8, 1), *_cbr(8, 16, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), *_cbr(cin, 16, 1))

    def forward(self, x):
        import torch

        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


def inception_like() -> nn.Module:
    """Inception-like: two blocks of 1x1 / 3x3 / 5x5 / pool branches concatenated, 32x32 RGB, 10 classes."""
    m = nn.Sequential(*_cbr(3, 32, 3, 2), _Inception(32), nn.MaxPool2d(2), _Inception(64),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    m.input_shape = (3, 32, 32)
    return m


class _Segment(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(*_cbr(3, 16, 3, 2), *_cbr(16, 32, 3, 2))
        self.dec = nn.Sequential(nn.ConvTranspose2d(32, 16, 2, 2), nn.ReLU(), nn.ConvTranspose2d(16, 16, 2, 2),
                                 nn.ReLU(), nn.Conv2d(16, 4, 1))

    def forward(self, x):
        return self.dec(self.enc(x))


def segmentation_net() -> nn.Module:
    """A segmentation encoder-decoder: two stride-2 convs, two transposed convs, 4 classes per pixel (64x64)."""
    m = _Segment()
    m.input_shape = (3, 64, 64)
    return m


class _ViT(nn.Module):
    def __init__(self, dim: int = 48, heads: int = 3, depth: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            block = nn.Module()
            block.n1, block.attn = nn.LayerNorm(dim), nn.MultiheadAttention(dim, heads, batch_first=True)
            block.n2, block.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(),
                                                                  nn.Linear(2 * dim, dim))
            self.blocks.append(block)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        for b in self.blocks:
            h = b.n1(t)
            t = t + b.attn(h, h, h, need_weights=False)[0]
            t = t + b.mlp(b.n2(t))
        return self.head(self.norm(t).mean(1))


def tiny_vit() -> nn.Module:
    """A tiny ViT: 8x8 patches of 32x32 RGB, two pre-norm blocks of nn.MultiheadAttention and an MLP."""
    m = _ViT()
    m.input_shape = (3, 32, 32)
    return m


def conv1d_audio() -> nn.Module:
    """A Conv1d audio net on 1 x 1024 waveforms: strided 1-D convs, BatchNorm1d, pool, 8 classes."""
    def block(cin: int, cout: int, k: int, s: int) -> list[nn.Module]:
        return [nn.Conv1d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm1d(cout), nn.ReLU()]

    m = nn.Sequential(*block(1, 16, 9, 4), *block(16, 32, 5, 2), *block(32, 32, 5, 2), *block(32, 64, 3, 2),
                      nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(64, 8))
    m.input_shape = (1, 1024)
    return m


def groupnorm_net() -> nn.Module:
    """Convs with GroupNorm instead of BatchNorm (32x32 RGB, 10 classes)."""
    m = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.GroupNorm(4, 32), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1),
                      nn.GroupNorm(8, 64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    m.input_shape = (3, 32, 32)
    return m


NETS = {"ds_cnn": ds_cnn, "mobilenet_v1_025": mobilenet_v1_025, "resnet8": resnet8, "fc_autoencoder": fc_autoencoder,
        "mobilenet_v3_small_like": mobilenet_v3_small_like, "efficientnet_like": efficientnet_like,
        "inception_like": inception_like, "segmentation_net": segmentation_net, "tiny_vit": tiny_vit,
        "conv1d_audio": conv1d_audio, "groupnorm_net": groupnorm_net}
TASKS = {name: "classify" for name in NETS} | {"fc_autoencoder": "reconstruct", "segmentation_net": "dense"}
MLPERF_TINY = ("ds_cnn", "mobilenet_v1_025", "resnet8", "fc_autoencoder")
