"""A user model that is not in the zoo (a .py file with a factory: residual blocks, depthwise
convs, a linear head) and its .npz data, trained briefly: what deploy and validate tests build."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import torch

NET = textwrap.dedent("""
    import torch
    import torch.nn as nn

    def block(c):
        return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c), nn.ReLU(),
                             nn.Conv2d(c, c, 1), nn.BatchNorm2d(c))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.a, self.b = block(8), block(8)
            self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.c, self.d = block(16), block(16)
            self.fc = nn.Linear(16 * 4 * 4, 3)

        def forward(self, x):
            x = self.stem(x)
            x = torch.relu(x + self.a(x))
            x = torch.relu(x + self.b(x))
            x = torch.relu(self.down(x))
            x = torch.relu(x + self.c(x))
            x = torch.relu(x + self.d(x))
            return self.fc(torch.flatten(x, 1))

    def net():
        return Net()
    net.input_shape = (1, 8, 8)
""")



def trained_user_model(folder: Path):
    """(model, data, paths): the net trained on 3 separable classes of 8x8 images; paths holds
    the model spec, the data file and the saved weights, as a user would pass them."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 60)
    x = (rng.normal(size=(180, 1, 8, 8)) * 0.5 + y[:, None, None, None] * np.linspace(-1, 1, 8)).astype(np.float32)
    # confident enough that rounding rarely flips a prediction
    return train_as_user(folder, NET, x, y, 60)


def train_as_user(folder: Path, net_source: str, x: np.ndarray, y: np.ndarray, steps: int, saved=None):
    """(model, data, paths): `net_source` written to folder/net.py, (x, y) to folder/d.npz, the
    net trained `steps` Adam steps from seed 0 and its weights (`saved(module)`, by default its
    state_dict) saved to folder/w.pt; paths holds
    the model spec, data file, weights and folder, as a user would pass them."""
    from edgempq.pipeline import load_model_and_data

    (folder / "net.py").write_text(net_source)
    np.savez(folder / "d.npz", x=x, y=y)
    spec, data = f"{folder / 'net.py'}:net", str(folder / "d.npz")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the factory draws the initial weights: same model whatever ran before
        model, ds = load_model_and_data(spec, data)
        full_batch_adam(model, ds, steps)
    torch.save((saved or type(model.module).state_dict)(model.module), folder / "w.pt")
    model, ds = load_model_and_data(spec, data, folder / "w.pt")
    return model, ds, {"model": spec, "data": data, "weights": str(folder / "w.pt"), "folder": folder}


def full_batch_adam(model, ds, steps: int) -> None:
    """Train `model` in place: `steps` full-batch Adam steps (lr 1e-2) on the training split, then eval mode."""
    opt = torch.optim.Adam(model.module.parameters(), 1e-2)
    xt, yt = (torch.from_numpy(a) for a in ds.split("train"))
    model.module.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model.module(xt), yt.long()).backward()
        opt.step()
    model.module.eval()
