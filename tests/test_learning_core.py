"""Losses on hand-computed cases, the networks' contracts, and the replay's mix and rewards."""

import math

import numpy as np
import pytest
import torch

from limbic.launch.config import ConfigError
from limbic.policy.losses import (
    actor_loss,
    bc_loss,
    critic_loss,
    polyak_update,
    td_target,
    temperature_loss,
)
from limbic.policy.networks import (
    MixtureTanhGaussianActor,
    ObservationEncoder,
    QEnsemble,
    TanhGaussianActor,
    grid_coordinates,
    mixture_nll,
    squashed_log_prob,
)
from limbic.runtime.replay import ReplayConfig, ReplayMix, RewardConfig, after_last_handback


def test_td_target_by_hand():
    r = torch.tensor([1.0, 0.0])
    terminal = torch.tensor([True, False])
    next_q = torch.tensor([[5.0, 2.0], [3.0, 4.0]])  # [E=2, B=2]: min per column = [3, 2]
    logp = torch.tensor([0.5, -1.0])
    y = td_target(r, terminal, next_q, logp, alpha=0.1, gamma=0.9)
    # row 0 is terminal: just the reward; row 1: 0 + 0.9 * (2 - 0.1 * -1) = 1.89
    torch.testing.assert_close(y, torch.tensor([1.0, 1.89]))
    # per-row discounts (gamma^n of an n-step window): row 1 spans two steps, 0.81 * 2.1
    y = td_target(r, terminal, next_q, logp, alpha=0.1, gamma=torch.tensor([0.9, 0.81]))
    torch.testing.assert_close(y, torch.tensor([1.0, 1.701]))


def test_critic_actor_temperature_and_bc_losses_by_hand():
    q = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    target = torch.tensor([2.0, 2.0])
    # head 0: ((1-2)^2 + 0) / 2 = 0.5; head 1: (1 + 0) / 2 = 0.5; summed over heads
    assert critic_loss(q, target).item() == pytest.approx(1.0)
    logp = torch.tensor([-1.0, 1.0])
    # mean_e q = [2, 2]; alpha*logp - q = [-0.2 - 2, 0.2 - 2] -> mean -2
    assert actor_loss(q, logp, 0.2).item() == pytest.approx(-2.0)
    log_alpha = torch.tensor(math.log(0.5), requires_grad=True)
    loss = temperature_loss(log_alpha, torch.tensor([-1.0, -3.0]), target_entropy=-1.0)
    # -(log_alpha * mean(logp + H_target)) = -(log 0.5 * mean([-2, -4])) = 3 log 0.5
    assert loss.item() == pytest.approx(3 * math.log(0.5))
    loss.backward()
    assert log_alpha.grad.item() == pytest.approx(
        3.0
    )  # entropy 2 is above the target -1: alpha goes down
    pred = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    human = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    assert bc_loss(pred, human).item() == pytest.approx((1 + 0 + 50) / 3)
    assert bc_loss(pred, human, torch.tensor([True, True, False])).item() == pytest.approx(0.5)
    # per-component weights [2, 0.5]: rows 2*1, 0, 2*25 + 0.5*25
    weights = torch.tensor([2.0, 0.5])
    assert bc_loss(pred, human, weights=weights).item() == pytest.approx((2 + 0 + 62.5) / 3)


def test_polyak_update_moves_target_by_tau():
    online, target = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.fill_(1.0)
        target.weight.fill_(0.0)
    polyak_update(target, online, 0.25)
    torch.testing.assert_close(target.weight, torch.full((1, 2), 0.25))


def test_squashed_log_prob_matches_change_of_variables():
    u, mean, std = (
        torch.tensor([[0.3, -1.2]]),
        torch.tensor([[0.1, -0.5]]),
        torch.tensor([[0.5, 0.8]]),
    )
    normal = torch.distributions.Normal(mean, std)
    expected = (normal.log_prob(u) - torch.log(1 - torch.tanh(u) ** 2)).sum(-1)
    torch.testing.assert_close(squashed_log_prob(u, mean, std), expected)


def test_actor_samples_in_bounds_and_scores_its_own_actions():
    torch.manual_seed(0)
    actor = TanhGaussianActor(feature_dim=8, action_dim=3, chunk_len=2, hidden=16)
    feature = torch.randn(5, 8)
    action, logp = actor(feature)
    assert action.shape == (5, 6) and logp.shape == (5,)
    assert action.abs().max() < 1.0
    torch.testing.assert_close(actor.log_prob(feature, action), logp, atol=2e-3, rtol=1e-3)
    det, _ = actor(feature, deterministic=True)
    torch.testing.assert_close(det, actor(feature, deterministic=True)[0])


def test_q_ensemble_heads_are_independent():
    torch.manual_seed(0)
    q = QEnsemble(feature_dim=4, action_dim=2, n_heads=3, hidden=8)
    f, a = torch.randn(6, 4), torch.randn(6, 2)
    out = q(f, a)
    assert out.shape == (3, 6)
    out[0].sum().backward()  # a loss on head 0 only reaches head 0's parameters
    assert q.weights[0].grad[1:].abs().sum() == 0 and q.weights[0].grad[0].abs().sum() > 0


def test_language_changes_where_the_encoder_looks():
    torch.manual_seed(0)
    enc = ObservationEncoder(
        n_views=2,
        n_tokens=5,
        token_dim=7,
        state_dim=3,
        lang_dim=4,
        d_model=8,
        n_queries=2,
        feature_dim=16,
    )
    with torch.no_grad():
        enc.film.weight.normal_()  # a trained FiLM, not the identity it starts as
    tokens, state = torch.randn(1, 2, 5, 7), torch.randn(1, 3)
    a = enc(tokens, state, torch.tensor([[1.0, 0, 0, 0]]))
    b = enc(tokens, state, torch.tensor([[0, 1.0, 0, 0]]))
    assert a.shape == (1, 16) and not torch.allclose(a, b)
    masked = enc(
        tokens, state, torch.tensor([[1.0, 0, 0, 0]]), view_mask=torch.tensor([[True, False]])
    )
    assert not torch.allclose(a, masked)


def _episode(t: int, value: float, lang_id: int = 0, success: bool = False) -> dict:
    return dict(
        tokens=np.full((t + 1, 2, 3, 4), value, np.float16),
        state=np.full((t + 1, 5), value, np.float32),
        lang_id=lang_id,
        action=np.full((t, 2), value / 10, np.float32),
        reward=np.eye(1, t, t - 1, dtype=np.float32)[0] * float(success),
        terminal=np.eye(1, t, t - 1, dtype=bool)[0] & success,
        phi=np.linspace(0.0, 1.0, t + 1, dtype=np.float32),
    )


def make_replay(**cfg) -> ReplayMix:
    replay = ReplayMix(
        ReplayConfig(online_capacity=500, human_capacity=500, **cfg), (2, 3, 4), 5, 2, 3
    )
    replay.instruction_id("pick", np.ones(3))
    return replay


