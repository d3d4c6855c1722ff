"""The CUDA paths: torch and ONNX Runtime serving on a GPU, the critic and the learner on it.

The GPU tests are skipped where torch sees no GPU (CI); run on a GPU machine with ``pytest tests/test_gpu.py``.
The ONNX Runtime test also needs an ONNX Runtime with the CUDA provider (onnxruntime-gpu).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from serving import (
    VIEWS,
    encoder,
    frames,
    local_actions,
    make_obs,
    running_server,
    small_critic,
    small_policy,
)

from limbic.runtime.backends import OnnxRunner, TorchRunner
from limbic.runtime.client import InferenceClient
from limbic.runtime.onnx_export import example_inputs, export_onnx
from limbic.runtime.weights import WeightPublisher

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# TF32 convolutions and matmuls (PyTorch's default for cuDNN) round differently from the CPU
ATOL = 2e-3


@gpu
@pytest.mark.parametrize("kind", ["policy", "critic"])
def test_torch_runner_on_cuda_answers_as_on_cpu(kind):
    make = small_policy if kind == "policy" else small_critic
    gpu = TorchRunner(make(), kind, encoder(), device="cuda")
    cpu = TorchRunner(make(), kind, encoder(), device="cpu")
    assert gpu.device.type == "cuda" and next(gpu.active.parameters()).is_cuda
    for batch in (1, 5):
        inputs = example_inputs(make(), kind, batch=batch, seed=batch)
        for g, c in zip(gpu.run(*inputs), cpu.run(*inputs), strict=True):
            assert g.dtype == np.float32 and g.shape == c.shape
            np.testing.assert_allclose(g, c, atol=ATOL, rtol=0)


@gpu
def test_server_on_cuda_serves_batches_and_swaps_weights():
    rng = np.random.default_rng(0)
    policy = TorchRunner(small_policy(), "policy", encoder(), device="cuda")
    critic = TorchRunner(small_critic(), "critic", encoder(), device="cuda")
    new = small_policy(seed=42)
    with (
        running_server(policy, critic) as server,
        InferenceClient(server.endpoint, timeout_s=30) as client,
    ):
        obs = make_obs(rng)
        np.testing.assert_allclose(
            client.act(obs).actions, local_actions(small_policy(), obs), atol=ATOL
        )
        reply = client.critic([frames(rng), frames(rng)], "stack the cubes")
        assert reply.value.shape == (1,) and np.isfinite(reply.value).all()
        with WeightPublisher(server.weights_endpoint) as learner:
            learner.publish("policy", 1, new.state_dict())
        reply = client.act(obs)
        assert reply.policy_version == 1
        np.testing.assert_allclose(reply.actions, local_actions(new, obs), atol=ATOL)
        # the swapped weights live on the GPU too
        assert all(p.is_cuda for p in policy.active.parameters())


@gpu
def test_onnx_runtime_cuda_provider_matches_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"this ONNX Runtime has no CUDA provider ({ort.get_available_providers()})")
    module = small_policy()
    path = export_onnx(module, "policy", tmp_path / "policy.onnx")
    runner = OnnxRunner(path, encoder(), device="cuda")
    assert runner.device == "cuda"
    assert runner.session.get_providers()[0] == "CUDAExecutionProvider"
    for batch in (1, 6):
        inputs = example_inputs(module, "policy", batch=batch, seed=batch)
        with torch.inference_mode():
            expected = module(*(torch.from_numpy(a) for a in inputs)).numpy()
        (got,) = runner.run(*inputs)
        np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_explicit_cuda_without_the_onnx_cuda_provider_is_refused(tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    path = export_onnx(small_policy(), "policy", tmp_path / "policy.onnx")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(RuntimeError, match="no CUDAExecutionProvider"):
        OnnxRunner(path, encoder(), device="cuda")
    # auto falls back to the CPU rather than failing the server
    assert OnnxRunner(path, encoder(), device="auto").device == "cpu"


@gpu
def test_progress_critic_on_cuda_agrees_with_cpu():
    from limbic.critic.model import CriticModelConfig, ProgressCritic

    torch.manual_seed(0)
    cpu = ProgressCritic(CriticModelConfig(views=list(VIEWS), image_hw=[64, 64])).eval()
    gpu = ProgressCritic(CriticModelConfig(views=list(VIEWS), image_hw=[64, 64])).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda()
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 256, (3, len(VIEWS), 64, 64, 3), dtype=torch.uint8, generator=g)
    b = torch.randint(0, 256, (3, len(VIEWS), 64, 64, 3), dtype=torch.uint8, generator=g)
    lang = torch.nn.functional.normalize(torch.randn(3, cpu.lang_dim, generator=g), dim=-1)
    with torch.inference_mode():
        want = cpu(a, b, lang)
        got = gpu(a.cuda(), b.cuda(), lang.cuda())
    for w, o in zip(want, got, strict=True):
        assert o.is_cuda
        np.testing.assert_allclose(o.float().cpu().numpy(), w.float().numpy(), atol=5e-3)


@gpu
def test_rlpd_agent_updates_on_cuda():
    from limbic.bench.learner import filled_replay
    from limbic.policy.rlpd import AgentConfig, ObsShape, RLPDAgent
    from limbic.runtime.replay import RewardConfig

    shape = ObsShape(n_views=2, n_tokens=4, token_dim=8, state_dim=5, lang_dim=16, action_dim=3)
    agent = RLPDAgent(AgentConfig(critic_warmup=0), shape).cuda()
    replay = filled_replay(shape, episodes=4, length=10, seed=0)
    sample = replay.sample(32, np.random.default_rng(0), RewardConfig(), agent.cfg.gamma)
    batch = {k: torch.from_numpy(v).cuda() for k, v in sample.items()}
    before = [p.detach().clone() for p in agent.parameters()]
    metrics = agent.update(batch)
    assert metrics and all(np.isfinite(v) for v in metrics.values())
    moved = [not torch.equal(b, p) for b, p in zip(before, agent.parameters(), strict=True)]
    assert any(moved) and all(p.is_cuda for p in agent.parameters())
