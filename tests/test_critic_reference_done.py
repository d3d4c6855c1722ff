"""The reference done head: done judged against a reference demonstration's goal frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_episodes import make_episodes

from limbic.critic.evaluate import CriticEvalConfig, evaluate_critic, score_episodes
from limbic.critic.labels import PairSampler, PairSamplingConfig
from limbic.critic.model import CriticModelConfig, ProgressCritic, product_logit
from limbic.critic.train import CriticTrainConfig, train_critic
from limbic.critic.value import value_curves
from limbic.launch.config import ConfigError

torch.set_num_threads(1)

CFG = CriticModelConfig(
    backbone="small_cnn", image_hw=[32, 32], d_model=32, pool_heads=2, dropout=0.0
)


def _critic(reference_done: bool = True, seed: int = 0) -> ProgressCritic:
    torch.manual_seed(seed)
    return ProgressCritic(CriticModelConfig(**{**CFG.__dict__, "reference_done": reference_done}))


def _train_config(out: Path, reference_done: bool, **kw) -> CriticTrainConfig:
    model = CriticModelConfig(**{**CFG.__dict__, "reference_done": reference_done})
    settings = {"steps": 3, "batch_size": 16, "warmup_steps": 1, "progress_bar": False, **kw}
    return CriticTrainConfig(model=model, out_dir=str(out), **settings)


def _tokens(critic: ProgressCritic, b: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (b, 2, 32, 32, 3), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        return critic.encode_frames(images)


def test_the_head_reads_the_goal_frame_and_no_instruction() -> None:
    critic = _critic().eval()
    frames, goals = _tokens(critic, 4, 0), _tokens(critic, 2, 1)
    with torch.no_grad():
        z_goal = critic.embed_goal(goals)
        one = critic.reference_done_logit(frames, z_goal[:1].expand(4, -1))
        other = critic.reference_done_logit(frames, z_goal[1:].expand(4, -1))
    assert one.shape == (4,)
    assert not torch.allclose(one, other)  # another goal frame, another judgement
    # no instruction enters: the goal is embedded under the learned null instruction
    null = critic.null_lang.expand(2, -1)
    with torch.no_grad():
        assert torch.equal(z_goal, critic.embed_frame(goals, null))


def test_a_critic_without_the_head_says_which_option_it_needs() -> None:
    critic = _critic(reference_done=False)
    with pytest.raises(RuntimeError, match="critic.model.reference_done"):
        critic.embed_goal(_tokens(critic, 1, 0))
    episodes = make_episodes(2, seed=0, hw=32)
    with pytest.raises(ConfigError, match="eval.done_from"):
        score_episodes(critic, episodes, config=CriticEvalConfig(done_from="reference"))
    with pytest.raises(ConfigError, match="eval.done_from"):
        CriticEvalConfig(done_from="value")


def test_the_head_travels_in_the_checkpoint_and_older_critics_load_without_it() -> None:
    critic = _critic().eval()
    loaded = ProgressCritic.from_state(critic.export_state()).eval()
    frames, goals = _tokens(critic, 3, 0), _tokens(critic, 1, 1)
    with torch.no_grad():
        a = critic.reference_done_logit(frames, critic.embed_goal(goals).expand(3, -1))
        b = loaded.reference_done_logit(frames, loaded.embed_goal(goals).expand(3, -1))
    assert torch.equal(a, b)
    old = _critic(reference_done=False).export_state()
    del old["config"]["reference_done"]  # a checkpoint from before the option
    assert not ProgressCritic.from_state(old).config.reference_done


def test_references_are_goal_frames_of_another_success_of_the_same_instruction() -> None:
    # tasks 0 and 1 alternate; the last episode (task 0) is a failure
    episodes = make_episodes(5, seed=0, hw=16, fail_fraction=0.2)
    sampler = PairSampler(episodes, PairSamplingConfig(), seed=0)
    rng = np.random.default_rng(0)
    ep_b = np.repeat(np.arange(5), 20)
    ref_ep, ref_fr, negative = sampler.draw_references(ep_b, rng)
    assert not negative.any()  # no negatives unless asked for
    for b, e, f in zip(ep_b, ref_ep, ref_fr, strict=True):
        assert e != b and episodes[e].succeeded
        assert episodes[e].instruction == episodes[b].instruction
        assert sampler.phi[e][f] >= sampler.config.done_after - 1e-6
    # episode 3 fails: task 1's only success is episode 1, which then has no reference
    lone = PairSampler(make_episodes(4, seed=0, hw=16, fail_fraction=0.25), PairSamplingConfig())
    e, f, _ = lone.draw_references(np.array([1, 3]), rng)
    assert e[0] == -1 and f[0] == -1 and e[1] == 1


def _with_goals(episodes, goals):
    """The episodes as one task whose recordings store ``goals`` (None: no goal stored)."""
    for e, g in zip(episodes, goals, strict=True):
        e.metadata["task"] = "reach"
        if g is not None:
            e.metadata["goal"] = {"target": g}
    return episodes


def test_negative_references_show_another_goal_of_the_same_task() -> None:
    # one task, two phrasings; episodes 0-3 reach red or blue, episode 4 stores no goal
    episodes = _with_goals(make_episodes(5, seed=0, hw=16), ["red", "blue", "red", "blue", None])
    config = PairSamplingConfig(reference_negative_fraction=0.5)
    sampler = PairSampler(episodes, config, seed=0)
    rng = np.random.default_rng(0)
    ep_b = np.repeat(np.arange(5), 40)
    done_b = np.tile(np.r_[np.ones(20), np.zeros(20)], 5)
    ref_ep, ref_fr, negative = sampler.draw_references(ep_b, rng, done_b=done_b)
    goal = [e.metadata.get("goal", {}).get("target") for e in episodes]
    assert negative.any() and not negative.all()
    assert not negative[done_b == 0].any()  # only done frames become negatives
    assert not negative[ep_b == 4].any()  # no recorded goal: never a negative
    for b, e, f, neg in zip(ep_b, ref_ep, ref_fr, negative, strict=True):
        assert e != b and episodes[e].succeeded
        assert sampler.phi[e][f] >= config.done_after - 1e-6
        if neg:
            assert goal[e] is not None and goal[e] != goal[b]
        else:
            assert episodes[e].instruction == episodes[b].instruction
    share = negative[done_b == 1].sum() / (done_b[ep_b < 4] == 1).sum()
    assert 0.3 < share < 0.7
    with pytest.raises(ConfigError, match="critic.pairs.reference_negative_fraction"):
        PairSamplingConfig(reference_negative_fraction=1.0)


def test_references_by_goal_cross_phrasings_and_keep_to_the_goal() -> None:
    # instructions alternate A B A B A; the goals cross them, episode 4 stores none
    episodes = _with_goals(make_episodes(5, seed=0, hw=16), ["red", "red", "blue", "blue", None])
    goal = [e.metadata.get("goal", {}).get("target") for e in episodes]
    assert episodes[0].instruction != episodes[1].instruction
    ep_b = np.repeat(np.arange(5), 30)
    by_goal = PairSampler(episodes, PairSamplingConfig(reference_match="goal"), seed=0)
    ref_ep, _, _ = by_goal.draw_references(ep_b, np.random.default_rng(0))
    for b, e in zip(ep_b, ref_ep, strict=True):
        assert e != b and episodes[e].succeeded
        if goal[b] is not None:  # the same goal, asked for in other words
            assert goal[e] == goal[b] and episodes[e].instruction != episodes[b].instruction
        else:  # no stored goal: the same instruction
            assert episodes[e].instruction == episodes[b].instruction
    # by instruction, a red reach is referenced on a blue one: what the goal option avoids
    by_text = PairSampler(episodes, PairSamplingConfig(), seed=0)
    ref_ep, _, _ = by_text.draw_references(ep_b, np.random.default_rng(0))
    assert any(goal[e] != goal[b] for b, e in zip(ep_b[ep_b < 4], ref_ep[ep_b < 4], strict=True))
    with pytest.raises(ConfigError, match="critic.pairs.reference_match"):
        PairSamplingConfig(reference_match="colour")


def test_negative_references_are_trained_as_not_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other-goal references are trained as not done, and each weighs what its frame weighs as a
    done frame against its own goal: balanced on the targets, the up-weighted positives would
    outweigh them and a head that ignores the reference would lose little."""
    import limbic.critic.train as train_module

    episodes = _with_goals(make_episodes(4, seed=0, hw=32), ["red", "blue", "red", "blue"])
    seen: dict[str, list] = {"batch": [], "refs": [], "targets": [], "weights": []}
    sample, draw = PairSampler.sample, PairSampler.draw_references
    loss, weights = train_module._reference_done_loss, train_module.done_weights
    bce = train_module.F.binary_cross_entropy_with_logits
    inside = [False]

    def sampled(self, n, rng):
        seen["batch"].append(batch := sample(self, n, rng))
        return batch

    def drawn(self, *args, **kwargs):
        seen["refs"].append(out := draw(self, *args, **kwargs))
        return out

    def reference_loss(*args, **kwargs):
        inside[0] = True
        try:
            return loss(*args, **kwargs)
        finally:
            inside[0] = False

    def weighted(target, mask):
        out = weights(target, mask)
        if inside[0]:
            seen["weights"].append(out.detach().clone())
        return out

    def logged_bce(logit, target, *args, **kwargs):
        if inside[0]:
            seen["targets"].append(target.detach().clone())
        return bce(logit, target, *args, **kwargs)

    monkeypatch.setattr(PairSampler, "sample", sampled)
    monkeypatch.setattr(PairSampler, "draw_references", drawn)
    monkeypatch.setattr(train_module, "_reference_done_loss", reference_loss)
    monkeypatch.setattr(train_module, "done_weights", weighted)
    monkeypatch.setattr(train_module.F, "binary_cross_entropy_with_logits", logged_bce)
    pairs = PairSamplingConfig(reference_negative_fraction=0.5, mismatch_fraction=0.0)
    train_critic(_train_config(tmp_path, True, pairs=pairs, steps=3, batch_size=32), episodes)
    negatives = 0
    for batch, (ref_ep, _, negative), target, weight in zip(*seen.values(), strict=True):
        keep = (ref_ep >= 0) & batch.done_mask & ~batch.mismatch
        assert not (negative & ~keep).any()  # only frames the loss keeps
        positives = keep & (batch.done > 0.5) & ~negative
        assert int(target.sum()) == int(positives.sum())  # every negative trained as not done
        neg = torch.from_numpy(negative[keep])
        pos = torch.from_numpy(positives[keep])
        if neg.any() and pos.any():
            assert torch.allclose(weight[neg], weight[pos][0].expand(int(neg.sum())))
        negatives += int(neg.sum())
    assert negatives > 0