def test_mix_ratio_holds_over_many_batches():
    replay = make_replay(human_ratio=0.25, intervention_share=0.4)
    for _ in range(10):
        replay.add_episode("online", **_episode(20, 1.0))
        replay.add_episode("demo", **_episode(20, 2.0))
        replay.add_episode("intervention", **_episode(20, 3.0))
    rng = np.random.default_rng(0)
    seen = {1.0: 0, 2.0: 0, 3.0: 0}
    for _ in range(200):
        b = replay.sample(64, rng, RewardConfig(), gamma=0.9)
        values, counts = np.unique(b["state"][:, 0], return_counts=True)
        for v, c in zip(values, counts, strict=True):
            seen[float(v)] += int(c)
        assert b["human"].sum() == 16 and (b["human"] == (b["state"][:, 0] > 1.5)).all()
    total = sum(seen.values())
    assert seen[1.0] / total == pytest.approx(0.75)
    assert seen[3.0] / total == pytest.approx(0.25 * 0.4, abs=0.01)


def test_empty_partitions_give_their_share_away():
    replay = make_replay()
    replay.add_episode("demo", **_episode(10, 2.0))
    b = replay.sample(32, np.random.default_rng(0), RewardConfig(), 0.9)
    assert b["human"].all() and len(b["human"]) == 32
    with pytest.raises(KeyError, match="unknown replay partition"):
        replay.add_episode("rollouts", **_episode(3, 1.0))


def test_reward_terms_switch_and_terminal_potential_is_zero():
    replay = make_replay(human_ratio=0.0)
    replay.add_episode("online", **_episode(4, 1.0, success=True))  # phi = 0, .25, .5, .75, 1
    p = replay.partitions["online"]
    rng = np.random.default_rng(0)
    b = replay.sample(400, rng, RewardConfig(task_weight=1.0, shaping_weight=1.0), gamma=0.9)
    last = b["terminal"]
    # the last step: task reward 1, shaping 0.9 * 0 - 0.75 (phi' counts as 0 at a terminal)
    np.testing.assert_allclose(b["reward"][last], 1.0 - 0.75)
    # a middle step from phi=.25 to .5: 0.9 * 0.5 - 0.25
    mid = np.isclose(b["state"][:, 0], 1.0) & ~last
    assert np.any(np.isclose(b["reward"][mid], 0.9 * 0.5 - 0.25))
    sparse = replay.sample(400, rng, RewardConfig(shaping_weight=0.0), gamma=0.9)
    assert set(np.unique(sparse["reward"])) <= {0.0, 1.0}
    assert p.episodes == 1 and p.size == 4


def test_shared_episode_files_human_steps_as_interventions():
    replay = make_replay(human_ratio=0.5)
    ep = _episode(6, 1.0, success=True)
    ep["state"] = np.arange(7, dtype=np.float32)[:, None].repeat(5, 1)  # frame t has state t
    ep["action"] = np.arange(6, dtype=np.float32)[:, None].repeat(2, 1)  # step t has action t
    human = np.array([False, False, True, True, False, True])
    replay.add_shared_episode(human, **ep)
    online, interv = replay.partitions["online"], replay.partitions["intervention"]
    assert online.size == 3 and interv.size == 3
    for part, steps in ((online, [0, 1, 4]), (interv, [2, 3, 5])):
        np.testing.assert_array_equal(part.action[: part.size, 0], steps)
        np.testing.assert_array_equal(part.state[part.obs[: part.size], 0], steps)
        np.testing.assert_array_equal(part.state[part.next[: part.size], 0], np.add(steps, 1))
    assert interv.terminal[2] and interv.reward[2] == 1.0 and not online.terminal[:3].any()
    b = replay.sample(64, np.random.default_rng(0), RewardConfig(), 0.9)
    assert (b["human"] == np.isin(b["action"][:, 0], [2, 3, 5])).all()
    replay.add_shared_episode(np.zeros(6, bool), **ep)  # nobody stepped in: all online
    assert online.size == 9 and interv.size == 3
    with pytest.raises(ValueError, match="keep must be bool"):
        replay.add_shared_episode(np.zeros(5, bool), **ep)


def test_after_last_handback_marks_the_policys_steps_once_the_human_is_done():
    mask = after_last_handback(np.array([False, True, True, False, True, False, False]))
    np.testing.assert_array_equal(mask, [False] * 5 + [True, True])
    assert not after_last_handback(np.zeros(4, bool)).any()  # nobody stepped in: no tail
    assert not after_last_handback(np.array([False, False, True])).any()  # the human finished


def test_chunked_transitions_are_windows_with_n_step_returns():
    replay = ReplayMix(ReplayConfig(human_ratio=0.0), (2, 3, 4), 5, 2, 3, chunk_len=3)
    replay.instruction_id("pick", np.ones(3))
    ep = _episode(5, 1.0, success=True)  # phi = 0, .2, .4, .6, .8, 1
    ep["state"] = np.arange(6, dtype=np.float32)[:, None].repeat(5, 1)  # frame t has state t
    ep["action"] = np.arange(5, dtype=np.float32)[:, None].repeat(2, 1)  # step t has action t
    replay.add_episode("online", **ep)
    p = replay.partitions["online"]
    assert p.size == 5 and p.action.shape[1] == 6
    # step t's window: actions t, t+1, t+2, the last one repeated past the episode's end
    np.testing.assert_array_equal(
        p.action[:5, ::2], [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4], [4, 4, 4]]
    )
    np.testing.assert_array_equal(p.steps[:5], [3, 3, 3, 2, 1])
    np.testing.assert_array_equal(p.state[p.next[:5], 0], [3, 4, 5, 5, 5])
    np.testing.assert_array_equal(p.terminal[:5], [False, False, True, True, True])
    gamma = 0.9
    b = replay.sample(300, np.random.default_rng(0), RewardConfig(), gamma)
    start = b["state"][:, 0].astype(int)
    steps = np.array([3, 3, 3, 2, 1])[start]
    np.testing.assert_allclose(b["discount"], gamma**steps, rtol=1e-6)
    # task reward 1 on the last step, discounted by its place in the window; the shaping
    # telescopes to gamma^n * phi' - phi with phi' = 0 at the terminal state
    phi = start * 0.2
    task = np.where(start + steps == 5, gamma ** (steps - 1), 0.0)
    shaped = np.where(start + steps == 5, 0.0, gamma**steps * (start + steps) * 0.2) - phi
    np.testing.assert_allclose(b["reward"], task + shaped, rtol=1e-5, atol=1e-6)
    # a window never spans a human's steps and the policy's
    replay.add_shared_episode(np.array([True, True, False, False, False]), **ep)
    interv = replay.partitions["intervention"]
    np.testing.assert_array_equal(interv.action[:2, ::2], [[0, 1, 1], [1, 1, 1]])
    np.testing.assert_array_equal(interv.state[interv.next[:2], 0], [2, 2])
    assert not interv.terminal[:2].any()
    np.testing.assert_array_equal(p.action[5:8, ::2], [[2, 3, 4], [3, 4, 4], [4, 4, 4]])
    with pytest.raises(ValueError, match="actions must be per step"):
        replay.add_episode("online", **{**ep, "action": np.zeros((5, 6), np.float32)})


def test_old_transitions_never_see_overwritten_frames():
    replay = make_replay(human_ratio=0.0)
    for i in range(600):  # one-step episodes wrap the 500-transition ring
        replay.add_episode("online", **_episode(1, float(i % 7)))
    p = replay.partitions["online"]
    np.testing.assert_array_equal(
        p.state[p.obs, 0], p.state[p.next, 0]
    )  # each pair from one episode


