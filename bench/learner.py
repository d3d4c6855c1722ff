"""``limbic-bench learner``: learner updates per second and the share spent building batches.

A replay of the default policy's shape (two views of 4x4 compact tokens, SO-101 state and
action) is filled with synthetic episodes in all three partitions. Each timed update draws a
mixed batch of 256 (sampling, shaped-reward assembly, conversion to tensors) and runs one
RLPD update; beside it, in the same run, the same updates on one pre-built batch are the
baseline. The last line is ``learner_updates_per_s=... baseline_updates_per_s=... sample_share=...``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from limbic.policy.rlpd import AgentConfig, ObsShape, RLPDAgent
from limbic.runtime.distributed import DEVICES, pick_device, synchronize
from limbic.runtime.replay import ReplayConfig, ReplayMix, RewardConfig


def filled_replay(shape: ObsShape, episodes: int, length: int, seed: int) -> ReplayMix:
    """A replay with ``episodes`` synthetic episodes in each partition."""
    rng = np.random.default_rng(seed)
    token_shape = (shape.n_views, shape.n_tokens, shape.token_dim)
    replay = ReplayMix(
        ReplayConfig(),
        token_shape,
        shape.state_dim,
        shape.action_dim,
        shape.lang_dim,
        chunk_len=shape.chunk_len,
    )
    lang_id = replay.instruction_id("put the red cube in the bowl", rng.normal(size=shape.lang_dim))
    for source in ("online", "demo", "intervention"):
        for _ in range(episodes):
            replay.add_episode(
                source,
                tokens=rng.normal(size=(length + 1, *token_shape)).astype(np.float16),
                state=rng.normal(size=(length + 1, shape.state_dim)).astype(np.float32),
                lang_id=lang_id,
                action=rng.uniform(-1, 1, size=(length, shape.action_dim)).astype(np.float32),
                reward=(np.arange(length) == length - 1).astype(np.float32),
                terminal=np.arange(length) == length - 1,
                phi=np.linspace(0, 1, length + 1, dtype=np.float32),
            )
    return replay


def main(argv: list[str] | None = None) -> int:
    """Time sampled updates beside fixed-batch updates; print the figures."""
    p = argparse.ArgumentParser(prog="limbic-bench learner", description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--updates", type=int, default=60)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--device", default="cpu", choices=DEVICES, help="where updates run (auto: CUDA if there)"
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)

    def sync() -> None:  # GPU work is asynchronous: a timer must wait for it
        synchronize(device)

    shape = ObsShape(n_views=2, n_tokens=16, token_dim=32, state_dim=6, lang_dim=384, action_dim=4)
    agent = RLPDAgent(AgentConfig(critic_warmup=0), shape).to(device)
    replay = filled_replay(shape, episodes=100, length=80, seed=0)
    rng = np.random.default_rng(0)
    reward, gamma = RewardConfig(), agent.cfg.gamma

    def batch() -> dict[str, torch.Tensor]:
        return {
            k: torch.from_numpy(v).to(device, non_blocking=True)
            for k, v in replay.sample(args.batch_size, rng, reward, gamma).items()
        }

    fixed = batch()
    for _ in range(5):  # warm-up
        agent.update(batch())
    sample_s = update_s = base_s = 0.0
    for _ in range(args.updates):  # alternate so load changes hit both alike
        sync()
        t0 = time.perf_counter()
        b = batch()
        sync()
        t1 = time.perf_counter()
        agent.update(b)
        sync()
        t2 = time.perf_counter()
        agent.update(fixed)
        sync()
        t3 = time.perf_counter()
        sample_s += t1 - t0
        update_s += t2 - t1
        base_s += t3 - t2
    n = args.updates
    rate = n / (sample_s + update_s)
    base_rate = n / base_s
    share = sample_s / (sample_s + update_s)
    print(
        f"# learner: batch {args.batch_size}, tokens {shape.n_views}x{shape.n_tokens}x{shape.token_dim}, "
        f"{agent.cfg.n_q} Q heads, {torch.get_num_threads()} torch threads, {device}, replay {len(replay)} transitions"
    )
    print(
        f"sampled batches : {rate:7.1f} updates/s  (sampling {sample_s / n * 1e3:.2f} ms, update {update_s / n * 1e3:.2f} ms)"
    )
    print(f"one fixed batch : {base_rate:7.1f} updates/s  (baseline: the update alone)")
    print(
        f"learner_updates_per_s={rate:.1f} baseline_updates_per_s={base_rate:.1f} sample_share={share:.3f}"
    )
    return 0
