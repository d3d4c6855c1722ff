"""``limbic-bench ddp``: data-parallel learner updates on N ranks beside one process.

Each rank (GPU ``LOCAL_RANK`` with NCCL, or a CPU process with Gloo) runs RLPD updates of the
default policy's shape on a batch of its own (pre-built on the device, so sampling is not
timed), averaging gradients over the ranks after every backward pass. The baselines, measured
in the same run by one process on the same device: updates at the per-rank batch and at the
global batch (N x per-rank). The last line is
``ddp_updates_per_s=... single_updates_per_s=... global_batch_updates_per_s=... rows_per_s_ratio=... allreduce_share=...``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Sequence

import torch
import torch.multiprocessing as mp

from limbic.policy.rlpd import AgentConfig, ObsShape, RLPDAgent
from limbic.runtime.distributed import (
    DistContext,
    free_loopback_port,
    init_distributed,
    pick_device,
    set_local_rank_env,
    shutdown,
    synchronize,
)

SHAPE = ObsShape(n_views=2, n_tokens=16, token_dim=32, state_dim=6, lang_dim=384, action_dim=4)


def make_batch(rows: int, seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A synthetic batch of the default policy's shape."""
    g = torch.Generator().manual_seed(seed)
    s = SHAPE
    b = {
        "tokens": torch.randn(rows, s.n_views, s.n_tokens, s.token_dim, generator=g),
        "next_tokens": torch.randn(rows, s.n_views, s.n_tokens, s.token_dim, generator=g),
        "state": torch.randn(rows, s.state_dim, generator=g),
        "next_state": torch.randn(rows, s.state_dim, generator=g),
        "lang": torch.randn(rows, s.lang_dim, generator=g),
        "action": torch.rand(rows, s.action_dim, generator=g) * 2 - 1,
        "reward": torch.randn(rows, generator=g),
        "terminal": torch.rand(rows, generator=g) < 0.05,
        "human": torch.arange(rows) % 2 == 0,
    }
    return {k: v.to(device) for k, v in b.items()}


class TimedGroup:
    """A data-parallel group that adds up the time its gradient all-reduces take."""

    def __init__(self, ctx: DistContext):
        self.ctx, self.rank, self.world_size = ctx, ctx.rank, ctx.world_size
        self.seconds = 0.0

    def average_gradients(self, params: Iterable[torch.Tensor]) -> None:
        synchronize(self.ctx.device)
        t0 = time.perf_counter()
        self.ctx.average_gradients(params)
        synchronize(self.ctx.device)
        self.seconds += time.perf_counter() - t0

    def sum(self, values: Sequence[float]) -> list[float]:
        return self.ctx.sum(values)

    def broadcast_module(self, module: torch.nn.Module) -> None:
        self.ctx.broadcast_module(module)

    def broadcast_generator(self, generator: torch.Generator) -> None:
        self.ctx.broadcast_generator(generator)


def time_updates(agent: RLPDAgent, batch: dict, updates: int, device: torch.device) -> float:
    """Seconds for ``updates`` updates on ``batch`` after a warm-up."""
    for _ in range(3):
        agent.update(batch)
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(updates):
        agent.update(batch)
    synchronize(device)
    return time.perf_counter() - t0


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, results) -> None:
    set_local_rank_env(rank, world, port)
    torch.set_num_threads(args.threads)
    ctx = init_distributed(args.device)
    try:
        group = TimedGroup(ctx)
        agent = RLPDAgent(AgentConfig(critic_warmup=0), SHAPE).to(ctx.device).data_parallel(group)
        batch = make_batch(args.batch_size, seed=rank, device=ctx.device)
        ctx.barrier()
        seconds = time_updates(agent, batch, args.updates, ctx.device)
        ctx.check_in_sync(agent, "agent")
        # the slowest rank sets the pace
        seconds, reduce_s = (
            max(v) for v in zip(*_gather(ctx, [seconds, group.seconds]), strict=True)
        )
        if ctx.is_main:
            results.put((seconds, reduce_s, ctx.backend, str(ctx.device)))
    finally:
        shutdown(ctx)


def _gather(ctx: DistContext, values: list[float]) -> list[list[float]]:
    import torch.distributed as dist

    mine = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    everyone = [torch.empty_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(everyone, mine)
    return [t.tolist() for t in everyone]


def main(argv: list[str] | None = None) -> int:
    """Time N data-parallel ranks beside one process; print the figures."""
    p = argparse.ArgumentParser(prog="limbic-bench ddp", description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=0, help="ranks (0: the GPUs there are, else 2)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=256, help="rows per rank")
    p.add_argument("--updates", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    ranks = args.ranks or (torch.cuda.device_count() if device.type == "cuda" else 2)

    torch.set_num_threads(args.threads)
    single = {}
    for rows in (args.batch_size, args.batch_size * ranks):
        agent = RLPDAgent(AgentConfig(critic_warmup=0), SHAPE).to(device)
        single[rows] = args.updates / time_updates(
            agent, make_batch(rows, 0, device), args.updates, device
        )

    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.spawn(_rank, args=(ranks, free_loopback_port(), args, results), nprocs=ranks, join=True)
    seconds, reduce_s, backend, where = results.get()
    ddp = args.updates / seconds
    base = single[args.batch_size]
    ratio = ddp * ranks / base  # rows per second, N ranks over one process
    share = reduce_s / seconds
    b = args.batch_size
    print(
        f"# ddp: {ranks} ranks ({backend}, {where.split(':')[0]}), batch {b} per rank, "
        f"{AgentConfig().n_q} Q heads, torch threads per process: {args.threads}"
    )
    rows = [
        (f"one process, batch {b}", base, b, ""),
        (f"one process, batch {b * ranks}", single[b * ranks], b * ranks, ""),
        (f"{ranks} ranks, batch {ranks} x {b}", ddp, b * ranks, f"  (all-reduce {share:.0%})"),
    ]
    for label, rate, n, note in rows:
        print(f"{label:28s}: {rate:7.1f} updates/s {rate * n:9.0f} rows/s{note}")
    print(
        f"ddp_updates_per_s={ddp:.1f} single_updates_per_s={base:.1f} "
        f"global_batch_updates_per_s={single[b * ranks]:.1f} rows_per_s_ratio={ratio:.2f} "
        f"allreduce_share={share:.3f}"
    )
    return 0
