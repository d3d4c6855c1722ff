"""Data-parallel learning: two Gloo ranks on the CPU keep bit-identical weights, and their update
is the single-process update on the concatenated batch."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from limbic.policy.rlpd import AgentConfig, ObsShape, RLPDAgent
from limbic.policy.vla import VLAPolicy
from limbic.runtime.distributed import (
    DistContext,
    DistributedError,
    free_loopback_port,
    init_distributed,
    pick_device,
    set_local_rank_env,
    shutdown,
)

SHAPE = ObsShape(n_views=2, n_tokens=4, token_dim=8, state_dim=3, lang_dim=6, action_dim=2)
AGENT = AgentConfig(
    d_model=16, n_queries=2, feature_dim=32, hidden=32, n_q=4, q_subset=2, critic_warmup=0
)
ROWS = 8  # per rank
UPDATES = 4


def make_batch(seed: int, rows: int = ROWS) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "tokens": torch.randn(rows, SHAPE.n_views, SHAPE.n_tokens, SHAPE.token_dim, generator=g),
        "state": torch.randn(rows, SHAPE.state_dim, generator=g),
        "lang": torch.randn(rows, SHAPE.lang_dim, generator=g),
        "action": torch.rand(rows, SHAPE.action_dim, generator=g) * 2 - 1,
        "reward": torch.randn(rows, generator=g),
        "terminal": torch.arange(rows) % 4 == 3,
        "next_tokens": torch.randn(
            rows, SHAPE.n_views, SHAPE.n_tokens, SHAPE.token_dim, generator=g
        ),
        "next_state": torch.randn(rows, SHAPE.state_dim, generator=g),
        "human": torch.arange(rows) % 2
        == 0,  # the same human share on every rank, as ReplayMix gives
    }


def batches(rank: int) -> list[dict[str, torch.Tensor]]:
    """Rank ``rank``'s batch for each update: different on every rank and every step."""
    return [make_batch(1000 * step + rank) for step in range(UPDATES)]


def train(agent: RLPDAgent, per_step: list[dict[str, torch.Tensor]]) -> None:
    agent.bc_update(per_step[0])
    for i, b in enumerate(per_step):
        agent.update(b, update_actor=i != 1)


def snapshot(agent: RLPDAgent) -> dict:
    return {
        "model": {k: v.clone() for k, v in agent.state_dict().items()},
        "optim": [
            {k: v.clone() for s in opt.state.values() for k, v in s.items()}
            for opt in (agent.actor_opt, agent.critic_opt, agent.alpha_opt)
        ],
        "generator": agent.generator.get_state(),
    }


def _rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    set_local_rank_env(rank, world, port)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    ctx = init_distributed("cpu", timeout_s=60)
    try:
        assert ctx.backend == "gloo" and ctx.world_size == world and ctx.rank == rank
        # different initial weights and generator on each rank: joining gives everyone rank 0's
        agent = RLPDAgent(AGENT, SHAPE, seed=rank).data_parallel(ctx)
        torch.save(snapshot(agent), f"{out_dir}/init{rank}.pt")
        train(agent, batches(rank))
        ctx.check_in_sync(agent, "agent")
        torch.save(snapshot(agent), f"{out_dir}/rank{rank}.pt")
        if rank == 1:  # a drifted rank is caught
            with torch.no_grad():
                agent.target_critic.w_out.add_(1e-7)
        try:
            ctx.check_in_sync(agent, "agent")
        except DistributedError as e:
            assert "target_critic.w_out" in str(e)
            (open(f"{out_dir}/caught{rank}", "w")).close()
    finally:
        shutdown(ctx)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_rank_main, args=(2, free_loopback_port(), str(out)), nprocs=2, join=True)
    return {
        name: torch.load(out / f"{name}.pt", weights_only=True)
        for name in ("init0", "init1", "rank0", "rank1")
    } | {"caught": sorted(p.name for p in out.glob("caught*"))}


def test_ranks_start_from_rank_zero_and_stay_bit_identical(two_ranks):
    init0, init1, r0, r1 = (two_ranks[k] for k in ("init0", "init1", "rank0", "rank1"))
    own_init = RLPDAgent(AGENT, SHAPE, seed=1).state_dict()
    assert not torch.equal(own_init["actor.net.0.weight"], init0["model"]["actor.net.0.weight"])
    for k in init0["model"]:  # rank 1 built its own weights, then took rank 0's
        assert torch.equal(init0["model"][k], init1["model"][k]), k
    assert torch.equal(init0["generator"], init1["generator"])
    for k in r0["model"]:  # actor, critic, target nets, temperature
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    for o0, o1 in zip(r0["optim"], r1["optim"], strict=True):
        assert o0.keys() == o1.keys() and o0
        for k in o0:
            assert torch.equal(o0[k], o1[k]), k
    assert torch.equal(r0["generator"], r1["generator"])
    # and learning happened: every trained tensor moved, targets included
    for k in ("actor.net.0.weight", "critic.w_out", "target_critic.w_out", "log_alpha"):
        assert not torch.equal(r0["model"][k], init0["model"][k]), k
    # a rank that drifts is reported by both ranks before anyone writes a checkpoint
    assert two_ranks["caught"] == ["caught0", "caught1"]


