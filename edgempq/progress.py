"""The progress callback every long stage takes: `on_step(done, total, what)`, where `what` is a
label ("probes", a layer's name) or, while training, the loss. The CLI draws it; None is silent."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int, float | str], None]