def _agent(**cfg):
    from limbic.policy.rlpd import AgentConfig, ObsShape, RLPDAgent

    small = dict(d_model=16, n_queries=1, feature_dim=32, hidden=32, n_q=2, q_subset=2)
    return RLPDAgent(AgentConfig(**small, **cfg), ObsShape(2, 4, 8, 3, 16, 2), seed=0)


def _bc_batch(rows: int = 32) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "tokens": torch.randn(rows, 2, 4, 8, generator=g),
        "state": torch.randn(rows, 3, generator=g),
        "lang": torch.randn(rows, 16, generator=g),
        "action": torch.rand(rows, 2, generator=g) * 2 - 1,
        "human": torch.ones(rows, dtype=torch.bool),
    }


def _flat(*modules) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for m in modules for p in m.parameters()])


def test_the_acting_actor_is_a_warmed_up_moving_average_of_the_live_one():
    agent = _agent(actor_ema=0.9, token_noise=0.0, lang_dropout=0.0, lang_noise=0.0)
    before = _flat(agent.ema_encoder, agent.ema_actor)
    agent.bc_update(_bc_batch())
    # first step: decay (1 + 0) / (10 + 0) = 0.1, so the average moves 90 % of the way
    live = _flat(agent.actor_encoder, agent.actor)
    torch.testing.assert_close(_flat(agent.ema_encoder, agent.ema_actor), 0.1 * before + 0.9 * live)
    for _ in range(200):
        prev = _flat(agent.ema_encoder, agent.ema_actor)
        agent.bc_update(_bc_batch())
    live = _flat(agent.actor_encoder, agent.actor)
    # later steps use the configured decay
    torch.testing.assert_close(_flat(agent.ema_encoder, agent.ema_actor), 0.9 * prev + 0.1 * live)
    assert int(agent.ema_steps) == 201
    b = _bc_batch(4)
    with torch.no_grad():
        ema_action = agent.ema_actor(
            agent.ema_encoder(b["tokens"], b["state"], b["lang"]), deterministic=True
        )[0]
        live_action = agent.actor(
            agent.actor_encoder(b["tokens"], b["state"], b["lang"]), deterministic=True
        )[0]
    acted = agent.act(b["tokens"], b["state"], b["lang"], deterministic=True)
    assert torch.equal(acted, ema_action) and not torch.equal(acted, live_action)
    off = _agent(actor_ema=0.0)
    off.bc_update(_bc_batch())
    with torch.no_grad():
        live_action = off.actor(
            off.actor_encoder(b["tokens"], b["state"], b["lang"]), deterministic=True
        )[0]
    assert torch.equal(off.act(b["tokens"], b["state"], b["lang"], deterministic=True), live_action)


def test_the_average_ramp_sets_how_far_back_the_acting_actor_reaches():
    agent = _agent(actor_ema=0.9999, actor_ema_ramp=4.0, token_noise=0.0, lang_dropout=0.0)
    decays = []
    for _ in range(30):
        prev = _flat(agent.ema_encoder, agent.ema_actor)
        n = int(agent.ema_steps)
        agent.bc_update(_bc_batch())
        live = _flat(agent.actor_encoder, agent.actor)
        now = _flat(agent.ema_encoder, agent.ema_actor)
        # now = d * prev + (1 - d) * live: solve for d on the components that moved
        moved = (live - prev).abs() > 1e-4
        d = ((now - live)[moved] / (prev - live)[moved]).median().item()
        decays.append(d)
        assert d == pytest.approx((1 + n) / (4 + n), abs=1e-3)
    # a smaller ramp keeps more of the past: at the same step its decay is above ramp 10's
    assert decays[5] > (1 + 5) / (10 + 5) + 0.2
    with pytest.raises(ConfigError, match="actor_ema_ramp"):
        _agent(actor_ema_ramp=1.0)


def test_inverse_variance_bc_weights_follow_each_components_spread_in_the_human_rows():
    assert "bc_action_var" not in _agent().state_dict()  # equal weights keep no statistics
    agent = _agent(bc_dim_weights="inverse_variance")
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        b = _bc_batch(512)
        b["action"] = torch.randn(512, 2, generator=g) * torch.tensor([0.1, 0.5])
        b["human"][256:] = False  # only the human rows count
        b["action"][256:] = 5.0
        agent.bc_update(b)
    var = agent.bc_action_var
    torch.testing.assert_close(var, torch.tensor([0.01, 0.25]), rtol=0.15, atol=0)
    weights = agent._bc_weights({"action": b["action"][:0], "human": b["human"][:0]})
    inverse = 1 / var
    torch.testing.assert_close(weights, inverse / inverse.mean())
    assert weights[0] / weights[1] == pytest.approx(25, rel=0.3) and weights.mean() == 1
    # kept with the weights: a loaded agent goes on with the same statistics
    loaded = _agent(bc_dim_weights="inverse_variance")
    loaded.load_state_dict(agent.state_dict())
    assert torch.equal(loaded.bc_action_var, var) and int(loaded.bc_var_rows) == 3


def test_augmentation_noise_and_instruction_dropout_have_the_configured_sizes():
    rows = 4000
    batch = {
        "tokens": torch.randn(rows, 2, 4, 8),
        "next_tokens": torch.randn(rows, 2, 4, 8),
        "lang": torch.nn.functional.normalize(torch.randn(rows, 16), dim=-1),
    }
    off = _agent(token_noise=0.0, lang_dropout=0.0, lang_noise=0.0).augment(batch)
    for key in batch:
        assert torch.equal(off[key], batch[key])

    out = _agent(token_noise=0.7, lang_dropout=0.25, lang_noise=0.5).augment(batch)
    for key in ("tokens", "next_tokens"):
        assert (out[key] - batch[key]).std().item() == pytest.approx(0.7, rel=0.02)
    assert not torch.equal(
        out["tokens"] - batch["tokens"], out["next_tokens"] - batch["next_tokens"]
    )
    dropped = (out["lang"] == 0).all(-1)
    assert dropped.float().mean().item() == pytest.approx(0.25, abs=0.03)
    kept = ~dropped
    rms = batch["lang"][kept].pow(2).mean(-1, keepdim=True).sqrt()
    rel = (out["lang"][kept] - batch["lang"][kept]) / rms
    assert rel.std().item() == pytest.approx(0.5, rel=0.03)


def test_state_noise_and_dropout_have_the_configured_sizes_and_drop_whole_rows():
    from limbic.launch.config import ConfigError
    from limbic.policy.rlpd import AgentConfig

    rows = 4000
    state = torch.rand(rows, 3) + 0.5  # no component is 0 before dropout
    batch = {"tokens": torch.randn(rows, 2, 4, 8), "lang": torch.randn(rows, 16)}
    batch |= {"state": state, "next_state": state + 0.1}
    quiet = dict(token_noise=0.0, lang_dropout=0.0, lang_noise=0.0, state_dropout=0.0)
    off = _agent(**quiet).augment(batch)
    assert torch.equal(off["state"], batch["state"])

    noisy = _agent(**quiet, state_noise=0.05).augment(batch)
    for key in ("state", "next_state"):
        assert (noisy[key] - batch[key]).std().item() == pytest.approx(0.05, rel=0.03)

    out = _agent(**{**quiet, "state_dropout": 0.4}).augment(batch)
    dropped = (out["state"] == 0).all(-1)
    assert dropped.float().mean().item() == pytest.approx(0.4, abs=0.03)
    assert torch.equal(dropped, (out["next_state"] == 0).all(-1))  # the same rows lose both
    assert torch.equal(out["state"][~dropped], batch["state"][~dropped])  # the rest untouched
    assert not (out["state"] == 0).any(-1)[~dropped].any()
    with pytest.raises(ConfigError, match="agent.state_dropout"):
        AgentConfig(state_dropout=1.0)
    with pytest.raises(ConfigError, match="agent.state_noise"):
        AgentConfig(state_noise=-0.1)


