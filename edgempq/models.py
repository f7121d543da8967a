"""Load a model from a spec: `zoo:NAME[?key=value&...]`, `path/to/file.py:factory` or
`package.module:factory`, with optional weights loaded safely (`weights_only=True`).

Loading a factory from a file or module executes that code, as importing it would."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelError
from .zoo import ZOO


@dataclass
class LoadedModel:
    """A model ready for tracing: the module (eval mode), what it expects and its fingerprint."""

    module: nn.Module
    spec: str
    input_shape: tuple[int, ...] | None  # one sample (C, H, W), None if unknown
    num_classes: int | None
    dataset: str | None  # the built-in dataset the model is meant for, if any
    model_hash: str
    task: str = "classify"  # what it is for (edgempq.tasks), decided when data is fitted to it

    @property
    def arch_hash(self) -> str:
        """Fingerprint of architecture and input shape, not of the weights: what a latency profile is of."""
        return arch_hash(self.module, self.input_shape)


MAX_SAMPLE_VALUES = 1 << 26  # one sample's values: refused before anything is allocated past this


def parse_shape(text: str) -> tuple[int, ...]:
    """'3x224x224' or '3,224,224' -> (3, 224, 224)."""
    try:
        dims = tuple(int(v) for v in text.replace(",", "x").split("x"))
    except ValueError:
        dims = ()
    if not dims or any(d <= 0 for d in dims):
        raise ModelError(f"input shape {text[:40]!r} is not valid; write it as CxHxW, e.g. 3x224x224")
    values = math.prod(dims)
    if values > MAX_SAMPLE_VALUES:
        size = (f"{values:,} values a sample ({values * 4 / 2**30:.1f} GiB as float32)" if values < 10**15
                else "more than 10^15 values a sample")
        raise ModelError(f"input shape {text[:40]!r} is {size}, past the {MAX_SAMPLE_VALUES:,} edgempq allocates "
                         "(3x4096x4096 fits); check the shape")
    return dims


def load_model(spec: str, weights: str | Path | None = None,
               input_shape: tuple[int, ...] | None = None) -> LoadedModel:
    """Build the model named by `spec`, load `weights` if given, return it in eval mode, its
    nn.MultiheadAttention modules rewritten as separate projections (see `attention`)."""
    from .attention import unfused

    if spec.startswith("zoo:"):
        module, shape, classes, dataset = _from_zoo(spec[4:])
    else:
        module, classes, dataset = _from_factory(spec), None, None
        declared = getattr(module, "input_shape", None)
        shape = tuple(int(d) for d in declared) if declared is not None else None
    module = unfused(module)  # before the weights: it loads MultiheadAttention's names and its own
    if weights is not None:
        _load_weights(module, Path(weights))
    module.eval()
    return LoadedModel(module, spec, input_shape or shape, classes, dataset, model_hash(module))


def _from_zoo(rest: str) -> tuple[nn.Module, tuple[int, ...], int, str | None]:
    name, _, query = rest.partition("?")
    entry = ZOO.get(name)
    if entry is None:
        raise ModelError(f"unknown zoo model {name!r}; choose one of: {', '.join(sorted(ZOO))}")
    opts: dict[str, Any] = {"num_classes": entry.num_classes, "in_channels": entry.input_shape[0],
                            **entry.defaults}
    size = entry.input_shape[1]
    for item in filter(None, query.split("&")):
        key, _, val = item.partition("=")
        if key == "input_size":
            size = _int_opt(name, key, val)
        elif key in opts:
            opts[key] = _float_opt(name, key, val) if isinstance(opts[key], float) else _int_opt(name, key, val)
        else:
            valid = ", ".join(["input_size", *opts])
            raise ModelError(f"zoo model {name!r} has no option {key!r}; its options are: {valid}")
    shape = (opts["in_channels"], size, size)
    parse_shape("x".join(map(str, shape)))  # the sample's size, refused before anything is built
    _check_fits(name, entry.build, opts)
    with torch.random.fork_rng(devices=[]):  # the same initial weights in every run and every torchrun rank
        torch.manual_seed(0)
        module = entry.build(**opts)
    return module, shape, opts["num_classes"], entry.dataset


def _check_fits(name: str, build: Any, opts: dict[str, Any]) -> None:
    """The zoo model's weights counted on the meta device (nothing allocated) and refused when
    they need more than half the memory this machine has free (`num_classes=10^9` would be 4 TB)."""
    import psutil

    with torch.device("meta"):
        n = sum(p.numel() for p in build(**opts).parameters())
    free = psutil.virtual_memory().available
    if 4 * n > free // 2:
        raise ModelError(f"zoo model {name!r} with these options has {n:,} weights ({4 * n / 2**30:.1f} GiB), more "
                         f"than half the {free / 2**30:.1f} GiB this machine has free; use smaller options")


def _int_opt(name: str, key: str, val: str) -> int:
    try:
        v = int(val)
    except ValueError:
        v = 0
    if v <= 0:
        raise ModelError(f"zoo model {name!r} option {key} must be a positive integer, not {val[:40]!r}")
    return v


def _float_opt(name: str, key: str, val: str) -> float:
    try:
        v = float(val)
    except ValueError:
        v = 0.0
    if not 0 < v < float("inf"):
        raise ModelError(f"zoo model {name!r} option {key} must be a positive number, not {val[:40]!r}")
    return v


def names_a_file(target: str) -> bool:
    """Whether the part of a spec before its factory is a Python file (else a module name)."""
    return target.endswith(".py") or "/" in target or Path(target).exists()


def _from_factory(spec: str) -> nn.Module:
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ModelError(
            f"model spec {spec!r} is not understood; write zoo:NAME, path/to/file.py:factory "
            "or package.module:factory"
        )
    if names_a_file(target):
        mod = _import_file(Path(target))
    else:
        try:
            mod = importlib.import_module(target)
        except ImportError as e:
            raise ModelError(f"cannot import module {target!r} ({e}); check the spec and PYTHONPATH") from None
        except (Exception, SystemExit) as e:  # noqa: BLE001 - user code may raise anything on import
            raise ModelError(f"module {target!r} failed to import ({_what(e)})") from None
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise ModelError(f"{target} has no callable {attr!r}; name the function that builds the model")
    try:
        model = factory()
    except (Exception, SystemExit) as e:  # noqa: BLE001 - user code may raise anything, or exit
        raise ModelError(f"the factory {spec} raised {_what(e)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"the factory {spec} returned a {type(model).__name__}, not a torch.nn.Module")
    if getattr(factory, "input_shape", None) is not None and not hasattr(model, "input_shape"):
        model.input_shape = tuple(factory.input_shape)
    return model


def _what(e: BaseException) -> str:
    """What user code raised, in a few words; `sys.exit()` in a model file is named as such."""
    if isinstance(e, SystemExit):
        return f"SystemExit: it called sys.exit({e.code!r})"
    return f"{type(e).__name__}: {e}"


def _import_file(path: Path) -> Any:
    if path.exists() and not path.is_file():
        raise ModelError(f"model file {path} is not a file (a folder?); name the Python file that builds the model")
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist; check the path")
    name = "edgempq_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"model file {path} cannot be imported; it must be a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # the file may import its siblings
    try:
        spec.loader.exec_module(mod)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - user code may raise anything, or exit
        sys.modules.pop(name, None)
        raise ModelError(f"model file {path} failed to import ({_what(e)})") from None
    finally:
        sys.path.remove(folder)
    return mod


def _load_weights(module: nn.Module, path: Path) -> None:
    if path.exists() and not path.is_file():
        raise ModelError(f"weights file {path} is not a file (a folder?); give the state_dict file")
    if not path.is_file():
        from .files import missing

        raise ModelError(f"weights file {path} {missing(path)}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise ModelError(f"weights file {path} cannot be read ({e.strerror or e}); check its permissions") from None
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):
            raise ModelError(f"weights file {path} is not a PyTorch weights file (it cannot be unpickled)") from None
        raise ModelError(
            f"weights file {path} holds pickled objects that cannot be loaded safely (a whole saved "
            "module?); save model.state_dict() with torch.save and pass that file"
        ) from None
    except Exception:  # noqa: BLE001 - corrupt or foreign files raise many types
        raise ModelError(f"weights file {path} is not a PyTorch weights file (it is damaged or in another format); "
                         "save model.state_dict() with torch.save and pass that file") from None
    state = _state_dict_of(obj, path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        first = first if len(first) <= 200 else first[:200] + " ..."  # a foreign model lists every key
        raise ModelError(f"weights file {path} does not fit the model ({first}); give the weights of this "
                         "model") from None


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    # Checkpoints often wrap the state_dict; take the usual keys.
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"weights file {path} does not hold a state_dict (a dict of tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def arch_hash(module: nn.Module, input_shape: tuple[int, ...] | None) -> str:
    """Fingerprint of the modules, the parameters' names, shapes and dtypes, and the input shape:
    what sets latency and RAM, so a profile stays valid when only the weights change."""
    h = hashlib.sha256(repr(module).encode())
    for k, v in module.state_dict().items():
        h.update(f"{k}{tuple(v.shape)}{v.dtype}".encode())
    h.update(repr(tuple(input_shape) if input_shape is not None else None).encode())
    return h.hexdigest()[:16]


def model_hash(module: nn.Module) -> str:
    """Fingerprint of architecture and weights: later stages refuse results of another model."""
    h = hashlib.sha256(repr(module).encode())
    for k, v in module.state_dict().items():
        h.update(f"{k}{tuple(v.shape)}{v.dtype}".encode())
        h.update(v.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
