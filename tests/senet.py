"""A user net with a squeeze-excite gate (hard-sigmoid): the converter folds the gate's x/6 into
the expand conv's weights, as in MobileNetV3."""

import torch
from torch import nn


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(c, 4, 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(4, c, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.se = SE(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.se(self.relu(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def net():
    m = Net()
    m.input_shape = (1, 8, 8)
    return m