def test_view_dropout_masks_one_view_of_the_configured_rows_and_the_encoder_ignores_it():
    from limbic.launch.config import ConfigError
    from limbic.policy.rlpd import AgentConfig

    rows = 4000
    quiet = dict(token_noise=0.0, lang_dropout=0.0, lang_noise=0.0, state_dropout=0.0)
    batch = {"tokens": torch.randn(rows, 2, 4, 8), "lang": torch.randn(rows, 16)}
    assert "view_mask" not in _agent(**quiet).augment(batch)  # off by default

    mask = _agent(**quiet, view_dropout=0.4).augment(batch)["view_mask"]
    assert mask.shape == (rows, 2) and mask.dtype == torch.bool
    lost = (~mask).sum(-1)
    assert lost.max().item() == 1  # one view at most: a row never goes blind
    assert lost.float().mean().item() == pytest.approx(0.4, abs=0.03)
    assert (~mask[:, 0]).float().mean().item() == pytest.approx(0.2, abs=0.03)  # either view

    # the masked view's tokens do not reach the feature: changing them changes nothing
    agent = _agent(**quiet)
    b = _bc_batch(8)
    b["view_mask"] = torch.tensor([[True, False]] * 8)
    other = {**b, "tokens": b["tokens"].clone()}
    other["tokens"][:, 1] += 5.0
    enc = agent.actor_encoder
    same = enc(b["tokens"], b["state"], b["lang"], b["view_mask"])
    assert torch.allclose(same, enc(other["tokens"], b["state"], b["lang"], b["view_mask"]))
    assert not torch.allclose(same, enc(other["tokens"], b["state"], b["lang"]))
    with pytest.raises(ConfigError, match="agent.view_dropout"):
        AgentConfig(view_dropout=1.0)


@pytest.mark.parametrize("pooling", ["attention", "flatten", "keypoints"])
def test_token_dropout_masks_single_tokens_and_the_encoder_ignores_them(pooling):
    from limbic.launch.config import ConfigError
    from limbic.policy.rlpd import AgentConfig

    rows = 4000
    quiet = dict(token_noise=0.0, lang_dropout=0.0, lang_noise=0.0, state_dropout=0.0)
    batch = {"tokens": torch.randn(rows, 2, 4, 8), "lang": torch.randn(rows, 16)}
    mask = _agent(**quiet, token_dropout=0.3).augment(batch)["view_mask"]
    assert mask.shape == (rows, 2, 4) and mask.dtype == torch.bool
    assert (~mask).float().mean().item() == pytest.approx(0.3 - 0.3**4, abs=0.01)
    assert mask.any(-1).all()  # every view keeps a token
    # with view dropout too, a dropped view loses every token
    both = _agent(**quiet, token_dropout=0.3, view_dropout=0.5).augment(batch)["view_mask"]
    assert both.shape == (rows, 2, 4)
    gone = ~both.any(-1)  # [rows, views]
    assert gone.sum(-1).max().item() == 1  # only view dropout takes a whole view, never both
    assert gone.any(-1).float().mean().item() == pytest.approx(0.5, abs=0.03)

    agent = _agent(**quiet, pooling=pooling)
    enc = agent.actor_encoder
    b = _bc_batch(8)
    token_mask = torch.ones(8, 2, 4, dtype=torch.bool)
    token_mask[:, 0, 2] = False  # one token of the first view is masked
    other = b["tokens"].clone()
    other[:, 0, 2] += 5.0
    masked = enc(b["tokens"], b["state"], b["lang"], token_mask)
    # the masked token's content does not reach the feature; an unmasked one's does
    assert torch.allclose(masked, enc(other, b["state"], b["lang"], token_mask), atol=1e-6)
    assert not torch.allclose(masked, enc(other, b["state"], b["lang"]))
    moved = b["tokens"].clone()
    moved[:, 0, 1] += 5.0
    assert not torch.allclose(masked, enc(moved, b["state"], b["lang"], token_mask))
    # a view with no token present is a missing view
    token_mask = torch.ones(8, 2, 4, dtype=torch.bool)
    token_mask[:, 1] = False
    view_mask = torch.tensor([[True, False]] * 8)
    torch.testing.assert_close(
        enc(b["tokens"], b["state"], b["lang"], token_mask),
        enc(b["tokens"], b["state"], b["lang"], view_mask),
    )
    assert torch.isfinite(enc(b["tokens"], b["state"], b["lang"], token_mask)).all()
    with pytest.raises(ConfigError, match="agent.token_dropout"):
        AgentConfig(token_dropout=1.0)


def test_augmentation_is_reproducible_from_the_agent_generator():
    batch = {"tokens": torch.randn(8, 2, 4, 8), "lang": torch.randn(8, 16)}
    a, b = _agent(), _agent()
    first, second = a.augment(batch), b.augment(batch)
    assert all(torch.equal(first[k], second[k]) for k in batch)
    assert not torch.equal(first["tokens"], a.augment(batch)["tokens"])  # fresh noise each batch


def test_token_compressor_scales_fitted_tokens_to_unit_std():
    from limbic.policy.vla import TokenCompressor

    tokens = 5.0 * torch.randn(64, 16, 24) + 3.0
    comp = TokenCompressor(24, 6, pool=1)
    comp.fit(tokens)
    out = comp(tokens)
    assert out.mean().abs().item() < 0.05
    assert out.std().item() == pytest.approx(1.0, rel=0.02)
    assert comp.scale.item() == pytest.approx(5.0, rel=0.1)
    assert torch.equal(comp.axis_scale, torch.ones(6))  # not whitened: the axes keep their spread


def test_whitening_gives_every_principal_axis_unit_spread():
    from limbic.policy.vla import TokenCompressor

    g = torch.Generator().manual_seed(0)
    spread = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.05])
    tokens = torch.randn(256, 16, 8, generator=g) * spread
    plain, white = TokenCompressor(8, 4, pool=1), TokenCompressor(8, 4, pool=1, whiten=True)
    plain.fit(tokens)
    white.fit(tokens)
    per_axis = white(tokens).reshape(-1, 4).std(0)
    torch.testing.assert_close(per_axis, torch.ones(4), rtol=0.01, atol=0)
    # the same axes, rescaled: without whitening the fourth has about 1/8 of the first's spread
    plain_axes = plain(tokens).reshape(-1, 4).std(0)
    assert plain_axes[3] / plain_axes[0] == pytest.approx(1 / 8, rel=0.1)
    ratio = white(tokens) / plain(tokens)
    torch.testing.assert_close(ratio, (1 / white.axis_scale).expand_as(ratio), rtol=1e-4, atol=0)


