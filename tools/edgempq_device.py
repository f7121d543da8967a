#!/usr/bin/env python3
"""edgempq's device-side runner: times and runs .tflite models on the device it runs on.

Needs only Python 3, numpy and a TFLite interpreter (ai_edge_litert 1.4 to 2.3, else tflite_runtime
2.14 beside numpy 1); a runtime that cannot load a model says which it is and why. No
torch, no edgempq. Every mode prints one JSON object on stdout; failures print
{"error": "..."} and exit with status 2.

    python3 edgempq_device.py info [--threads N]
    python3 edgempq_device.py time MODEL.tflite [--threads N] [--warmup W] [--runs R] [--max-seconds S]
    python3 edgempq_device.py run MODEL.tflite INPUTS.npz OUTPUTS.npz [--threads N]
    python3 edgempq_device.py eval MODEL.tflite DATA.npz [--logits LOGITS.npz] [--threads N]

`eval` reads float samples `x` (in the model's layout, e.g. NHWC) and integer labels `y` from
DATA.npz, quantizes the samples when the model takes integers (with the input's own scale and
zero point), runs one invoke per sample, dequantizes the outputs and prints top-1, top-5 and the
predicted class of every sample; with --logits it also saves the dequantized outputs.
"""

from __future__ import annotations  # runs on Python 3.7+: no newer syntax at run time

import argparse
import json
import os
import platform
import signal
import sys
import time

import numpy as np

MAX_MODEL_BYTES = 2 << 30
MAX_RUNS = 100_000


class DeviceError(Exception):
    pass


def load_interpreter_class():
    """(Interpreter class, runtime name, version) of the first TFLite runtime installed:
    ai_edge_litert (LiteRT 1.x and 2.x), else tflite_runtime."""
    try:
        import ai_edge_litert
        from ai_edge_litert import interpreter as mod

        return mod.Interpreter, "ai_edge_litert", getattr(ai_edge_litert, "__version__", "unknown")
    except ImportError:
        pass
    try:
        import tflite_runtime
    except ImportError:
        raise DeviceError("no TFLite runtime on this device: install ai-edge-litert (or tflite-runtime) "
                          "for this Python") from None
    version = getattr(tflite_runtime, "__version__", "unknown")
    if int(np.__version__.split(".")[0]) >= 2:  # its extension is built against numpy 1 and fails in 2
        raise DeviceError(f"tflite_runtime {version} is built for numpy 1 and cannot run beside numpy "
                          f"{np.__version__} on this device: install numpy<2 for this Python, or install "
                          "ai-edge-litert instead of tflite-runtime")
    from tflite_runtime import interpreter as mod

    return mod.Interpreter, "tflite_runtime", version


# what a runtime's refusal to prepare a model means, and what to do about it
_KNOWN_REFUSALS = (  # (where, the check that failed, what it means)
    ("quantize.cc", "output->type == kTfLiteUInt8 || output->type == kTfLiteInt8",
     "this runtime cannot requantize 8-bit values to 16 bits (a w*a16 layer fed by the int8 input or by a "
     "w*a8 layer); ai-edge-litert 2.1.3 or newer can: upgrade it on the device, or deploy a policy whose "
     "16-bit layers are fed by float or 16-bit values only"),
)


def load_failure(error: Exception) -> str:
    """Why the installed runtime cannot load a model, in one sentence that names the runtime."""
    _, runtime, version = load_interpreter_class()
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    hint = next((h for where, check, h in _KNOWN_REFUSALS if where in text and check in text), None)
    said = f"{runtime} {version} cannot load the model ({text[:600]})"
    return f"{said}; {hint}" if hint else said


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Model", "cpu model") and val.strip():
                    return val.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def info(threads: int) -> dict:
    _, runtime, version = load_interpreter_class()
    return {"cpu": cpu_model(), "machine": platform.machine(), "system": platform.system(),
            "cores": os.cpu_count(), "runtime": runtime, "runtime_version": version,
            "python": platform.python_version(), "numpy": np.__version__, "threads": threads}


def read_model(path: str) -> bytes:
    if not os.path.isfile(path):
        raise DeviceError(f"model file {path} does not exist")
    size = os.path.getsize(path)
    if not 8 <= size <= MAX_MODEL_BYTES:
        raise DeviceError(f"model file {path} has an implausible size ({size} bytes)")
    with open(path, "rb") as f:
        data = f.read()
    if data[4:8] != b"TFL3":
        raise DeviceError(f"model file {path} is not a TFLite flatbuffer")
    return data


def make_interpreter(model: bytes, threads: int):
    cls, _, _ = load_interpreter_class()
    try:
        it = cls(model_content=model, num_threads=threads)
        it.allocate_tensors()
    except Exception as e:  # noqa: BLE001 - the runtime raises many types
        raise DeviceError(load_failure(e)) from None
    return it


