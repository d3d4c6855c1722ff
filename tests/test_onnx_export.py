"""limbic-export and the ONNX Runtime backend: same answers as torch, dynamic batch, hot swap."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from serving import (
    HW,
    LANG,
    VIEWS,
    encoder,
    frames,
    local_actions,
    make_obs,
    running_server,
    small_critic,
    small_policy,
)

from limbic.launch.export import main as export_main
from limbic.runtime.backends import ONNX_META_SPEC, ONNX_META_UNSWAPPABLE, OnnxRunner
from limbic.runtime.client import InferenceClient
from limbic.runtime.onnx_export import example_inputs
from limbic.runtime.weights import WeightPublisher

MODEL_ARGS = [
    f"policy.args.views=[{','.join(VIEWS)}]",
    f"policy.args.image_hw=[{HW[0]},{HW[1]}]",
    "policy.args.state_dim=5",
    "policy.args.action_dim=3",
    f"policy.args.lang_dim={LANG}",
    f"policy.instruction_encoder.args.dim={LANG}",
    f"critic.args.views=[{','.join(VIEWS)}]",
    f"critic.args.image_hw=[{HW[0]},{HW[1]}]",
    f"critic.args.lang_dim={LANG}",
    f"critic.instruction_encoder.args.dim={LANG}",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """policy.onnx and critic.onnx written by the limbic-export entry point (seeds 0 and 1)."""
    out = tmp_path_factory.mktemp("onnx")
    assert export_main([f"out_dir={out}", *MODEL_ARGS]) == 0
    return out


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_onnx_runtime_matches_torch_on_the_same_inputs(exported, batch):
    for kind, module in (("policy", small_policy()), ("critic", small_critic())):
        runner = OnnxRunner(exported / f"{kind}.onnx", encoder(), device="cpu")
        assert runner.kind == kind and runner.spec.views == VIEWS and runner.spec.image_hw == HW
        inputs = example_inputs(module, kind, batch=batch, seed=batch)
        with torch.inference_mode():
            expected = module(*(torch.from_numpy(a) for a in inputs))
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = runner.run(*inputs)
        assert len(got) == len(expected)
        for e, g in zip(expected, got, strict=True):
            assert g.shape == tuple(e.shape) and g.shape[0] == batch
            np.testing.assert_allclose(g, e.numpy(), atol=1e-4, rtol=0)


def test_export_metadata_lists_the_swappable_state(exported):
    meta = {p.key: p.value for p in onnx.load(str(exported / "policy.onnx")).metadata_props}
    assert json.loads(meta[ONNX_META_SPEC])["state_dim"] == 5
    assert json.loads(meta[ONNX_META_UNSWAPPABLE]) == []
    runner = OnnxRunner(exported / "policy.onnx", encoder(), device="cpu")
    assert set(runner.expected_tensors()) == set(small_policy().state_dict())


def test_serving_onnx_models_with_hot_swap(exported):
    rng = np.random.default_rng(0)
    policy = OnnxRunner(exported / "policy.onnx", encoder(), device="cpu")
    critic = OnnxRunner(exported / "critic.onnx", encoder(), device="cpu")
    new = small_policy(seed=42)
    with (
        running_server(policy, critic) as server,
        InferenceClient(server.endpoint, timeout_s=10) as client,
    ):
        assert client.info.backend == "onnx"
        obs = make_obs(rng)
        np.testing.assert_allclose(
            client.act(obs).actions, local_actions(small_policy(), obs), atol=1e-4
        )
        assert client.critic([frames(rng), frames(rng)], "stack").value.shape == (1,)
        with WeightPublisher(server.weights_endpoint) as learner:
            learner.publish("policy", 1, new.state_dict())
        reply = client.act(obs)
        assert reply.policy_version == 1
        np.testing.assert_allclose(reply.actions, local_actions(new, obs), atol=1e-4)