def _rl_batch(rows: int = 32) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "tokens": torch.randn(rows, 2, 4, 8, generator=g),
        "next_tokens": torch.randn(rows, 2, 4, 8, generator=g),
        "state": torch.randn(rows, 3, generator=g),
        "next_state": torch.randn(rows, 3, generator=g),
        "lang": torch.randn(rows, 16, generator=g),
        "action": torch.rand(rows, 2, generator=g) * 2 - 1,
        "reward": torch.rand(rows, generator=g),
        "terminal": torch.zeros(rows),
        "human": torch.arange(rows) % 2 == 0,
    }


def test_without_its_value_term_an_rl_update_is_the_bc_step_and_leaves_the_critic_alone():
    """``value_weight=0``: an RL update moves the actor exactly as a BC step on the same batch
    would, from the first update (no critic warm-up to wait for), and skips the Q ensemble that
    nothing reads; with the default weight the critic learns and the actor step differs. IBRL
    reads the critic, so with it the critic trains at weight 0 too."""
    batch = _rl_batch()
    actors = {}
    for name, weight in (("rl0", 0.0), ("rl1", 1.0), ("bc", 0.0)):
        agent = _agent(critic_warmup=0 if weight else 500, value_weight=weight)
        critic_before = [p.clone() for p in agent.critic.parameters()]
        if name == "bc":
            agent.bc_update({k: v.clone() for k, v in batch.items()})
        else:
            metrics = agent.update({k: v.clone() for k, v in batch.items()})
            moved = any(
                not torch.equal(a, b)
                for a, b in zip(critic_before, agent.critic.parameters(), strict=True)
            )
            assert moved == (weight > 0) and ("critic_loss" in metrics) == (weight > 0)
        actors[name] = [p.detach().clone() for p in agent.actor.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(actors["rl0"], actors["bc"], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(actors["rl1"], actors["bc"], strict=True))
    ibrl = _agent(critic_warmup=0, value_weight=0.0, bootstrap_from_bc=True)
    assert ibrl.uses_critic and "critic_loss" in ibrl.update(_rl_batch())
    held = _agent(value_weight=0.0)
    before = [p.clone() for p in held.actor.parameters()]
    assert held.update(_rl_batch(), update_actor=False) == {}
    assert all(torch.equal(a, b) for a, b in zip(before, held.actor.parameters(), strict=True))


@pytest.mark.parametrize("normalize", [True, False])
def test_q_normalised_actor_gradient_ignores_the_scale_of_q(normalize):
    grads = []
    for scale in (1.0, 10.0):
        agent = _agent(q_normalize=normalize, init_alpha=1e-9, grad_clip=1e9, bc_std=0.0)
        with torch.no_grad():  # the same critic, its values `scale` times larger
            agent.critic.w_out.mul_(scale)
            agent.critic.b_out.add_(2.0).mul_(scale)
        agent._actor_step(_rl_batch(), bc_weight=0.0, rl=True)
        grads.append(agent.actor.net[-1].weight.grad.clone())
    if normalize:
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)
    else:
        torch.testing.assert_close(grads[1], 10.0 * grads[0], rtol=1e-4, atol=1e-6)


def test_critic_warmup_holds_the_actor_still():
    agent = _agent(critic_warmup=2, token_noise=0.0, lang_dropout=0.0, lang_noise=0.0)
    actor0 = [p.clone() for p in agent.actor.parameters()]
    critic0 = agent.critic.w_out.clone()
    for _ in range(2):
        metrics = agent.update(_rl_batch())
        assert "actor_loss" not in metrics
    assert all(torch.equal(a, b) for a, b in zip(actor0, agent.actor.parameters(), strict=True))
    assert not torch.equal(critic0, agent.critic.w_out)
    assert "actor_loss" in agent.update(_rl_batch())
    assert not torch.equal(actor0[0], next(agent.actor.parameters()))


@pytest.mark.parametrize("through", [True, False])
def test_value_term_reaches_the_actor_encoder_only_when_asked(through):
    agent = _agent(rl_through_encoder=through, bc_std=0.0)
    agent._actor_step(_rl_batch(), bc_weight=0.0, rl=True)
    grad = agent.actor_encoder.proj.weight.grad
    assert (grad is not None and grad.abs().sum() > 0) == through
    assert agent.actor.net[-1].weight.grad.abs().sum() > 0


def test_the_temperature_shrinks_while_the_exploration_noise_is_anchored():
    """With ``bc_std`` holding the policy's noise, the default entropy target lies below what
    that noise gives, so alpha falls instead of growing until its bonus swamps the reward."""
    from limbic.policy.rlpd import AgentConfig

    cfg = AgentConfig(bc_std=0.1)
    gaussian = math.log(0.1) + 0.5 * math.log(2 * math.pi * math.e)
    assert cfg.entropy_target_per_dim() < gaussian
    assert AgentConfig(bc_std=0.0).entropy_target_per_dim() == -0.5
    assert AgentConfig(target_entropy_per_dim=-2.0).entropy_target_per_dim() == -2.0
    agent = _agent(bc_std=0.1, critic_warmup=0, token_noise=0.0, lang_dropout=0.0, lang_noise=0.0)
    batch = _rl_batch()
    for _ in range(200):
        agent.bc_update(batch)
    before = float(agent.alpha)
    for _ in range(100):
        agent.update(batch)
    assert float(agent.alpha) < before
    # the old fixed target (-0.5 per dimension) sits above the anchored noise: alpha grows
    agent = _agent(
        bc_std=0.1,
        target_entropy_per_dim=-0.5,
        critic_warmup=0,
        token_noise=0.0,
        lang_dropout=0.0,
        lang_noise=0.0,
    )
    for _ in range(200):
        agent.bc_update(batch)
    before = float(agent.alpha)
    for _ in range(100):
        agent.update(batch)
    assert float(agent.alpha) > before


def test_bc_pretraining_sets_the_exploration_noise():
    agent = _agent(bc_std=0.1, token_noise=0.0, lang_dropout=0.0, lang_noise=0.0)
    batch = _rl_batch()
    for _ in range(300):
        agent.bc_update(batch)
    with torch.no_grad():
        feature = agent.actor_encoder(batch["tokens"], batch["state"], batch["lang"])
        std = agent.actor.distribution(feature)[1]
    assert std.mean().item() == pytest.approx(0.1, rel=0.1)