def sample_inputs(it, seed: int = 0) -> list:
    """Deterministic random inputs of each input's dtype and shape."""
    rng = np.random.default_rng(seed)
    out = []
    for d in it.get_input_details():
        dt = np.dtype(d["dtype"])
        if np.issubdtype(dt, np.floating):
            out.append(rng.standard_normal(d["shape"]).astype(dt))
        else:
            lim = np.iinfo(dt)
            out.append(rng.integers(max(lim.min, -128), min(lim.max, 127) + 1, d["shape"]).astype(dt))
    return out


def time_model(model: bytes, threads: int, warmup: int, runs: int, max_seconds: float = 0.0) -> dict:
    """Warm-up, then `runs` timed invokes; per-run milliseconds and their median / p10 / p90.
    With `max_seconds`, a slow model stops early, after at least 5 timed runs."""
    if not 1 <= runs <= MAX_RUNS or not 0 <= warmup <= MAX_RUNS or not 0 <= max_seconds < float("inf"):
        raise DeviceError(f"runs must be 1..{MAX_RUNS}, warmup 0..{MAX_RUNS} and max-seconds a finite number >= 0")
    it = make_interpreter(model, threads)
    for d, x in zip(it.get_input_details(), sample_inputs(it)):
        it.set_tensor(d["index"], x)
    return timed_invokes(it.invoke, warmup, runs, max_seconds)


def timed_invokes(invoke, warmup: int, runs: int, max_seconds: float = 0.0) -> dict:
    """Milliseconds of `runs` calls of `invoke` after `warmup` calls, within the time budget."""
    start = time.perf_counter()
    for _ in range(warmup):
        invoke()
        if max_seconds and time.perf_counter() - start > max_seconds / 4:
            break
    samples = []
    start = time.perf_counter()
    for _ in range(runs):
        t = time.perf_counter()
        invoke()
        samples.append((time.perf_counter() - t) * 1e3)
        if max_seconds and len(samples) >= min(5, runs) and time.perf_counter() - start > max_seconds:
            break
    a = np.asarray(samples)
    return {"samples_ms": samples, "median_ms": float(np.median(a)), "p10_ms": float(np.percentile(a, 10)),
            "p90_ms": float(np.percentile(a, 90)), "runs": len(samples)}


def run_model(model: bytes, inputs: list, threads: int) -> list:
    """Outputs of one invoke per batch row; inputs are checked against the model first."""
    it = make_interpreter(model, threads)
    details = it.get_input_details()
    if len(inputs) != len(details):
        raise DeviceError(f"the model takes {len(details)} input(s), {len(inputs)} given")
    n = None
    for d, x in zip(details, inputs):
        if np.dtype(x.dtype) != np.dtype(d["dtype"]) or tuple(x.shape[1:]) != tuple(d["shape"][1:]):
            raise DeviceError(f"input {d['name']} must be {np.dtype(d['dtype'])} with samples of shape "
                              f"{tuple(d['shape'][1:])}, got {x.dtype} {tuple(x.shape)}")
        n = len(x) if n is None else n
        if len(x) != n:
            raise DeviceError("all inputs must hold the same number of samples")
    if not n:
        raise DeviceError("the inputs hold no samples")
    outs = [[] for _ in it.get_output_details()]
    for i in range(n):
        for d, x in zip(details, inputs):
            it.set_tensor(d["index"], x[i : i + 1])
        it.invoke()
        for k, d in enumerate(it.get_output_details()):
            outs[k].append(it.get_tensor(d["index"]).copy())
    return [np.concatenate(o) for o in outs]


def quantize(x, dtype, scale: float, zero_point: int):
    """Float samples as an integer input takes them: round(x / scale) + zero point, saturated."""
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.integer):
        return np.asarray(x, dtype=dt)
    if not scale > 0:
        raise DeviceError(f"the model takes {dt.name} inputs without a quantization scale")
    lim = np.iinfo(dt)
    return np.clip(np.round(np.asarray(x, np.float64) / scale) + zero_point, lim.min, lim.max).astype(dt)


def dequantize(q, scale: float, zero_point: int):
    """Integer outputs as real numbers: scale * (q - zero point); float outputs as float32."""
    q = np.asarray(q)
    if np.issubdtype(q.dtype, np.integer) and scale > 0:
        return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return q.astype(np.float32)


def top_k(logits, labels, k: int) -> float:
    """Fraction of samples whose label is among the k highest outputs."""
    k = min(k, logits.shape[1])
    best = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(best == labels[:, None], axis=1)))


def check_eval_data(x, y, n_outputs: int, sample_shape) -> None:
    """Samples and labels fit the model: float samples of its shape, one integer label each."""
    if not np.issubdtype(x.dtype, np.floating):
        raise DeviceError(f"samples x must be floating point (the runner quantizes them), got {x.dtype}")
    if x.ndim < 1 or tuple(x.shape[1:]) != tuple(sample_shape):
        raise DeviceError(f"samples x must have shape (N, {', '.join(map(str, sample_shape))}), got {tuple(x.shape)}")
    if not np.all(np.isfinite(x)):
        raise DeviceError("samples x hold NaN or infinite values")
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or len(y) != len(x):
        raise DeviceError(f"labels y must be {len(x)} integers in a 1-D array, got {y.dtype} {tuple(y.shape)}")
    if len(y) == 0:
        raise DeviceError("the data holds no samples")
    if y.min() < 0 or y.max() >= n_outputs:
        raise DeviceError(f"labels must be in 0..{n_outputs - 1} (the model has {n_outputs} outputs), "
                          f"got {int(y.min())}..{int(y.max())}")


