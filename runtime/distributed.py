"""Data-parallel learning on ``torch.distributed``: one learner process per GPU (or per CPU rank).

Every rank holds the whole model and samples its own batch from the replay it holds. After each
backward pass the gradients of the optimiser's parameters are averaged over the ranks (one flat
all-reduce per optimiser step: actor, critic and temperature each), so every rank takes the same
optimiser step from the same weights, and parameters, target networks and optimiser states stay
bit-identical. Rank 0 alone publishes weights and writes checkpoints.

Started by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in the environment) each process joins the group: NCCL on GPU ``LOCAL_RANK``
when CUDA is there, Gloo on the CPU otherwise. Started as a plain process it is rank 0 of a
world of one and no process group is made.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from limbic.runtime.ports import free_port

DEVICES = ("auto", "cpu", "cuda")


class DistributedError(RuntimeError):
    """The process group cannot start as configured, or the ranks have drifted apart."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the data-parallel group and which device it learns on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    """``nccl`` or ``gloo`` while a process group is up; None for a single process."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that publishes weights, writes checkpoints and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when there is a process group to talk to."""
        return self.backend is not None

    def average_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Replace each parameter's gradient by its mean over the ranks (a no-op alone).

        A parameter without a gradient counts as a zero gradient, so every rank reduces
        buffers of the same layout whatever its batch touched.
        """
        if not self.distributed:
            return
        params = [p for p in params if p.requires_grad]
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in params:
            by_dtype.setdefault(p.dtype, []).append(p)
        for group in by_dtype.values():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in group]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(self.world_size)
            offset = 0
            for p in group:
                n = p.numel()
                p.grad = flat[offset : offset + n].view_as(p)
                offset += n

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over the ranks (float64; the values themselves alone)."""
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def broadcast_module(self, module: nn.Module) -> None:
        """Overwrite every parameter and buffer of ``module`` with rank 0's."""
        if not self.distributed:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)

    def broadcast_generator(self, generator: torch.Generator) -> None:
        """Give ``generator`` rank 0's state."""
        if not self.distributed:
            return
        state = generator.get_state().to(self.device)
        dist.broadcast(state, src=0)
        generator.set_state(state.cpu())

    def check_in_sync(self, module: nn.Module, what: str = "model") -> None:
        """Raise :class:`DistributedError` unless every rank holds bit-identical parameters and buffers.

        Compares a bit-level fingerprint of each tensor (one small all-gather), so a single
        flipped bit on one rank is caught before rank 0 writes a checkpoint for everyone.
        """
        if not self.distributed:
            return
        names = [n for n, _ in module.named_parameters()] + [n for n, _ in module.named_buffers()]
        tensors = [*module.parameters(), *module.buffers()]
        mine = torch.stack([_fingerprint(t) for t in tensors]).to(self.device)
        everyone = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(everyone, mine)
        for r, theirs in enumerate(everyone):
            differ = (theirs != everyone[0]).nonzero().flatten().tolist()
            if differ:
                shown = ", ".join(names[i] for i in differ[:5])
                raise DistributedError(
                    f"{what} differs between rank 0 and rank {r} in {len(differ)} tensors "
                    f"({shown}{', ...' if len(differ) > 5 else ''}); the ranks no longer take "
                    "the same steps (different batch sizes or update counts per rank?)"
                )

    def barrier(self) -> None:
        """Wait for every rank (a no-op alone)."""
        if self.distributed:
            dist.barrier()


def _fingerprint(t: torch.Tensor) -> torch.Tensor:
    """An int64 checksum of a tensor's bits, position-weighted so swapped elements count."""
    x = t.detach().contiguous().reshape(-1)
    bits = x.view(torch.int32) if x.element_size() == 4 else x.view(torch.uint8)
    bits = bits.to(torch.int64)
    weights = torch.arange(bits.numel(), device=bits.device, dtype=torch.int64) % 65521 + 1
    return (bits * weights).sum()


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise DistributedError(f"environment variable {name} is not set (start with torchrun)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer") from None


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto``: GPU ``local_rank`` when CUDA is there, else the CPU; ``cpu``; ``cuda`` (must exist)."""
    if device not in DEVICES:
        raise DistributedError(f"device {device!r} is not one of {list(DEVICES)}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DistributedError("device 'cuda' asked for, but torch sees no CUDA device")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DistributedError(
            f"LOCAL_RANK={local_rank} but this machine has {count} CUDA devices; "
            f"start at most {count} processes per node (torchrun --nproc-per-node {count})"
        )
    return torch.device("cuda", local_rank)


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously; a no-op on the CPU).

    Call it before reading a clock around GPU work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a group's ``MASTER_PORT`` on one machine)."""
    return free_port("127.0.0.1")


def set_local_rank_env(rank: int, world: int, port: int) -> None:
    """What torchrun sets for rank ``rank`` of a ``world``-process group on this machine (loopback)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Join the torchrun group described by the environment, or stand alone without one.

    A world of one (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``) makes no process group. The
    backend follows the device: NCCL for CUDA, Gloo for the CPU. ``timeout_s`` bounds every
    collective (a rank that dies leaves the others waiting at most this long).
    """
    world = _env_int("WORLD_SIZE", 1)
    if world < 1:
        raise DistributedError(f"WORLD_SIZE={world} must be >= 1")
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} is outside [0, WORLD_SIZE={world})")
    dev = pick_device(device, local_rank)
    if world == 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistContext(0, 1, local_rank, dev, None)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise DistributedError(
                f"WORLD_SIZE={world} but {name} is not set (start with torchrun)"
            )
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
            **({"device_id": dev} if dev.type == "cuda" else {}),
        )
    return DistContext(rank, world, local_rank, dev, backend)


def shutdown(ctx: DistContext, wait_s: float = 30.0) -> None:
    """Leave the process group (if this process made one).

    Gloo ranks first meet at a barrier (at most ``wait_s``): a rank that tears its connections
    down while a peer is still reading from them can make that peer abort at exit.
    """
    if ctx.distributed and dist.is_initialized():
        if ctx.backend == "gloo":
            try:
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=wait_s))
            except RuntimeError:
                pass  # a peer is gone or late: leave anyway
        dist.destroy_process_group()


def rank_rng(seed: int, ctx: DistContext) -> np.random.Generator:
    """A numpy RNG of its own per rank; rank 0 draws the same stream as a single process."""
    return np.random.default_rng(seed if ctx.rank == 0 else [seed, ctx.rank])