class _PreferCloseTo(torch.nn.Module):
    """A stand-in Q ensemble of two heads: ``-|a - goal|^2``, highest at ``goal``."""

    def __init__(self, goal: torch.Tensor):
        super().__init__()
        self.goal = goal

    def forward(self, feature: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return -(action - self.goal).pow(2).sum(-1).expand(2, -1)


def test_bootstrapping_from_bc_freezes_the_reference_and_acts_on_the_better_action():
    quiet = dict(token_noise=0.0, lang_dropout=0.0, lang_noise=0.0)
    agent = _agent(bootstrap_from_bc=True, critic_warmup=3, **quiet)
    for _ in range(50):
        agent.bc_update(_bc_batch())
    b = _bc_batch(8)
    obs = (b["tokens"], b["state"], b["lang"])
    bc_action = agent.act(*obs, deterministic=True)
    agent.update(_rl_batch())  # the first RL update freezes the acting actor as the reference
    assert bool(agent.ref_frozen) and not bool(agent.ref_active)
    frozen = _flat(agent.ref_encoder, agent.ref_actor)
    with torch.no_grad():
        ref_action = agent.ref_actor(agent.ref_encoder(*obs), deterministic=True)[0]
    torch.testing.assert_close(ref_action, bc_action)
    for _ in range(30):
        agent.update(_rl_batch())
    assert bool(agent.ref_active)
    assert torch.equal(_flat(agent.ref_encoder, agent.ref_actor), frozen)  # never trained
    with torch.no_grad():
        rl_action = agent.ema_actor(agent.ema_encoder(*obs), deterministic=True)[0]
    assert not torch.allclose(rl_action, ref_action)
    # acting takes, row by row, the action the Q-function values higher
    goal = ref_action.clone()
    goal[::2] = rl_action[::2]  # even rows prefer the RL actor, odd rows the reference
    agent.critic = _PreferCloseTo(goal)
    acted = agent.act(*obs, deterministic=True)
    torch.testing.assert_close(acted[::2], rl_action[::2])
    torch.testing.assert_close(acted[1::2], ref_action[1::2])
    # without the option the RL actor alone acts
    agent.cfg.bootstrap_from_bc = False
    torch.testing.assert_close(agent.act(*obs, deterministic=True), rl_action)


def test_bootstrapping_from_bc_targets_the_better_of_the_two_next_actions():
    quiet = dict(token_noise=0.0, lang_dropout=0.0, lang_noise=0.0, critic_warmup=0)
    plain, boot = _agent(**quiet), _agent(bootstrap_from_bc=True, **quiet)
    for agent in (plain, boot):
        for _ in range(20):
            agent.bc_update(_bc_batch())
        # the live actor moves on from the acting average the reference is frozen from
        torch.manual_seed(5)
        for p in agent.actor.parameters():
            p.data.add_(0.3 * torch.randn_like(p))
    assert torch.equal(_flat(plain.critic), _flat(boot.critic))
    batch = _rl_batch(256)
    target_plain = plain.update(batch)["target_mean"]
    target_boot = boot.update(batch)["target_mean"]
    # per row the bootstrapped target is the larger of two candidates, one of them the plain one
    assert target_boot > target_plain


@pytest.mark.parametrize("critic_noise", [None, 0.0, 0.25])
def test_the_critic_sees_its_own_token_noise(critic_noise):
    agent = _agent(token_noise=1.0, critic_token_noise=critic_noise, critic_warmup=0)
    seen = {}
    critic_step, actor_step = agent._critic_step, agent._actor_step

    def spy_critic(b):
        seen["critic"] = b["tokens"].clone()
        return critic_step(b)

    def spy_actor(b, *args, **kwargs):
        seen["actor"] = b["tokens"].clone()
        return actor_step(b, *args, **kwargs)

    agent._critic_step, agent._actor_step = spy_critic, spy_actor
    batch = _rl_batch(512)
    agent.update(batch)
    actor_noise = (seen["actor"] - batch["tokens"]).std().item()
    critic_noise_seen = (seen["critic"] - batch["tokens"]).std().item()
    assert actor_noise == pytest.approx(1.0, rel=0.05)
    expected = 1.0 if critic_noise is None else critic_noise
    assert critic_noise_seen == pytest.approx(expected, rel=0.05, abs=1e-6)
    if critic_noise is None:  # one augmented batch for both
        assert torch.equal(seen["critic"], seen["actor"])


def test_online_updates_can_augment_less_than_bc_pretraining():
    """``online_token_noise`` / ``online_state_dropout`` set the token noise and the state
    dropout of ``update`` (online learning), while ``bc_update`` (pre-training) keeps
    ``token_noise`` / ``state_dropout``; unset, both augment alike."""
    for online in (False, True):
        extra = dict(online_token_noise=0.25, online_state_dropout=0.0) if online else {}
        agent = _agent(
            token_noise=1.0, state_dropout=0.5, value_weight=0.0, critic_warmup=0, **extra
        )
        seen = []
        actor_step = agent._actor_step

        def spy(b, *args, _step=actor_step, _seen=seen, **kwargs):
            _seen.append(b)
            return _step(b, *args, **kwargs)

        agent._actor_step = spy
        batch = _rl_batch(512)
        batch["state"] = batch["state"] + 5.0  # no row is zero unless it was dropped
        agent.bc_update(batch)
        agent.update(batch)
        (bc, rl) = seen
        for b, noise, dropped in (
            (bc, 1.0, 0.5),
            (rl, 0.25 if online else 1.0, 0.0 if online else 0.5),
        ):
            assert (b["tokens"] - batch["tokens"]).std().item() == pytest.approx(noise, rel=0.05)
            lost = (b["state"] == 0).all(-1).float().mean().item()
            assert lost == pytest.approx(dropped, abs=0.07)
    from limbic.policy.rlpd import AgentConfig

    with pytest.raises(ValueError, match="agent.online_token_noise"):
        AgentConfig(online_token_noise=-1.0)
    with pytest.raises(ValueError, match="agent.online_state_dropout"):
        AgentConfig(online_state_dropout=1.0)


def _locate_error(position: str) -> tuple[float, float]:
    """Train an encoder + linear head to read the column of the one bright token of a 4×4 grid,
    never showing it in two interior cells; mean |x error| on the seen and the unseen cells."""
    torch.manual_seed(0)
    n, side = 16, 4
    coords = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1)
    x_of = (coords[..., 1].flatten().float() / (side - 1)) * 2 - 1  # column -> x in [-1, 1]

    def batch(cells: torch.Tensor):
        tokens = torch.zeros(len(cells), 1, n, 4)
        tokens[torch.arange(len(cells)), 0, cells, 0] = 3.0
        return tokens + 0.05 * torch.randn_like(tokens), x_of[cells]

    hidden = {5, 10}  # two interior cells, each between seen ones
    seen = torch.tensor([i for i in range(n) if i not in hidden])
    unseen = torch.tensor(sorted(hidden))
    enc = ObservationEncoder(
        1, n, 4, 1, 2, d_model=16, n_queries=1, feature_dim=16, position=position
    )
    head = torch.nn.Linear(16, 1)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], 1e-2)
    zeros = torch.zeros(64, 1), torch.zeros(64, 2)
    for _ in range(400):
        tokens, x = batch(seen[torch.randint(0, len(seen), (64,))])
        loss = (head(enc(tokens, *zeros)).squeeze(-1) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        errors = []
        for cells in (seen, unseen):
            tokens, x = batch(cells.repeat(4))
            state, lang = torch.zeros(len(x), 1), torch.zeros(len(x), 2)
            errors.append(float((head(enc(tokens, state, lang)).squeeze(-1) - x).abs().mean()))
    return errors[0], errors[1]


def test_grid_positions_locate_objects_where_training_never_showed_them():
    """A free embedding per token learns nothing about a place it never saw; grid coordinates
    let attention pooling read the position of any cell between seen ones."""
    seen_learned, unseen_learned = _locate_error("learned")
    assert seen_learned < 0.05 and unseen_learned > 0.2
    for position in ("grid", "both"):
        seen, unseen = _locate_error(position)
        assert seen < 0.05 and unseen < 0.05
    assert "pos" not in dict(ObservationEncoder(1, 16, 4, 1, 2, position="grid").named_parameters())
    with pytest.raises(ValueError, match="position"):
        ObservationEncoder(1, 16, 4, 1, 2, position="sinusoid")
    with pytest.raises(ValueError, match="square"):
        ObservationEncoder(1, 12, 4, 1, 2, position="both")


def test_flatten_pooling_keeps_each_tokens_place_where_attention_averages_it_away():
    """Without position embeddings, attention pooling is a weighted average: moving a token to
    another cell leaves the feature unchanged. ``pooling=flatten`` keeps every token in its slot,
    so the same move changes the feature; a missing view still contributes nothing."""
    torch.manual_seed(0)
    tokens = torch.randn(3, 2, 16, 4)
    moved = tokens.clone()
    moved[:, 0, [2, 9]] = tokens[:, 0, [9, 2]]  # two tokens of view 0 swap places
    state, lang = torch.randn(3, 5), torch.randn(3, 6)
    features = {}
    for pooling in ("attention", "flatten"):
        enc = ObservationEncoder(2, 16, 4, 5, 6, d_model=8, feature_dim=32, pooling=pooling)
        with torch.no_grad():
            enc.pos.zero_()
            features[pooling] = enc(tokens, state, lang), enc(moved, state, lang)
        assert features[pooling][0].shape == (3, 32)
        mask = torch.tensor([[0.0, 1.0]] * 3)  # view 0 missing: its tokens do not matter
        with torch.no_grad():
            assert torch.allclose(enc(tokens, state, lang, mask), enc(moved, state, lang, mask))
    assert torch.allclose(*features["attention"], atol=1e-6)
    assert (features["flatten"][0] - features["flatten"][1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="pooling"):
        ObservationEncoder(1, 16, 4, 1, 2, pooling="max")
    from limbic.policy.rlpd import AgentConfig

    with pytest.raises(ValueError, match="agent.pooling"):
        AgentConfig(pooling="max")


def test_keypoint_pooling_reads_out_where_on_the_grid_a_feature_is():
    """``pooling=keypoints`` is a spatial soft-argmax: a keypoint tuned to a feature reports the
    grid (x, y) of the token that carries it, follows it when it moves, and lands between two
    cells that carry it equally. Through the whole encoder, moving a token changes the feature."""
    enc = ObservationEncoder(1, 16, 4, 1, 2, d_model=8, feature_dim=32, pooling="keypoints")
    feature = torch.zeros(8)
    feature[3] = 1.0
    with torch.no_grad():
        enc.kp_logits.zero_()
        enc.kp_logits[0, :, 0] = 40.0 * feature  # keypoint 0 responds to that feature
    grid = grid_coordinates(16)  # row-major 4x4, (x, y) in [-1, 1]

    def where(cells: list[int]) -> torch.Tensor:
        x = torch.zeros(1, 1, 16, 8)
        x[0, 0, cells] = feature
        return enc.keypoints(x)[0, 0, 0]

    for cell in (0, 5, 14):
        assert torch.allclose(where([cell]), grid[cell], atol=1e-4)
    assert torch.allclose(where([5, 6]), (grid[5] + grid[6]) / 2, atol=1e-4)
    assert enc.keypoints(torch.zeros(2, 1, 16, 8)).shape == (2, 1, 16, 2)

    torch.manual_seed(0)
    tokens = torch.randn(3, 2, 16, 4)
    moved = tokens.clone()
    moved[:, 0, [2, 9]] = tokens[:, 0, [9, 2]]
    state, lang = torch.randn(3, 5), torch.randn(3, 6)
    for pooling in ("keypoints", "attention_keypoints"):
        enc = ObservationEncoder(2, 16, 4, 5, 6, d_model=8, feature_dim=32, pooling=pooling)
        with torch.no_grad():
            enc.pos.zero_()
            before, after = enc(tokens, state, lang), enc(moved, state, lang)
            mask = torch.tensor([[0.0, 1.0]] * 3)
            assert torch.allclose(enc(tokens, state, lang, mask), enc(moved, state, lang, mask))
        assert before.shape == (3, 32)
        assert (before - after).abs().max() > 1e-3


def test_each_frame_keeps_the_motion_still_to_come_before_the_next_gripper_event():
    """The waypoint of a frame sums the arm actions from it up to the next change of the gripper
    command (the grasp, then the release) or the episode's end; a sampled row carries its own
    frame's."""
    from limbic.runtime.replay import motion_to_next_event

    arm = np.array([1, 2, 3, 4, 5, 6, 7], np.float32)
    grip = np.array([-1, -1, 1, 1, 1, -1, -1], np.float32)  # close at step 2, open at step 5
    action = np.stack([arm, -arm, grip], axis=1)
    # frames 0-1 head for the grasp (step 2), 2-4 for the release (step 5), 5-7 for the end
    expected = np.array([1 + 2, 2, 3 + 4 + 5, 4 + 5, 5, 6 + 7, 7, 0], np.float32)
    motion = motion_to_next_event(action)
    assert motion.shape == (8, 2)
    assert np.array_equal(motion[:, 0], expected) and np.array_equal(motion[:, 1], -expected)
    never = motion_to_next_event(np.stack([arm, -np.ones(7, np.float32)], axis=1))
    assert np.array_equal(never[:, 0], arm[::-1].cumsum()[::-1].tolist() + [0.0])

    replay = ReplayMix(ReplayConfig(online_capacity=50, human_capacity=50), (2, 3, 4), 5, 3, 3)
    replay.instruction_id("pick", np.ones(3))
    state = np.repeat(np.arange(8, dtype=np.float32)[:, None], 5, axis=1)  # frame i holds i
    replay.add_episode("demo", **{**_episode(7, 1.0), "state": state, "action": action})
    b = replay.sample(64, np.random.default_rng(0), RewardConfig(), 0.9)
    frame = b["state"][:, 0].astype(int)
    assert np.array_equal(b["waypoint"][:, 0], expected[frame])


def test_the_waypoint_head_learns_the_motion_to_the_next_gripper_event_from_human_rows():
    """``waypoint_weight > 0`` adds a head to the encoder, trained with the actor on the human
    rows' waypoints; ``waypoint_input`` appends its prediction to the feature the actor and Q
    heads read. Without the weight there is no head, and a batch without waypoints is refused
    by name when the head needs them."""
    assert _agent().actor_encoder.waypoint_dim == 0
    g = torch.Generator().manual_seed(2)
    for appended in (False, True):
        agent = _agent(
            waypoint_weight=1.0, waypoint_input=appended, token_noise=0.0, state_dropout=0.0
        )
        batch = _bc_batch()
        batch["waypoint"] = batch["state"][:, :1] * 0.5 + torch.randn(32, 1, generator=g) * 0.1
        first = agent.bc_update(batch)["waypoint_loss"]
        for _ in range(150):
            last = agent.bc_update(batch)["waypoint_loss"]
        assert last < 0.2 * first
        feature = agent.actor_encoder(batch["tokens"], batch["state"], batch["lang"])
        assert feature.shape[-1] == 32 + (1 if appended else 0)
        online = {**batch, "human": torch.zeros(32, dtype=torch.bool)}
        assert agent.bc_update(online)["waypoint_loss"] == 0.0
        del batch["waypoint"]
        with pytest.raises(KeyError, match="waypoint"):
            agent.bc_update(batch)
    from limbic.policy.rlpd import AgentConfig

    with pytest.raises(ValueError, match="agent.waypoint_weight"):
        AgentConfig(waypoint_weight=-1.0)
    with pytest.raises(ValueError, match="agent.waypoint_input"):
        AgentConfig(waypoint_input=True)


def test_a_token_localiser_learns_the_waypoint_on_its_own_inputs_and_feeds_the_actor_detached():
    """``waypoint_source=tokens``: the waypoint head is a network of its own on the whole token
    grids and the state. It reads tokens with its own noise (here none, while the actor's are
    noisy), so it learns a waypoint that one token carries; its prediction is appended to the
    actor's feature without gradients (imitation cannot train it); the Q heads get no localiser."""
    agent = _agent(
        waypoint_weight=1.0,
        waypoint_input=True,
        waypoint_source="tokens",
        token_noise=1.0,
        waypoint_token_noise=0.0,
        state_dropout=0.0,
    )
    batch = _bc_batch()
    batch["waypoint"] = batch["tokens"][:, 1, 2, :1] * 0.5  # one number of one token of view 1
    seen = agent.augment(batch)
    assert torch.equal(seen["waypoint_tokens"], batch["tokens"])
    assert not torch.allclose(seen["tokens"], batch["tokens"])
    first = agent.bc_update(batch)["waypoint_loss"]
    for _ in range(200):
        last = agent.bc_update(batch)["waypoint_loss"]
    assert last < 0.1 * first
    enc = agent.actor_encoder
    feature = enc(batch["tokens"], batch["state"], batch["lang"])
    located = enc.locate(batch["tokens"], batch["state"])
    assert torch.equal(feature[:, -1:], located)
    assert (located - batch["waypoint"]).abs().mean() < 0.3 * batch["waypoint"].abs().mean()
    agent.actor_opt.zero_grad(set_to_none=True)
    feature.sum().backward()
    assert all(p.grad is None for p in enc.waypoint_head.parameters())
    assert any(p.grad is not None for p in enc.proj.parameters())
    assert agent.critic_encoder.waypoint_dim == 0
    assert agent.critic_encoder.feature_dim == 32 and enc.feature_dim == 33
    # a view masked out is zeroed in the localiser's input, as the pooled features leave it out
    mask = torch.tensor([[True, False]]).expand(32, 2)
    zeroed = batch["tokens"].clone()
    zeroed[:, 1] = 0.0
    assert torch.allclose(
        enc.locate(batch["tokens"], batch["state"], mask), enc.locate(zeroed, batch["state"])
    )
    from limbic.policy.rlpd import AgentConfig

    with pytest.raises(ValueError, match="agent.waypoint_source"):
        AgentConfig(waypoint_source="pixels")
    with pytest.raises(ValueError, match="agent.waypoint_token_noise"):
        AgentConfig(waypoint_token_noise=-0.5)


def test_mixture_nll_by_hand():
    means = torch.tensor([[[0.2, -0.4], [-0.5, 0.1]]])  # [B=1, K=2, A=2]
    widths = torch.tensor([[[0.3, 0.5], [0.2, 0.4]]])
    log_w = torch.tensor([[0.7, 0.3]]).log()
    action = torch.tensor([[0.1, -0.2]])
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=log_w.exp()),
        torch.distributions.Independent(torch.distributions.Normal(means, widths), 1),
    )
    torch.testing.assert_close(mixture_nll(means, widths, log_w, action), -mix.log_prob(action))
    # per-component weights scale each component's log-density term
    weights = torch.tensor([2.0, 0.5])
    z = (action.unsqueeze(1) - means) / widths
    logn = -0.5 * z**2 - widths.log() - 0.5 * math.log(2 * math.pi)
    expected = -torch.logsumexp(log_w + (logn * weights).sum(-1), -1)
    torch.testing.assert_close(mixture_nll(means, widths, log_w, action, weights), expected)


