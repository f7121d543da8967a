"""What a model is for, and how its outputs are scored: numpy only.

A task says what the targets are, the metrics of a model's outputs against them, and how far an
artifact's outputs are from the simulation's:
- `classify`: one class label per sample, N x classes outputs; top-1 and top-5; agreement on
  the top-1 class.
- `dense`: a class label per pixel (N x H x W), N x classes x H x W outputs (segmentation);
  per-pixel accuracy and mIoU; agreement on each pixel's class, and the output SNR.
- `regress`: float targets of the output's shape; MSE and SNR in dB; output SNR and cosine.
- `reconstruct`: the target is the input itself (autoencoders); scored as `regress`.

`infer` picks the task from the output's and the targets' shapes where only one fits. The
losses a task trains and scores sensitivity with are in `metrics.task_loss` (torch)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import DataError
from .schema.results import TASKS  # the schema's: deploy.json and validation.json hold only these

LABELLED = ("classify", "dense")  # tasks whose targets are class ids
# a headline score this far below the float model's means the data is likely preprocessed unlike training
LOSS_WARNING = {"top1": 0.10, "miou": 0.10, "snr_db": 10.0}
_NAMES = {"top1": "top-1", "top5": "top-5", "pixel_acc": "pixel accuracy", "miou": "mIoU", "mse": "MSE",
          "snr_db": "SNR"}


@dataclass(frozen=True)
class Task:
    """A task's name, its headline metric (what the report compares first) and its scorers."""

    name: str
    headline: str
    scores: Callable[[np.ndarray, np.ndarray], dict[str, float]]
    agreement: Callable[[np.ndarray, np.ndarray], dict[str, float | int | None]]

    def target(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """What the outputs are scored against: the labels, or the input for `reconstruct`."""
        return x if self.name == "reconstruct" else y


def classify_scores(out: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Top-1 and top-5 of N x classes outputs against N labels (ties go to the lower class)."""
    if len(y) == 0:
        return {"top1": float("nan"), "top5": float("nan")}
    order = np.argsort(-out.reshape(len(out), -1), axis=1, kind="stable")
    hit = order == np.asarray(y).reshape(-1, 1)
    return {"top1": float(hit[:, :1].any(axis=1).mean()), "top5": float(hit[:, :5].any(axis=1).mean())}


def dense_scores(out: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Per-pixel accuracy and mIoU (over the classes present in the labels or the predictions)
    of N x classes x H x W outputs against N x H x W labels."""
    pred = np.argmax(out, axis=1)
    y = np.asarray(y).reshape(pred.shape)
    ious = []
    for c in np.union1d(np.unique(y), np.unique(pred)):
        inter = np.sum((pred == c) & (y == c))
        ious.append(inter / np.sum((pred == c) | (y == c)))
    return {"pixel_acc": float(np.mean(pred == y)), "miou": float(np.mean(ious)) if ious else float("nan")}


MAX_SNR_DB = 200.0  # what equal outputs score (JSON has no infinity); float32 rounding alone is below it


def snr_db(signal: np.ndarray, estimate: np.ndarray) -> float:
    """10 log10(‖signal‖² / ‖estimate − signal‖²), at most MAX_SNR_DB (equal outputs) and at least
    −MAX_SNR_DB (a zero signal)."""
    s, e = (np.asarray(a, np.float64).reshape(-1) for a in (signal, estimate))
    noise, power = float(np.sum((e - s) ** 2)), float(np.sum(s**2))
    if noise == 0:
        return MAX_SNR_DB
    if power == 0:
        return -MAX_SNR_DB
    return float(np.clip(10 * np.log10(power / noise), -MAX_SNR_DB, MAX_SNR_DB))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two outputs taken as one vector each (1: same direction)."""
    u, v = (np.asarray(t, np.float64).reshape(-1) for t in (a, b))
    den = float(np.linalg.norm(u) * np.linalg.norm(v))
    return float(u @ v / den) if den > 0 else float(np.array_equal(u, v))


def regress_scores(out: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MSE and SNR (dB) of outputs against targets of the same size."""
    out, target = _same_size(out, target)
    return {"mse": float(np.mean((out - target) ** 2)) if out.size else float("nan"), "snr_db": snr_db(target, out)}


def _same_size(out: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out, target = np.asarray(out, np.float64), np.asarray(target, np.float64)
    if out.size != target.size:
        raise DataError(f"the model's outputs {tuple(out.shape)} and the targets {tuple(target.shape)} differ "
                        "in size; give targets of the output's shape")
    return out.reshape(len(out), -1), target.reshape(len(out), -1)


def _errors(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    err = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return {"max_logit_error": float(err.max(initial=0.0)), "mean_logit_error": float(err.mean()) if err.size else 0.0,
            "logit_range": float(np.ptp(b)) if np.size(b) else 0.0}


def class_agreement(artifact: np.ndarray, simulation: np.ndarray) -> dict[str, float | int | None]:
    """How often the artifact and the simulation pick the same class (per sample, or per pixel
    for dense outputs on axis 1), with the outputs' SNR and cosine and their largest difference."""
    same = np.argmax(artifact, axis=1) == np.argmax(simulation, axis=1)
    return {"top1": float(same.mean()), "disagreeing": int((~same).sum()), "snr_db": snr_db(simulation, artifact),
            "cosine": cosine(simulation, artifact), **_errors(artifact, simulation)}


def value_agreement(artifact: np.ndarray, simulation: np.ndarray) -> dict[str, float | int | None]:
    """The artifact's outputs against the simulation's: SNR (dB), cosine and the largest difference."""
    return {"top1": None, "disagreeing": 0, "snr_db": snr_db(simulation, artifact),
            "cosine": cosine(simulation, artifact), **_errors(artifact, simulation)}


_TASKS = {
    "classify": Task("classify", "top1", classify_scores, class_agreement),
    "dense": Task("dense", "miou", dense_scores, class_agreement),
    "regress": Task("regress", "snr_db", regress_scores, value_agreement),
    "reconstruct": Task("reconstruct", "snr_db", regress_scores, value_agreement),
}


def get_task(name: str) -> Task:
    """The task called `name`; an unknown one is a DataError listing them."""
    if name not in _TASKS:
        raise DataError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return _TASKS[name]


def infer(out_shape: tuple[int, ...], in_shape: tuple[int, ...], y: np.ndarray, given: str | None = None) -> str:
    """The task of a model whose batch output is `out_shape` and input `in_shape` (batch first),
    for targets `y` (all samples); `given` (the user's --task) is checked against them instead.
    A guess that could go two ways is refused, naming --task."""
    fits = _fitting(tuple(out_shape), tuple(in_shape), y)
    if given is not None:
        if given not in fits:
            raise DataError(f"--task {get_task(given).name} does not fit: {_why(given, out_shape, in_shape, y)}")
        return given
    if not fits:
        raise DataError(f"the model returns {tuple(out_shape[1:])} per sample and the data's targets are "
                        f"{_kind(y)}: no task fits; give class labels (classify), per-pixel labels (dense), "
                        "targets of the output's shape (regress), or no y for an autoencoder (reconstruct)")
    if len(fits) > 1 and fits[0] != "classify":
        raise DataError(f"the data fits the tasks {' and '.join(fits)}; say which with --task")
    return fits[0]


def _fitting(out: tuple[int, ...], inp: tuple[int, ...], y: np.ndarray) -> list[str]:
    labels = y.size > 0 and np.issubdtype(y.dtype, np.integer)
    fits = []
    if labels and y.ndim == 1 and len(out) == 2:
        fits.append("classify")
    if labels and len(out) == 4 and tuple(y.shape[1:]) == out[2:]:
        fits.append("dense")
    if y.size > 0 and np.issubdtype(y.dtype, np.floating) and int(np.prod(y.shape[1:])) == int(np.prod(out[1:])):
        fits.append("regress")
    if y.size == 0 and out[1:] == inp[1:]:
        fits.append("reconstruct")
    return fits


def _why(task: str, out: tuple[int, ...], inp: tuple[int, ...], y: np.ndarray) -> str:
    need = {"classify": "N integer class labels and N x classes outputs",
            "dense": "N x H x W integer labels and N x classes x H x W outputs",
            "regress": "float targets of the output's shape",
            "reconstruct": "outputs of the input's shape and no y in the data (the input is the target)"}[task]
    return (f"it needs {need}; the model returns {tuple(out[1:])} per sample for inputs {tuple(inp[1:])}, "
            f"and the targets are {_kind(y)}")


def _kind(y: np.ndarray) -> str:
    if y.size == 0:
        return "absent"
    kind = "integers" if np.issubdtype(y.dtype, np.integer) else "floats"
    return f"{kind} of shape {tuple(y.shape[1:]) or '()'} per sample"


def fmt(metric: str, value: float | None) -> str:
    """A metric's value as the report writes it: accuracies in %, SNR in dB, MSE as a number."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if metric == "snr_db":
        return "identical" if value >= MAX_SNR_DB else f"{value:.1f} dB"
    if metric == "mse":
        return f"{value:.4g}"
    return f"{100 * value:.2f} %"


def describe(scores: dict[str, float]) -> str:
    """Scores in words, e.g. "top-1 97.60%, top-5 99.90%" or "SNR 31.2 dB, MSE 0.0012"."""
    return ", ".join(f"{_NAMES.get(k, k)} {fmt(k, v)}" for k, v in scores.items())


def metric_name(metric: str) -> str:
    """A metric's name in words (top-1, mIoU, SNR, ...)."""
    return _NAMES.get(metric, metric)


def loss_warning(task: str, float_scores: dict[str, float], simulated: dict[str, float]) -> str | None:
    """A warning when the simulation's headline score falls far below the float model's (the
    calibration data is likely preprocessed unlike the training data), else None."""
    key = get_task(task).headline
    f, s = float_scores.get(key), simulated.get(key)
    if f is None or s is None or not np.isfinite(f) or not f - s > LOSS_WARNING[key]:
        return None
    drop = f"{f - s:.1f} dB" if key == "snr_db" else f"{100 * (f - s):.1f} points"
    return (f"the simulation loses {drop} of {metric_name(key)} against the float model ({fmt(key, s)} vs "
            f"{fmt(key, f)}); is the calibration data preprocessed like the training data (normalisation, scale, "
            "channel order)? If it is, a wider precision for the most sensitive layers will help")


def agreement_words(task: str, ag: object) -> str:
    """An `Agreement` (schema.results) in words, as the task reads it."""
    snr = getattr(ag, "snr_db", None)
    extra = f", output SNR {fmt('snr_db', snr)}, cosine {getattr(ag, 'cosine', 0.0):.6f}" if snr is not None else ""
    spread = f"max error {ag.max_logit_error:.3g} (outputs span {ag.logit_range:.3g})"  # type: ignore[attr-defined]
    if ag.top1 is None:  # type: ignore[attr-defined]
        return f"outputs{extra.removeprefix(', output')}, {spread}"
    unit = "pixels" if task == "dense" else "samples"
    return (f"class agreement {ag.top1:.2%} ({ag.disagreeing} {unit} differ){extra}, "  # type: ignore[attr-defined]
            f"{spread}")