def test_turning_the_head_on_trains_it_on_the_same_pairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    episodes = make_episodes(4, seed=0, hw=32, fail_fraction=0.25)
    drawn: dict[str, list[np.ndarray]] = {}
    sample = PairSampler.sample

    def run(name: str, reference_done: bool) -> ProgressCritic:
        drawn[name] = []

        def recording(self, n, rng):
            batch = sample(self, n, rng)
            drawn[name].append(np.stack([batch.episode_a, batch.frame_a, batch.frame_b]))
            return batch

        monkeypatch.setattr(PairSampler, "sample", recording)
        return train_critic(_train_config(tmp_path / name, reference_done), episodes).critic

    run("plain", False)
    trained = run("with_head", True)
    # the references come from a stream of their own: every step draws the same pairs
    assert all(np.array_equal(a, b) for a, b in zip(*drawn.values(), strict=True))
    untrained = _critic()
    assert not torch.equal(trained.ref_done_mlp[0].weight, untrained.ref_done_mlp[0].weight)
    assert not torch.equal(trained.goal_cond[1].weight, untrained.goal_cond[1].weight)


def test_done_from_picks_the_source_and_falls_back_to_the_head_without_references() -> None:
    critic = _critic().eval()
    tokens, lang, goals = _tokens(critic, 6, 0), torch.randn(384), _tokens(critic, 2, 1)
    head = value_curves(critic, tokens, lang, goals, done_from="head")
    ref = value_curves(critic, tokens, lang, goals, done_from="reference")
    mean = value_curves(critic, tokens, lang, goals, done_from="mean")
    assert head.done_prob_reference is None
    assert np.array_equal(ref.done_prob, ref.done_prob_reference)
    assert np.allclose(mean.done_prob, (mean.done_prob_head + mean.done_prob_reference) / 2)
    assert np.array_equal(head.done_prob, ref.done_prob_head)
    # the reference probability is the mean over the goal frames
    z = critic.embed_goal(goals)
    with torch.no_grad():
        each = [
            torch.sigmoid(critic.reference_done_logit(tokens, z[r : r + 1].expand(6, -1))).numpy()
            for r in range(2)
        ]
    assert np.allclose(ref.done_prob_reference, np.mean(each, axis=0), atol=1e-6)
    alone = value_curves(critic, tokens, lang, None, done_from="reference")
    assert alone.done_prob_reference is None
    assert np.array_equal(alone.done_prob, head.done_prob)