def test_mixture_actor_samples_in_bounds_scores_its_samples_and_acts_on_its_likeliest_mode():
    torch.manual_seed(0)
    actor = MixtureTanhGaussianActor(
        feature_dim=8, action_dim=3, chunk_len=2, hidden=16, components=3
    )
    feature = torch.randn(5, 8)
    action, logp = actor(feature)
    assert action.shape == (5, 6) and logp.shape == (5,) and action.abs().max() < 1.0
    torch.testing.assert_close(actor.log_prob(feature, action), logp, atol=2e-3, rtol=1e-3)
    assert actor.noise_dim == 7
    with pytest.raises(ValueError, match="noise: expected shape"):
        actor(feature, noise=torch.zeros(5, 6))
    mean, _, _, log_w = actor.components(feature)
    det, _ = actor(feature, deterministic=True)
    best = log_w.argmax(-1)
    torch.testing.assert_close(det, torch.tanh(mean[torch.arange(5), best]))
    # the last noise number picks the component through the weights' cumulative sum
    noise = torch.zeros(5, 7)
    noise[:, -1] = 8.0  # CDF ~1: the last component
    sampled, _ = actor(feature, noise=noise)
    torch.testing.assert_close(sampled, torch.tanh(mean[:, -1]))
    noise[:, -1] = -8.0  # CDF ~0: the first
    torch.testing.assert_close(actor(feature, noise=noise)[0], torch.tanh(mean[:, 0]))
    with pytest.raises(ValueError, match="2 or more"):
        MixtureTanhGaussianActor(8, 3, components=1)


