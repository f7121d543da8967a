"""Running under torchrun: which process this is, and the few collective steps the heavy stages
need to split their work and agree on one result.

`torchrun --nproc_per_node=N edgempq ...` (or `python -m torch.distributed.run`) starts N copies
of the command with RANK, WORLD_SIZE and LOCAL_RANK set; `start` joins them into one process
group (gloo on CPU, nccl when the processes use CUDA). A stage splits independent work with
`share` (each rank takes every N-th item) and puts the pieces together with `gather`, so every
rank ends with the same result, equal to one process's. Only rank 0 prints and writes files
(`is_main`). Without torchrun every function is the one-process identity: nothing to import,
nothing to wait for."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the command's processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0


def world() -> World:
    """The world torchrun describes in the environment (one process without it)."""
    try:
        return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them); "
                          "unset them to run one process") from None


def is_main() -> bool:
    """Whether this process prints and writes: rank 0, or the only process (a stray RANK without
    WORLD_SIZE must not silence a lone run)."""
    w = world()
    return w.rank == 0 or w.size <= 1


def device() -> str:
    """Where this process's heavy stages compute (see edgempq.compute): EDGEMPQ_DEVICE (cpu,
    cuda, cuda:N; `--compute` sets it), else the process's GPU when the machine has one, else the
    CPU. Under torchrun, `cuda` is each rank's local GPU (one GPU a rank; a numbered GPU is for
    one process, CUDA_VISIBLE_DEVICES chooses a node's)."""
    import re

    import torch

    chosen = os.environ.get("EDGEMPQ_DEVICE", "").strip() or ("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d{1,3})?", chosen):
        raise ConfigError(f"EDGEMPQ_DEVICE (or --compute) is {chosen!r}; give cpu, cuda or cuda:N")
    if chosen == "cpu":
        return chosen
    if not torch.cuda.is_available():
        raise ConfigError(f"EDGEMPQ_DEVICE (or --compute) is {chosen} but this machine has no CUDA device; give cpu")
    count, w = torch.cuda.device_count(), world()
    if w.size > 1:
        if chosen != "cuda":
            raise ConfigError(f"EDGEMPQ_DEVICE (or --compute) is {chosen}, but under torchrun each rank takes its "
                              "local GPU: give cuda (and CUDA_VISIBLE_DEVICES to choose a node's GPUs)")
        if w.local_rank >= count:
            raise ConfigError(f"torchrun started more processes on this node than its {count} CUDA device(s): "
                              f"give --nproc_per_node={count} or fewer, or --compute cpu")
        return f"cuda:{w.local_rank}"
    if ":" in chosen and int(chosen.split(":")[1]) >= count:
        raise ConfigError(f"EDGEMPQ_DEVICE (or --compute) is {chosen} but this machine has {count} CUDA "
                          "device(s), numbered from 0")
    return chosen if ":" in chosen else "cuda:0"


def start() -> World:
    """Join torchrun's process group once (gloo on CPU, nccl on CUDA); a no-op for one process."""
    w = world()
    if w.size <= 1:
        return w
    import torch.distributed as dist

    if not dist.is_initialized():
        import atexit

        backend = "gloo"
        if device().startswith("cuda"):  # CUDA tensors through nccl; what stays on the CPU through gloo
            import torch

            torch.cuda.set_device(torch.device(device()))
            backend = "cpu:gloo,cuda:nccl"
        from datetime import timedelta

        # a rank standing by waits at the final barrier while rank 0 converts and times the
        # artifact, which can take long; a rank that fails ends the whole group through torchrun
        dist.init_process_group(backend, timeout=timedelta(hours=6))
        atexit.register(_leave)
    return w


class Standby(Exception):  # noqa: N818 - not an error: this rank's part of the command is done
    """Raised on a rank whose share of the command is done while rank 0 finishes it alone (the
    artifact after deploy's data-parallel QAT); the command exits 0 on that rank once rank 0 is
    done."""


def stand_by() -> None:
    """From here rank 0 goes on alone: every other rank waits for the end of the command (so
    that what rank 0 times runs on an otherwise quiet machine)."""
    if active() and not is_main():
        raise Standby


def finish() -> None:
    """After a command that succeeded on this rank: wait for the other ranks, then leave the
    group (gloo's threads abort the process now and then when a peer leaves first)."""
    if active():
        import torch.distributed as dist

        dist.barrier()
        _leave()


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """Whether several processes share this command's work now."""
    if world().size <= 1:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def ranks() -> int:
    """How many processes share the work now (1 without torchrun)."""
    return world().size if active() else 1


def share(n: int) -> range:
    """The indices of `n` independent items this rank takes: every size-th from its rank."""
    return range(world().rank if active() else 0, n, ranks())


def gather(mine: T) -> list[T]:
    """Every rank's `mine`, in rank order, on every rank (picklable values)."""
    if not active():
        return [mine]
    import torch.distributed as dist

    out: list[Any] = [None] * world().size
    dist.all_gather_object(out, mine)
    return out


def gather_items(n: int, mine: dict[int, T]) -> list[T]:
    """The `n` items split by `share`, each rank's `mine` (index -> value), back in index order."""
    merged: dict[int, T] = {}
    for part in gather(mine):
        merged.update(part)
    missing = sorted(set(range(n)) - set(merged))
    if missing:
        raise RuntimeError(f"items {missing[:5]} were computed by no rank")  # a bug, not a user's error
    return [merged[i] for i in range(n)]


def map_shared(items: Sequence[Any], fn: Any) -> list[Any]:
    """`fn(item)` for every item, split over the ranks and gathered in order."""
    return gather_items(len(items), {i: fn(items[i]) for i in share(len(items))})


def share_groups(sizes: dict[Any, int]) -> set[Any]:
    """The groups of work (key -> its number of items) this rank takes whole (see `balance`)."""
    return balance(sizes, ranks())[world().rank if active() else 0]


def balance(sizes: dict[Any, float], parts: int) -> list[set[Any]]:
    """Groups of work (key -> its size) dealt whole into `parts` shares: the largest first, each
    to the share with the least work so far; the same deal wherever it is computed."""
    load, shares = [0.0] * parts, [set() for _ in range(parts)]
    for key in sorted(sizes, key=lambda k: (-sizes[k], str(k))):
        r = min(range(parts), key=lambda r: (load[r], r))
        load[r] += sizes[key]
        shares[r].add(key)
    return shares
