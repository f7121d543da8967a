"""Built-in architectures. Module names follow torchvision's, so a torchvision state_dict of
resnet18 / mobilenet_v2 loads into them unchanged (torchvision itself is not a dependency)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn


def _conv_bn_act(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: indices 0 (conv), 1 (bn), 2 (ReLU6)."""
    pad = (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(),
    )


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: two 3x3 conv-BN pairs and the identity (or a strided
    1x1 conv-BN downsample) added before the last ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # Not in-place: hooks that read a block's activations must see them unmodified.
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        """The block's output: the residual branch plus the (downsampled) input, through ReLU."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-compatible ResNet with BasicBlocks; `small_stem` gives the CIFAR/MNIST stem
    (3x3 stride-1 conv, no max-pool)."""

    def __init__(
        self,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        num_classes: int = 1000,
        in_channels: int = 3,
        small_stem: bool = False,
    ) -> None:
        super().__init__()
        stem = widths[0]
        if small_stem:
            self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.num_stages = len(widths)
        inplanes = stem
        for i, (n, w) in enumerate(zip(blocks, widths, strict=True)):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(*[BasicBlock(inplanes if j == 0 else w, w, stride if j == 0 else 1)
                                    for j in range(n)])
            setattr(self, f"layer{i + 1}", layer)
            inplanes = w
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of images (N, C, H, W)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.avgpool(x).flatten(1))


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class InvertedResidual(nn.Module):
    """MobileNetV2's block: a 1x1 expansion (unless `expand_ratio` is 1), a depthwise 3x3 and a
    linear 1x1 projection, with the input added when stride and width allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_act(inp, hidden, kernel=1))
        layers += [
            _conv_bn_act(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """The block's output, with the residual connection where the block has one."""
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


IMAGENET_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


@dataclass(frozen=True)
class MobileNetShape:
    """A MobileNetV2's layout before `width_mult`: the setting rows (expand, channels, repeats,
    stride) as in the paper, the stem's width and stride, the last 1x1 conv's width and the
    classifier's dropout."""

    setting: tuple[tuple[int, int, int, int], ...] = IMAGENET_SETTING
    stem_channels: int = 32
    stem_stride: int = 2
    last_channel: int = 1280
    dropout: float = 0.2


IMAGENET_SHAPE = MobileNetShape()


class MobileNetV2(nn.Module):
    """torchvision-compatible MobileNetV2 of the layout `shape` (torchvision's by default),
    widths scaled by `width_mult`."""

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        in_channels: int = 3,
        shape: MobileNetShape = IMAGENET_SHAPE,
    ) -> None:
        super().__init__()
        cin = _make_divisible(shape.stem_channels * width_mult)
        self.last_channel = _make_divisible(shape.last_channel * max(1.0, width_mult))
        features: list[nn.Module] = [_conv_bn_act(in_channels, cin, stride=shape.stem_stride)]
        for t, c, n, s in shape.setting:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(_conv_bn_act(cin, self.last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(shape.dropout), nn.Linear(self.last_channel, num_classes))
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of images (N, C, H, W)."""
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(x.flatten(1))


class PlainCNN(nn.Module):
    """Conv-BN-ReLU blocks (3x3; `strides` per block), global average pooling, a linear head:
    the small network a user trains in minutes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 32, 64, 64),
                 strides: tuple[int, ...] = (1, 2, 1, 2, 1)) -> None:
        super().__init__()
        blocks, cin = [], in_channels
        for w, s in zip(widths, strides, strict=True):
            blocks.append(nn.Sequential(nn.Conv2d(cin, w, 3, s, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()))
            cin = w
        self.features = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of images (N, C, H, W)."""
        return self.fc(self.features(x).mean((2, 3)))


class MLP(nn.Module):
    """Fully connected layers with ReLU between them on the flattened input: the network a
    keyword-spotting or sensor model on a microcontroller often is."""

    def __init__(self, num_classes: int = 10, in_features: int = 784, widths: tuple[int, ...] = (256, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for w in widths:
            layers += [nn.Linear(in_features, w), nn.ReLU()]
            in_features = w
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch of samples of any shape (flattened)."""
        return self.fc(self.body(x))


def _init_weights(model: nn.Module) -> None:
    """torchvision's initialisation: Kaiming (fan-out) convs, unit BN, small linear weights."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class ZooEntry:
    """A built-in architecture: its factory and the input/dataset it is meant for."""

    name: str
    build: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]  # C, H, W of one sample
    num_classes: int
    dataset: str | None  # the built-in dataset it trains on, None for ImageNet-size nets
    description: str
    defaults: dict[str, object] = field(default_factory=dict)


def _resnet18(num_classes: int, in_channels: int) -> nn.Module:
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, in_channels)


def _mobilenet_v2(num_classes: int, in_channels: int, width_mult: float = 1.0) -> nn.Module:
    return MobileNetV2(num_classes, width_mult, in_channels)


def _mnist_resnet8(num_classes: int, in_channels: int) -> nn.Module:
    return ResNet((1, 1, 1), (16, 32, 64), num_classes, in_channels, small_stem=True)


MNIST_MOBILENET_SETTING = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 1, 1))
MNIST_MOBILENET_SHAPE = MobileNetShape(MNIST_MOBILENET_SETTING, stem_channels=16, stem_stride=1, last_channel=128,
                                       dropout=0.1)


def _mnist_mobilenet(num_classes: int, in_channels: int) -> nn.Module:
    return MobileNetV2(num_classes, 1.0, in_channels, MNIST_MOBILENET_SHAPE)


def _mnist_cnn(num_classes: int, in_channels: int) -> nn.Module:
    return PlainCNN(num_classes, in_channels)


def _mnist_mlp(num_classes: int, in_channels: int) -> nn.Module:
    return MLP(num_classes, in_channels * 28 * 28)


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry("resnet18", _resnet18, (3, 224, 224), 1000, None,
                 "torchvision ResNet-18 (11.7 M params, 1.81 G MACs at 224x224)"),
        ZooEntry("mobilenet_v2", _mobilenet_v2, (3, 224, 224), 1000, None,
                 "torchvision MobileNetV2 (3.5 M params, 0.30 G MACs at 224x224)",
                 {"width_mult": 1.0}),
        ZooEntry("mnist_resnet8", _mnist_resnet8, (1, 28, 28), 10, "mnist",
                 "ResNet-8 for 28x28 digits: 3x3 stem, three residual stages 16/32/64"),
        ZooEntry("mnist_mobilenet", _mnist_mobilenet, (1, 28, 28), 10, "mnist",
                 "MobileNetV2-style net for 28x28 digits, inverted residuals with depthwise convs"),
        ZooEntry("mnist_cnn", _mnist_cnn, (1, 28, 28), 10, "mnist",
                 "plain CNN for 28x28 digits: five 3x3 conv-BN-ReLU blocks (16-32-32-64-64), pool, linear"),
        ZooEntry("mnist_mlp", _mnist_mlp, (1, 28, 28), 10, "mnist",
                 "MLP for 28x28 digits: flattened, fully connected 784-256-128-10 with ReLU"),
    )
}