def test_validation_calibrates_a_threshold_per_source_and_evaluation_uses_its_own(
    tmp_path: Path,
) -> None:
    train = make_episodes(4, seed=0, hw=32, fail_fraction=0.25)
    val = make_episodes(4, seed=5, hw=32, fail_fraction=0.25, start_index=50)
    config = _train_config(
        tmp_path / "run",
        True,
        steps=2,
        eval_every=2,
        eval=CriticEvalConfig(plots=False, done_from="reference"),
    )
    result = train_critic(config, train, val)
    assert set(result.val_metrics) >= {"done_f1_head", "done_f1_reference", "done_f1_mean"}
    loaded = ProgressCritic.from_checkpoint(result.checkpoint)
    assert set(loaded.done_thresholds) == {"head", "reference", "mean"}
    assert loaded.done_threshold == loaded.done_thresholds["reference"]
    assert result.val_metrics["done_f1"] == pytest.approx(result.val_metrics["done_f1_reference"])
    for source in ("head", "mean"):
        out = evaluate_critic(
            loaded,
            val,
            tmp_path / source,
            references=train,
            config=CriticEvalConfig(plots=False, done_from=source),
        )
        assert out["done_threshold"] == loaded.done_thresholds[source]
        assert out["done_from"] == source


def test_the_reference_done_compares_only_with_successes_of_the_same_instruction() -> None:
    critic = _critic().eval()
    episodes = make_episodes(3, seed=0, hw=32)  # instructions of tasks 0, 1, 0
    for e in episodes:
        e.metadata["task"] = "push"  # one task: the backward value may borrow across phrasings
    config = CriticEvalConfig(done_from="reference", reference_match="task", plots=False)
    scores = score_episodes(critic, episodes, config=config)
    # episode 1's instruction has no other success: a backward value from the other
    # instruction's goals, but no reference done, so its done probability is the head's
    assert scores[1].curves.backward is not None
    assert scores[1].curves.done_prob_reference is None
    assert np.array_equal(scores[1].curves.done_prob, scores[1].curves.done_prob_head)
    # episodes 0 and 2 share an instruction and are each other's reference
    for i in (0, 2):
        assert np.array_equal(scores[i].curves.done_prob, scores[i].curves.done_prob_reference)