def test_two_ranks_equal_one_process_on_the_concatenated_batch(two_ranks):
    torch.set_num_threads(1)
    single = RLPDAgent(AGENT, SHAPE, seed=0)
    joined = [
        {k: torch.cat([b0[k], b1[k]]) for k in b0}
        for b0, b1 in zip(batches(0), batches(1), strict=True)
    ]
    train(single, joined)
    ref = snapshot(single)
    r0 = two_ranks["rank0"]
    for k, v in ref["model"].items():
        torch.testing.assert_close(r0["model"][k], v, rtol=0, atol=2e-6, msg=k)
    # the shared generator drew the same head subsets and noise as the single process
    assert torch.equal(r0["generator"], ref["generator"])
    # rank 0 alone (its half of the batch) lands elsewhere: the average really came from both
    alone = RLPDAgent(AGENT, SHAPE, seed=0)
    train(alone, batches(0))
    assert (alone.state_dict()["critic.w_out"] - r0["model"]["critic.w_out"]).abs().max() > 1e-3


def test_single_process_needs_no_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("cpu")
    assert ctx == DistContext() and ctx.is_main and not ctx.distributed
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    ctx.average_gradients([p])  # alone: untouched
    assert torch.equal(p.grad, torch.full((3,), 2.0))
    assert ctx.sum([1.5, 2]) == [1.5, 2.0]


@pytest.mark.parametrize(
    ("env", "device", "message"),
    [
        ({"WORLD_SIZE": "two"}, "cpu", "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "cpu", "RANK=2 is outside [0, WORLD_SIZE=2)"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, "cpu", "MASTER_ADDR is not set"),
        ({}, "tpu", "device 'tpu' is not one of"),
    ],
)
def test_bad_launch_environment_is_named(monkeypatch, env, device, message):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(DistributedError, match=re.escape(message)):
        init_distributed(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(DistributedError, match="no CUDA device"):
        pick_device("cuda")


def run_process_group(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session; on a timeout the whole group (launcher and ranks) is killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{cmd[:6]} ran past {timeout_s} s:\n{out[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


def test_limbic_train_under_torchrun_asks_for_the_in_process_loop(tmp_path):
    """The asynchronous system starts its own processes: N torchrun ranks must not each start one."""
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    res = subprocess.run(
        [sys.executable, "-m", "limbic.launch.train", f"out_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    assert "runtime=inprocess" in res.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_limbic_train_under_torchrun_on_two_cpu_ranks(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_loopback_port()),
        "-m", "limbic.launch.train", "runtime=inprocess",
        "task=reach", "device=cpu", "demos=2", "bc_pretrain_steps=3", "online_episodes=3",
        "utd=0.05", "batch_size=16", "eval_every=2", "eval_episodes=3", "eval_split=train",
        "videos=1", "threads=1", "progress=false", f"out_dir={out}",
        "policy.agent.hidden=32", "policy.agent.feature_dim=32", "policy.agent.d_model=16",
    ]  # fmt: skip
    res = run_process_group(cmd, timeout_s=300)
    assert res.returncode == 0, res.stdout[-3000:]
    # rank 0 alone reports and writes; writing passed the cross-rank weight check
    assert res.stdout.count("on 2 data-parallel ranks") == 1, res.stdout[-3000:]
    curve = json.loads((out / "curve.json").read_text())
    assert [e["episodes"] for e in curve] == [0, 2, 3]  # 3 episodes went round 2 ranks
    assert sorted(p.name for p in out.glob("eval_*.mp4")) == ["eval_00.mp4"]
    policy = VLAPolicy.load(out / "policy.pt")
    assert policy.agent.updates >= 1


@pytest.mark.slow
def test_ddp_benchmark_prints_its_summary_line():
    res = run_process_group(
        [
            sys.executable, "-m", "limbic.launch.bench", "ddp",
            "--ranks", "2", "--device", "cpu", "--updates", "2", "--batch-size", "16",
        ],
        timeout_s=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"ddp_updates_per_s=\d+\.\d single_updates_per_s=\d+\.\d "
        r"global_batch_updates_per_s=\d+\.\d rows_per_s_ratio=\d+\.\d\d allreduce_share=\d\.\d{3}",
        last,
    ), last
    assert "2 ranks (gloo, cpu)" in res.stdout
