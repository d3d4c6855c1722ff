"""A trainable backbone: the replay keeps frames, batches are randomly shifted, losses train it."""

import copy

import numpy as np
import torch
from test_learning_core import _rl_batch
from torch import nn

from limbic.launch.components import RobotConfig
from limbic.policy.networks import random_shift
from limbic.policy.rlpd import AgentConfig, ObsShape, RLPDAgent
from limbic.policy.vla import PolicyConfig, VLAPolicy
from limbic.runtime.learn import LearnConfig, Learner
from limbic.runtime.replay import ReplayConfig, ReplayMix, RewardConfig
from limbic.sim.env import SimConfig
from limbic.sim.scene import CameraConfig


def test_random_shift_moves_frames_by_whole_pixels_and_repeats_edges():
    frame = torch.arange(16, dtype=torch.float32).view(1, 4, 4, 1)
    frames = frame.repeat(3, 1, 1, 1)
    out = random_shift(frames, 1, torch.tensor([[1, 1], [0, 2], [2, 0]]))
    assert torch.equal(out[0], frame[0])  # offset (pad, pad): the frame itself
    # row offset 0: the top row repeats; column offset 2: one pixel left, the last column repeats
    expected = torch.tensor([[1.0, 2, 3, 3], [1, 2, 3, 3], [5, 6, 7, 7], [9, 10, 11, 11]])
    assert torch.equal(out[1, ..., 0], expected)
    expected = torch.tensor([[4.0, 4, 5, 6], [8, 8, 9, 10], [12, 12, 13, 14], [12, 12, 13, 14]])
    assert torch.equal(out[2, ..., 0], expected)
    # uint8 frames come out as floats in [0, 1]
    pixels = torch.full((1, 4, 4, 3), 255, dtype=torch.uint8)
    assert torch.equal(random_shift(pixels, 2, torch.tensor([[0, 4]])), torch.ones(1, 4, 4, 3))


class TinyFrames(nn.Module):
    """uint8[B, 8, 8, 3] -> tokens [B, 4, 8]: one strided conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images
        return self.conv(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)


def _frames_agent(**cfg) -> tuple[RLPDAgent, TinyFrames]:
    small = dict(d_model=16, n_queries=1, feature_dim=32, hidden=32, n_q=2, q_subset=2)
    agent = RLPDAgent(AgentConfig(**{**small, **cfg}), ObsShape(2, 4, 8, 3, 16, 2), seed=0)
    torch.manual_seed(0)
    frames = TinyFrames()
    agent.attach_frames(frames)
    return agent, frames


def _frames_batch(rows: int = 16) -> dict:
    """The core tests' RL batch with frames where its tokens were, every row human."""
    g = torch.Generator().manual_seed(2)
    return {
        **_rl_batch(rows),
        "tokens": torch.randint(0, 256, (rows, 2, 8, 8, 3), generator=g, dtype=torch.uint8),
        "next_tokens": torch.randint(0, 256, (rows, 2, 8, 8, 3), generator=g, dtype=torch.uint8),
        "human": torch.ones(rows, dtype=torch.bool),
    }


