"""Typed errors: every failure a user can cause is an EdgeMPQError whose message names the thing
and the fix. The CLI prints the message alone and exits 1."""

from __future__ import annotations


class EdgeMPQError(Exception):
    """Base of every error a user can cause; the message is one clear sentence."""


class ConfigError(EdgeMPQError):
    """A malformed or invalid value: a JSON/TOML file, a budget, a precision, a policy."""


class ModelError(EdgeMPQError):
    """A model spec, factory, weights file or model structure that cannot be used."""


class DataError(EdgeMPQError):
    """A dataset that is missing, empty, single-class, non-finite or of the wrong shape."""


class ConversionError(EdgeMPQError):
    """The converter or quantizer failed; the message names the layer."""


class DeviceError(EdgeMPQError):
    """A device that is unreachable or lacks a runtime."""


class InfeasibleError(EdgeMPQError):
    """A budget no choice of precisions can meet; the message gives the smallest achievable."""


class SolverTimeoutError(InfeasibleError):
    """The solver found no policy in its time limit: not a proof that none exists."""
