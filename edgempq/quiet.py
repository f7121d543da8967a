"""Silence what native code prints: TFLite Micro reports allocations on stderr, TensorFlow logs
CUDA probes at import; neither belongs on a user's terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType


def _libc_fflush() -> None:
    import ctypes

    ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def captured_output(fds: tuple[int, ...] = (2,)) -> Iterator[list[str]]:
    """Capture file descriptors `fds` (C and C++ output included; by default stderr, where
    native libraries log, leaving stdout to progress bars); the text is appended to the
    yielded list when the block ends."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    with tempfile.TemporaryFile() as tmp:
        for fd in fds:
            os.dup2(tmp.fileno(), fd)
        box: list[str] = []
        try:
            yield box
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            _libc_fflush()  # C stdio buffers when not on a terminal
            for fd, old in zip(fds, saved, strict=True):
                os.dup2(old, fd)
                os.close(old)
            tmp.seek(0)
            box.append(tmp.read().decode(errors="replace"))


def quiet_tensorflow_env() -> dict[str, str]:
    """TensorFlow's log level set to errors only, here and for the processes started from here
    (onnx2tf); returns the environment."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return dict(os.environ)


def import_tensorflow() -> ModuleType:
    """`import tensorflow` without its start-up chatter."""
    quiet_tensorflow_env()
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with captured_output():
        import tensorflow as tf
    return tf