def test_the_head_can_also_read_how_far_b_is_from_the_goal() -> None:
    """``reference_abs_diff``: ``|z_b − z_goal|`` joins the head's input; it round-trips in
    the checkpoint, and critics saved before the option load without it."""
    torch.manual_seed(0)
    critic = ProgressCritic(
        CriticModelConfig(**{**CFG.__dict__, "reference_done": True, "reference_abs_diff": True})
    ).eval()
    d = critic.config.d_model
    assert critic.ref_done_mlp[0].in_features == 4 * d
    frames, goals = _tokens(critic, 3, 0), _tokens(critic, 1, 1)
    with torch.no_grad():
        z_goal = critic.embed_goal(goals).expand(3, -1)
        logit = critic.reference_done_logit(frames, z_goal)
        # the |z_b − z_goal| block is read: zeroing its weights changes the logit
        critic.ref_done_mlp[0].weight[:, 3 * d :] = 0
        assert not torch.allclose(logit, critic.reference_done_logit(frames, z_goal))
    loaded = ProgressCritic.from_state(critic.export_state()).eval()
    with torch.no_grad():
        again = loaded.reference_done_logit(frames, loaded.embed_goal(goals).expand(3, -1))
        torch.testing.assert_close(again, critic.reference_done_logit(frames, z_goal))
    old = _critic().export_state()
    old["config"].pop("reference_abs_diff", None)
    assert ProgressCritic.from_state(old).ref_done_mlp[0].in_features == 3 * d