def evaluate(model: bytes, x, y, threads: int) -> tuple:
    """(result, logits): top-1 / top-5 of a single-input classifier on (x, y), one invoke per
    sample, and its dequantized outputs."""
    it = make_interpreter(model, threads)
    ins, outs = it.get_input_details(), it.get_output_details()
    if len(ins) != 1 or len(outs) != 1:
        raise DeviceError(f"eval takes a model with one input and one output, this one has {len(ins)} and {len(outs)}")
    d, o = ins[0], outs[0]
    n_out = int(np.prod(o["shape"][1:]))
    check_eval_data(x, y, n_out, [int(v) for v in d["shape"][1:]])
    scale, zero = d["quantization"]
    oscale, ozero = o["quantization"]
    q = quantize(x, d["dtype"], scale, zero)
    logits = np.empty((len(x), n_out), np.float32)
    start = time.perf_counter()
    for i in range(len(x)):
        it.set_tensor(d["index"], q[i : i + 1])
        it.invoke()
        logits[i] = dequantize(it.get_tensor(o["index"]), oscale, ozero).reshape(-1)
    seconds = time.perf_counter() - start
    pred = np.argmax(logits, axis=1)
    return ({"samples": int(len(x)), "top1": top_k(logits, y, 1), "top5": top_k(logits, y, 5),
             "predictions": [int(v) for v in pred], "seconds": seconds}, logits)


def load_eval_data(path: str) -> tuple:
    """(x, y) from an .npz holding arrays x and y (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files or "y" not in f.files:
                raise DeviceError(f"data file {path} must hold arrays x and y, it has {', '.join(f.files) or 'none'}")
            return f["x"], f["y"]
    except DeviceError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy raises many types for a bad file
        raise DeviceError(f"data file {path} is not a readable .npz ({type(e).__name__}: {e})") from None


def save_npz(path: str, **arrays) -> None:
    """Write arrays to `path` whole or not at all (temporary file, then rename)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load_inputs(path: str) -> list:
    try:
        with np.load(path, allow_pickle=False) as f:
            names = sorted(f.files, key=lambda s: int(s.rsplit("_", 1)[-1]) if s.rsplit("_", 1)[-1].isdigit() else 0)
            return [f[k] for k in names]
    except Exception as e:  # noqa: BLE001 - numpy raises many types for a bad file
        raise DeviceError(f"inputs file {path} is not a readable .npz ({type(e).__name__}: {e})") from None


def set_deadline(seconds: float) -> None:
    """End this process after `seconds` (SIGALRM, exit status 142 through a shell): the host
    gives up on a device that does not answer in time, and the runner must not keep the device
    busy after that."""
    if not 0 <= seconds < float("inf"):
        raise DeviceError("deadline must be a finite number of seconds >= 0")
    if seconds > 0 and hasattr(signal, "SIGALRM"):
        # the default action: the kernel ends the process, even inside a hung native invoke
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, seconds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="edgempq device runner")
    sub = ap.add_subparsers(dest="mode", required=True)
    p_info = sub.add_parser("info")
    p_time = sub.add_parser("time")
    p_time.add_argument("model")
    p_time.add_argument("--warmup", type=int, default=5)
    p_time.add_argument("--runs", type=int, default=30)
    p_time.add_argument("--max-seconds", type=float, default=0.0)
    p_run = sub.add_parser("run")
    p_run.add_argument("model")
    p_run.add_argument("inputs")
    p_run.add_argument("outputs")
    p_eval = sub.add_parser("eval")
    p_eval.add_argument("model")
    p_eval.add_argument("data")
    p_eval.add_argument("--logits")
    for p in (p_info, p_time, p_run, p_eval):
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--deadline", type=float, default=0.0,
                       help="stop with an error after this many seconds (0: never)")
    args = ap.parse_args(argv)
    try:
        if not 1 <= args.threads <= 256:
            raise DeviceError("threads must be 1..256")
        set_deadline(args.deadline)
        if args.mode == "info":
            result = info(args.threads)
        elif args.mode == "time":
            result = time_model(read_model(args.model), args.threads, args.warmup, args.runs, args.max_seconds)
        elif args.mode == "eval":
            x, y = load_eval_data(args.data)
            result, logits = evaluate(read_model(args.model), x, y, args.threads)
            if args.logits:
                save_npz(args.logits, logits=logits)
        else:
            outs = run_model(read_model(args.model), _load_inputs(args.inputs), args.threads)
            save_npz(args.outputs, **{f"output_{i}": o for i, o in enumerate(outs)})
            result = {"outputs": len(outs), "samples": int(len(outs[0])) if outs else 0}
    except DeviceError as e:
        print(json.dumps({"error": str(e)}))
        return 2
    except Exception as e:  # noqa: BLE001 - report anything else as one line too
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
