"""The real VLA policy and progress critic served by the inference server, end to end."""

import numpy as np
import torch
from serving import running_server

from limbic.launch.components import RobotConfig
from limbic.policy.rlpd import AgentConfig
from limbic.policy.vla import PolicyConfig, VLAPolicy
from limbic.runtime.backends import EncoderConfig, ModelConfig, build_runner
from limbic.runtime.client import InferenceClient
from limbic.runtime.learn import LearnConfig, Learner
from limbic.sim.env import SimConfig

MINILM = EncoderConfig(target="limbic.policy.encoders.language:SentenceInstructionEncoder", args={})


def test_a_trained_policy_checkpoint_is_served_with_its_own_actions(tmp_path):
    cfg = LearnConfig(
        robot=RobotConfig(sim=SimConfig(task="reach")),
        policy=PolicyConfig(
            agent=AgentConfig(
                d_model=32,
                n_queries=2,
                feature_dim=64,
                hidden=64,
                n_q=2,
                critic_warmup=0,
                bootstrap_from_bc=True,
            )
        ),
        demos=2,
        batch_size=16,
        bc_pretrain_steps=5,
        out_dir=str(tmp_path),
        progress=False,
    )
    learner = Learner(cfg)
    try:
        learner.collect_demos()
        learner.pretrain(5)
        for _ in range(3):  # RL updates: the BC reference is frozen and proposes beside the actor
            learner.policy.agent.update(learner._batch())
        assert bool(learner.policy.agent.ref_active)
        path = tmp_path / "policy.pt"
        learner.policy.save(path)
        assert bool(VLAPolicy.load(path).agent.ref_active)  # the checkpoint keeps the reference
        runner = build_runner(
            ModelConfig(
                target="limbic.policy.vla:VLAPolicy.load",
                args={"path": str(path)},
                instruction_encoder=MINILM,
            ),
            "policy",
            "torch",
            device="cpu",
        )
        obs = learner.env.reset(seed=11)
        images = torch.from_numpy(np.stack([obs.images[v] for v in learner.policy.views]))[None]
        local = learner.policy(
            images, torch.from_numpy(obs.state)[None], learner.lang(obs.instruction)
        )[0].numpy()
        with (
            running_server(runner) as server,
            InferenceClient(server.endpoint, timeout_s=30) as client,
        ):
            reply = client.act(obs)
        assert reply.actions.shape == (1, 4)
        np.testing.assert_allclose(reply.actions, local, atol=1e-5)
        learner.env.action_spec.validate(reply.actions[0])
    finally:
        learner.close()


def test_a_trained_progress_critic_is_served(tmp_path):
    from limbic.critic.model import CriticModelConfig, ProgressCritic

    critic = ProgressCritic(
        CriticModelConfig(backbone="small_cnn", image_hw=(64, 64), d_model=32, pool_heads=2)
    )
    path = tmp_path / "critic.pt"
    torch.save({"critic": critic.export_state()}, path)
    runner = build_runner(
        ModelConfig(
            target="limbic.critic.model:ProgressCritic.from_checkpoint",
            args={"path": str(path)},
            instruction_encoder=MINILM,
        ),
        "critic",
        "torch",
        device="cpu",
    )
    rng = np.random.default_rng(0)
    frames = [
        {v: rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for v in ("front", "wrist")}
        for _ in range(4)
    ]
    with (
        running_server(None, critic=runner) as server,
        InferenceClient(server.endpoint, timeout_s=30) as client,
    ):
        reply = client.critic(frames, "put the red cube in the bowl")
    assert reply.progress.shape == reply.done_prob.shape == reply.value.shape == (3,)
    assert np.all(np.abs(reply.progress) <= 1.0) and np.all(
        (reply.done_prob >= 0) & (reply.done_prob <= 1)
    )
    local = critic.predict(
        np.stack([np.stack([f[v] for v in ("front", "wrist")]) for f in frames[:1]]),
        np.stack([np.stack([f[v] for v in ("front", "wrist")]) for f in frames[1:2]]),
        ["put the red cube in the bowl"],
    )
    np.testing.assert_allclose(reply.progress[0], np.asarray(local[0]).reshape(-1)[0], atol=1e-4)