def _token_diff_critic() -> ProgressCritic:
    torch.manual_seed(0)
    config = {**CFG.__dict__, "reference_done": True, "reference_token_diff": True}
    critic = ProgressCritic(CriticModelConfig(**config)).eval()
    with torch.no_grad():  # a place prior that is not uniform, as training makes it
        critic.diff_place.normal_()
    return critic


def test_the_head_can_compare_the_frame_with_the_goal_place_by_place() -> None:
    """``reference_token_diff``: a frame identical to its goal frame gives the same comparison
    whatever it shows (so the head's "same as the goal" needs no colour or object of its own);
    a difference at one place changes it; only views both frames have are compared."""
    critic = _token_diff_critic()
    d = critic.config.d_model
    assert critic.ref_done_mlp[0].in_features == 4 * d
    a, b = _tokens(critic, 2, 0), _tokens(critic, 2, 1)
    with torch.no_grad():
        same_a, same_b = critic.token_difference(a, a), critic.token_difference(b, b)
        torch.testing.assert_close(same_a, same_b)
        moved = a.clone()
        moved[:, 1, 2] += 3.0  # one place of the wrist view differs from the goal
        assert not torch.allclose(critic.token_difference(moved, a), same_a)
        # the goal lacks the wrist view: the frame's wrist tokens are not compared
        wrist_gone = torch.tensor([[True, False], [True, False]])
        only_front = critic.token_difference(moved, a, mask_goal=wrist_gone)
        torch.testing.assert_close(only_front, critic.token_difference(a, a, mask_goal=wrist_gone))
        # no view in common: nothing to compare, a zero feature rather than NaN
        front_gone = torch.tensor([[False, True], [False, True]])
        none = critic.token_difference(a, b, mask_b=wrist_gone, mask_goal=front_gone)
        assert torch.equal(none, torch.zeros(2, d))
        z_goal = critic.embed_goal(b)
        with pytest.raises(ValueError, match="tokens_goal"):
            critic.reference_done_logit(a, z_goal)
        logit = critic.reference_done_logit(a, z_goal, tokens_goal=b)
    loaded = ProgressCritic.from_state(critic.export_state()).eval()
    with torch.no_grad():
        again = loaded.reference_done_logit(a, loaded.embed_goal(b), tokens_goal=b)
    torch.testing.assert_close(again, logit)
    # the comparison is trained through the head: it gets gradients
    critic.reference_done_logit(a, critic.embed_goal(b), tokens_goal=b).sum().backward()
    for p in (critic.diff_score.weight, critic.diff_value.weight, critic.diff_place):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("veto", [False, True])
def test_a_critic_with_the_token_comparison_trains_and_scores(tmp_path: Path, veto: bool) -> None:
    episodes = make_episodes(4, seed=0, hw=32)
    model = CriticModelConfig(
        **{
            **CFG.__dict__,
            "reference_done": True,
            "reference_token_diff": True,
            "reference_veto": veto,
        }
    )
    cfg = CriticTrainConfig(
        model=model,
        out_dir=str(tmp_path),
        steps=3,
        batch_size=16,
        warmup_steps=1,
        progress_bar=False,
    )
    critic = train_critic(cfg, episodes).critic  # the training path gives the goal's tokens
    scores = score_episodes(
        critic, episodes, config=CriticEvalConfig(done_from="reference", plots=False)
    )
    probs = np.concatenate([s.curves.done_prob_reference for s in scores])
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()


def test_the_head_can_read_the_comparison_alone() -> None:
    """``reference_tokens_only``: the head's input is the place-by-place comparison, so the
    goal's pooled embedding does not move it and a frame like its goal frame scores the same
    whatever it shows; the option names the one it needs."""
    torch.manual_seed(0)
    config = {**CFG.__dict__, "reference_done": True, "reference_token_diff": True}
    critic = ProgressCritic(CriticModelConfig(**{**config, "reference_tokens_only": True})).eval()
    assert critic.ref_done_mlp[0].in_features == critic.config.d_model
    a, b = _tokens(critic, 2, 0), _tokens(critic, 2, 1)
    with torch.no_grad():
        z = critic.embed_goal(b)
        logit = critic.reference_done_logit(a, z, tokens_goal=b)
        torch.testing.assert_close(critic.reference_done_logit(a, z * 0, tokens_goal=b), logit)
        assert not torch.allclose(critic.reference_done_logit(a, z, tokens_goal=a), logit)
        torch.testing.assert_close(
            critic.reference_done_logit(a, z, tokens_goal=a),
            critic.reference_done_logit(b, z, tokens_goal=b),
        )
    with pytest.raises(ConfigError, match="reference_tokens_only"):
        CriticModelConfig(**{**CFG.__dict__, "reference_tokens_only": True})