def _weights(m: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def test_bc_and_the_critic_loss_train_the_backbone_from_shifted_frames():
    agent, frames = _frames_agent(critic_warmup=10)
    assert agent.learns_from_frames
    start = _weights(frames)
    agent.bc_update(_frames_batch())
    after_bc = _weights(frames)
    assert not torch.equal(start, after_bc)  # pre-training's BC loss trains it
    actor = _weights(agent.actor)
    agent.update(_frames_batch())  # warm-up: the critic's step only
    assert not torch.equal(after_bc, _weights(frames))  # the critic's loss trains it
    assert torch.equal(actor, _weights(agent.actor))
    # the shift is random per row and drawn from the agent's generator
    batch = _frames_batch(4)["tokens"]
    torch.manual_seed(123)
    with torch.no_grad():
        plain = agent.encode_frames(batch, shift=False)
        shifted = agent.encode_frames(batch)
    assert plain.shape == shifted.shape == (4, 2, 4, 8)
    assert not torch.allclose(plain, shifted)
    unshifted, _ = _frames_agent(image_shift=0)
    unshifted.attach_frames(frames)
    with torch.no_grad():
        torch.testing.assert_close(unshifted.encode_frames(batch), plain)
    # filtered cloning (value weight 0) has no critic step: the actor's loss trains the backbone
    cloning, cloning_frames = _frames_agent(value_weight=0.0)
    before, actor = _weights(cloning_frames), _weights(cloning.actor)
    assert "critic_loss" not in cloning.update(_frames_batch())
    assert not torch.equal(before, _weights(cloning_frames))
    assert not torch.equal(actor, _weights(cloning.actor))


def test_frames_training_is_reproducible_and_checkpointed():
    a, fa = _frames_agent(critic_warmup=0)
    b, fb = _frames_agent(critic_warmup=0)
    for _ in range(3):
        assert a.update(_frames_batch()) == b.update(_frames_batch())
    assert torch.equal(_weights(fa), _weights(fb))
    ckpt = copy.deepcopy(a.checkpoint())  # as written to a file: no tensors shared with ``a``
    assert "frames_opt" in ckpt
    c, fc = _frames_agent(critic_warmup=0)
    fc.load_state_dict(fa.state_dict())
    c.restore(ckpt)
    assert a.update(_frames_batch()) == c.update(_frames_batch())
    assert torch.equal(_weights(fa), _weights(fc))  # the backbone's optimiser state resumed too


def test_replay_keeps_uint8_frames_and_grows_without_losing_them():
    replay = ReplayMix(
        ReplayConfig(online_capacity=2000, human_capacity=10, human_ratio=0.0),
        (1, 4, 4, 3),
        1,
        2,
        3,
        frame_dtype=np.uint8,
    )
    replay.instruction_id("pick", np.ones(3))
    p = replay.partitions["online"]
    assert p.tokens.dtype == np.uint8 and len(p.tokens) < 2 * 2000  # grows on demand
    for i in range(150):  # 150 episodes of 9 frames: past the first allocation
        replay.add_episode(
            "online",
            tokens=np.full((9, 1, 4, 4, 3), i, np.uint8),
            state=np.full((9, 1), i, np.float32),
            lang_id=0,
            action=np.zeros((8, 2), np.float32),
            reward=np.zeros(8, np.float32),
            terminal=np.zeros(8, bool),
            phi=np.zeros(9, np.float32),
        )
    assert len(p.tokens) >= 150 * 9
    np.testing.assert_array_equal(
        p.tokens[p.obs[: p.size], 0, 0, 0, 0], p.state[p.obs[: p.size], 0]
    )
    batch = replay.sample(64, np.random.default_rng(0), RewardConfig(), 0.9)
    assert batch["tokens"].dtype == np.uint8 and batch["tokens"].shape == (64, 1, 4, 4, 3)
    np.testing.assert_array_equal(batch["tokens"][:, 0, 0, 0, 0], batch["state"][:, 0])


def test_a_small_cnn_policy_learns_from_recorded_frames_and_checkpoints_its_backbone(tmp_path):
    agent = AgentConfig(
        d_model=32, n_queries=2, feature_dim=64, hidden=64, n_q=2, q_subset=2, critic_warmup=0
    )
    cfg = LearnConfig(
        robot=RobotConfig(sim=SimConfig(task="reach", camera=CameraConfig(height=64, width=64))),
        policy=PolicyConfig(backbone="small_cnn", image_hw=(64, 64), agent=agent),
        demos=2,
        batch_size=16,
        out_dir=str(tmp_path / "run"),
        videos=0,
        progress=False,
        threads=1,
    )
    learner = Learner(cfg)
    try:
        policy = learner.policy
        assert policy.trains_backbone and policy.frame_shape == (2, 64, 64, 3)
        learner.collect_demos()
        demo = learner.replay.partitions["demo"]
        assert demo.tokens.dtype == np.uint8 and demo.tokens.shape[1:] == (2, 64, 64, 3)
        assert demo.tokens[demo.obs[: demo.size]].std() > 0  # real frames, not zeros
        rows = np.arange(demo.size)
        frames = torch.from_numpy(demo.tokens[demo.obs[rows]])
        state = torch.from_numpy(demo.state[demo.obs[rows]])
        lang = torch.from_numpy(learner.replay.lang_table[demo.lang[demo.obs[rows]]])

        def demo_error() -> float:
            with torch.no_grad():
                tokens = policy.agent.encode_frames(frames, shift=False)
                pred = policy.agent.act(tokens, state, lang, deterministic=True).numpy()
            return float(((pred - demo.action[rows]) ** 2).sum(-1).mean())

        before, start = demo_error(), _weights(policy.backbone)
        learner.pretrain(60)
        assert demo_error() < 0.5 * before
        assert not torch.equal(start, _weights(policy.backbone))
        learner.policy.agent.update(learner._batch())
        path = tmp_path / "policy.pt"
        policy.save(path)
        loaded = VLAPolicy.load(path)  # a fresh small CNN, then the saved weights
        assert torch.equal(_weights(loaded.backbone), _weights(policy.backbone))
        obs = learner.env.reset(seed=3)
        images = torch.from_numpy(np.stack([obs.images[v] for v in policy.views]))[None]
        state1 = torch.from_numpy(obs.state)[None]
        lang1 = learner.lang(obs.instruction)
        torch.testing.assert_close(
            loaded(images, state1, lang1), policy(images, state1, lang1), rtol=0, atol=0
        )
        batch = learner._batch()
        m1 = policy.agent.update({k: v.clone() for k, v in batch.items()})
        m2 = loaded.agent.update({k: v.clone() for k, v in batch.items()})
        assert m1 == m2
        assert torch.equal(_weights(loaded.backbone), _weights(policy.backbone))
    finally:
        learner.close()