def test_a_mixture_head_keeps_two_demonstrated_motions_apart_where_one_gaussian_averages_them():
    """The same observation followed by +0.6 in half the human rows and -0.6 in the other half:
    the single Gaussian's imitation (squared error) acts near their mean, 0, a motion no one
    made; the mixture acts on one of the two, and its exploration noise keeps the anchor."""
    quiet = dict(token_noise=0.0, lang_dropout=0.0, lang_noise=0.0, state_dropout=0.0)
    batch = _bc_batch(64)
    for key in ("tokens", "state", "lang"):
        batch[key] = batch[key][:1].expand_as(batch[key]).clone()
    sign = torch.where(torch.arange(64) % 2 == 0, 1.0, -1.0)
    batch["action"] = 0.6 * sign.unsqueeze(-1).expand(64, 2).clone()
    acted = {}
    for k in (1, 3):
        agent = _agent(head_components=k, actor_ema=0.0, **quiet)
        assert isinstance(agent.actor, MixtureTanhGaussianActor) == (k > 1)
        for _ in range(400):
            agent.bc_update({key: v.clone() for key, v in batch.items()})
        acted[k] = agent.act(batch["tokens"][:1], batch["state"][:1], batch["lang"][:1], True)[0]
        if k > 1:
            feature = agent.actor_encoder(
                batch["tokens"][:1], batch["state"][:1], batch["lang"][:1]
            )
            std = agent.actor.components(feature)[1]
            assert std.mean().item() == pytest.approx(0.1, rel=0.15)
            noise = agent._noise(4, torch.device("cpu"))
            assert noise.shape == (4, 3)  # the RL steps draw the component's number too
    assert acted[1].abs().max() < 0.15
    torch.testing.assert_close(acted[3].abs(), torch.full((2,), 0.6), atol=0.05, rtol=0)
    # the actor-critic runs on it too: sampled next actions, the value and entropy terms
    metrics = _agent(head_components=3, critic_warmup=0).update(_rl_batch())
    assert math.isfinite(metrics["actor_loss"]) and math.isfinite(metrics["critic_loss"])
    with pytest.raises(ConfigError, match="agent.head_components"):
        _agent(head_components=0)