def test_product_logit_is_the_logit_of_the_product_of_probabilities() -> None:
    """Finite and exact (to float precision) from very unsure to very sure, gradients included."""
    grid = torch.tensor([-40.0, -12.0, -3.0, -0.5, 0.0, 0.7, 2.0, 9.0, 40.0], dtype=torch.float64)
    a, b = torch.meshgrid(grid, grid, indexing="ij")
    a, b = a.reshape(-1).requires_grad_(), b.reshape(-1).requires_grad_()
    logit = product_logit(a, b)
    product = torch.sigmoid(a) * torch.sigmoid(b)
    torch.testing.assert_close(torch.sigmoid(logit), product, atol=2e-6, rtol=1e-6)
    assert torch.isfinite(logit).all() and logit.max() < 14.0
    logit.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    # either factor sure of "no" makes the product "no", whatever the other says
    assert torch.sigmoid(product_logit(torch.tensor(40.0), torch.tensor(-40.0))) < 1e-12


def test_the_veto_multiplies_the_embedding_heads_probability_by_the_comparisons() -> None:
    """``reference_veto``: done = σ(embedding head) · σ(comparison-only head). A sure veto
    makes any frame not done; a frame identical to its goal frame gets the same veto whatever
    it shows; the option names the one it needs and the one it excludes."""
    torch.manual_seed(0)
    config = {**CFG.__dict__, "reference_done": True, "reference_token_diff": True}
    critic = ProgressCritic(CriticModelConfig(**{**config, "reference_veto": True})).eval()
    d = critic.config.d_model
    assert critic.ref_done_mlp[0].in_features == 3 * d  # the embeddings, no comparison
    assert critic.ref_veto_mlp[0].in_features == d  # the comparison alone
    a, b = _tokens(critic, 2, 0), _tokens(critic, 2, 1)
    with torch.no_grad():
        z = critic.embed_goal(b)
        p = torch.sigmoid(critic.reference_done_logit(a, z, tokens_goal=b))
        z_a = critic.embed_frame(a, critic.goal_cond(z))
        looks_done = torch.sigmoid(critic.ref_done_mlp(torch.cat([z_a, z, z_a - z], -1)))
        matches = torch.sigmoid(critic.ref_veto_mlp(critic.token_difference(a, b)))
        torch.testing.assert_close(p, (looks_done * matches).squeeze(-1))
        veto_same_a = critic.ref_veto_mlp(critic.token_difference(a, a))
        torch.testing.assert_close(veto_same_a, critic.ref_veto_mlp(critic.token_difference(b, b)))
        critic.ref_done_mlp[-1].bias.fill_(50.0)  # the frame looks finished, surely
        critic.ref_veto_mlp[-1].bias.fill_(-50.0)  # and does not match its reference, surely
        assert torch.sigmoid(critic.reference_done_logit(a, z, tokens_goal=b)).max() < 1e-12
    loaded = ProgressCritic.from_state(critic.export_state()).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.reference_done_logit(a, loaded.embed_goal(b), tokens_goal=b),
            critic.reference_done_logit(a, z, tokens_goal=b),
        )
    critic.train()
    critic.ref_done_mlp[-1].bias.data.zero_()
    critic.ref_veto_mlp[-1].bias.data.zero_()
    critic.reference_done_logit(a, critic.embed_goal(b), tokens_goal=b).sum().backward()
    for p in (critic.ref_veto_mlp[0].weight, critic.ref_done_mlp[0].weight, critic.diff_place):
        assert p.grad is not None and p.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="reference_veto"):
        CriticModelConfig(**{**CFG.__dict__, "reference_veto": True})
    with pytest.raises(ConfigError, match="exclusive"):
        CriticModelConfig(**{**config, "reference_veto": True, "reference_tokens_only": True})
