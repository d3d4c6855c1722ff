"""Critic training: view dropout, checkpoint/resume exactness, logs, and learning on toy episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_episodes import make_episodes

from limbic.critic.evaluate import CriticEvalConfig, evaluate_critic
from limbic.critic.model import CriticModelConfig, ProgressCritic
from limbic.critic.train import (
    CriticTrainConfig,
    done_weights,
    drop_views,
    selection_score,
    train_critic,
)

torch.set_num_threads(1)


def test_done_weights_give_each_class_half_the_labelled_mass() -> None:
    target = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])  # one done, four not done labelled
    w = done_weights(target, mask)
    assert torch.allclose(w, torch.tensor([4.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]))
    pos_mass = float((w * (target > 0.5)).sum())
    assert pos_mass == pytest.approx(float((w * (target < 0.5)).sum()))
    # one class absent: plain mask; extreme imbalance: capped
    assert torch.equal(done_weights(torch.zeros(3), torch.ones(3)), torch.ones(3))
    t = torch.zeros(101)
    t[0] = 1.0
    assert float(done_weights(t, torch.ones(101), max_ratio=20.0)[0]) == pytest.approx(20.0)


def test_drop_views_keeps_one_present_view() -> None:
    present = torch.tensor([[True, True], [True, False], [False, True]]).repeat(200, 1)
    kept = drop_views(present, 0.5, torch.Generator().manual_seed(0))
    assert torch.all(kept.sum(1) >= 1)
    assert not torch.any(kept & ~present)  # never resurrects a missing view
    assert kept[0::3].sum() < 0.7 * present[0::3].sum()  # and does drop (expected 0.625)
    assert torch.equal(drop_views(present, 0.0, torch.Generator()), present)


def _config(tmp_path: Path, backbone: str, steps: int, **kw) -> CriticTrainConfig:
    model = CriticModelConfig(backbone=backbone, image_hw=[32, 32], d_model=32, pool_heads=2)
    return CriticTrainConfig(
        model=model,
        steps=steps,
        batch_size=16,
        warmup_steps=2,
        out_dir=str(tmp_path),
        checkpoint_every=3,
        log_every=1,
        progress_bar=False,
        **kw,
    )


@pytest.mark.parametrize(
    "backbone", ["efficientnet_lite0:stride16", "small_cnn"]
)  # cached tokens / trained backbone
def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path: Path, backbone: str) -> None:
    episodes = make_episodes(4, seed=0, hw=32, fail_fraction=0.25)
    straight = train_critic(_config(tmp_path / "straight", backbone, 6), episodes)
    first = train_critic(
        _config(tmp_path / "resumed", backbone, 6), episodes, stop_at_step=4
    )  # "preempted"
    assert first.step == 4
    resumed = train_critic(_config(tmp_path / "resumed", backbone, 6), episodes)
    assert resumed.step == 6
    a, b = straight.critic.state_dict(), resumed.critic.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and the run really trained: weights moved from their initialisation
    torch.manual_seed(0)
    init = ProgressCritic(_config(tmp_path, backbone, 1).model).state_dict()
    assert not torch.equal(init["pair_mlp.0.weight"], a["pair_mlp.0.weight"])
    # the checkpoint is a loadable critic, and TensorBoard got the losses
    loaded = ProgressCritic.from_checkpoint(resumed.checkpoint)
    assert torch.equal(loaded.state_dict()["pair_mlp.0.weight"], b["pair_mlp.0.weight"])
    assert list((tmp_path / "resumed" / "tb").glob("events.out.tfevents.*"))


def test_resume_refuses_a_different_model(tmp_path: Path) -> None:
    episodes = make_episodes(2, seed=0, hw=32)
    train_critic(_config(tmp_path, "small_cnn", 1), episodes)
    other = _config(tmp_path, "small_cnn", 2)
    other.model.d_model = 64
    with pytest.raises(ValueError, match="resume: .* model config"):
        train_critic(other, episodes)


@pytest.mark.slow
def test_training_improves_held_out_voc_over_the_untrained_critic(tmp_path: Path) -> None:
    train = make_episodes(24, seed=1, hw=64, fail_fraction=0.25)
    held_out = make_episodes(8, seed=2, hw=64, fail_fraction=0.25, start_index=100)  # unseen seeds
    model = CriticModelConfig(image_hw=[64, 64], d_model=64)  # default backbone
    eval_cfg = CriticEvalConfig(plots=False)
    torch.manual_seed(0)
    before = evaluate_critic(ProgressCritic(model), held_out, tmp_path / "before", config=eval_cfg)
    result = train_critic(
        CriticTrainConfig(
            model=model,
            steps=400,
            batch_size=64,
            warmup_steps=30,
            out_dir=str(tmp_path / "run"),
            progress_bar=False,
            eval_every=0,
        ),
        train,
        val_episodes=held_out,
    )
    after = evaluate_critic(result.critic, held_out, tmp_path / "after", references=train)
    print(
        f"held-out before: {before['voc']:.3f} voc, {before['voc_f1']:.3f} voc_f1; after: {after['voc']:.3f}, {after['voc_f1']:.3f}"
    )
    assert after["voc"] > before["voc"] + 0.5
    assert after["voc"] > 0.6 and after["voc_f1"] > 0.75
    assert np.isfinite(result.val_metrics["voc"])
    assert len(list((tmp_path / "after" / "curves").glob("*.png"))) == len(held_out)
    assert (tmp_path / "after" / "metrics.json").exists()


def test_best_done_threshold_picks_the_f1_best_cut() -> None:
    from limbic.critic.metrics import best_done_threshold

    # done frames score 0.7-0.8, not-done 0.1-0.6: any cut in (0.6, 0.7] separates them
    prob = np.array([0.1, 0.3, 0.6, 0.55, 0.7, 0.8, 0.75])
    labels = np.array([0, 0, 0, 0, 1, 1, 1], dtype=np.float32)
    labelled = np.ones(7, dtype=bool)
    t, f1 = best_done_threshold(prob, labels, labelled)
    assert 0.6 < t <= 0.7 and f1 == pytest.approx(1.0)
    # 0.5 would have admitted two false positives
    from limbic.critic.metrics import done_precision_recall_f1

    assert done_precision_recall_f1(prob, labels, labelled, 0.5)[2] < 0.8


def test_validation_calibrates_the_threshold_and_keeps_the_best_checkpoint(
    tmp_path: Path,
) -> None:
    train = make_episodes(4, seed=0, hw=32, fail_fraction=0.25)
    val = make_episodes(3, seed=5, hw=32, fail_fraction=0.34, start_index=50)
    cfg = _config(tmp_path, "small_cnn", 6, eval_every=3)
    cfg.eval.mismatch_pairs = 2
    result = train_critic(cfg, train, val_episodes=val)
    assert result.best_checkpoint is not None and result.best_checkpoint.name == "best.pt"
    best = torch.load(result.best_checkpoint, weights_only=True)
    assert best["step"] in (3, 6)
    assert best["selection_score"] == pytest.approx(selection_score(best["val_metrics"]))
    # the calibrated threshold is on the grid, saved with the critic and read back
    t = result.val_metrics["done_threshold"]
    assert 0.05 <= t <= 0.95 and result.critic.done_threshold == t
    assert ProgressCritic.from_checkpoint(result.checkpoint).done_threshold == t
    assert ProgressCritic.from_checkpoint(result.best_checkpoint).done_threshold == pytest.approx(
        best["critic"]["done_threshold"]
    )
    # evaluation uses the checkpoint's threshold unless told otherwise
    ev = evaluate_critic(
        result.critic, val, tmp_path / "ev", config=CriticEvalConfig(plots=False, mismatch_pairs=2)
    )
    assert ev["done_threshold"] == t
    fixed = evaluate_critic(
        result.critic,
        val,
        tmp_path / "ev2",
        config=CriticEvalConfig(plots=False, mismatch_pairs=2, done_threshold=0.5),
    )
    assert fixed["done_threshold"] == 0.5


def test_selection_score_counts_missing_figures_as_zero() -> None:
    perfect = dict(voc=1.0, voc_f1=1.0, done_f1=1.0, cls_acc=1.0, mismatch=0.0)
    assert selection_score(perfect) == pytest.approx(1.0)
    assert selection_score({**perfect, "voc": float("nan")}) == pytest.approx(0.8)
    assert selection_score({**perfect, "mismatch": 1.0}) == pytest.approx(0.8)


def test_tokens_kept_on_disk_are_reused_and_train_the_same_critic(tmp_path: Path) -> None:
    """A run with ``token_cache_dir`` trains exactly the critic a run without it does; the next
    run reads every episode's tokens back instead of running the backbone; a changed frame, a
    different dtype or an unreadable file is computed afresh."""
    from limbic.critic.features import FrameTokens

    episodes = make_episodes(3, seed=0, hw=32, fail_fraction=0.34)
    cache = tmp_path / "tokens"
    backbone = "efficientnet_lite0:stride16"
    plain = train_critic(_config(tmp_path / "plain", backbone, 4), episodes)
    cached = train_critic(
        _config(tmp_path / "cached", backbone, 4, token_cache_dir=str(cache)), episodes
    )
    files = sorted(cache.glob("*.pt"))
    assert len(files) == len(episodes)
    a, b = plain.critic.state_dict(), cached.critic.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    critic = cached.critic
    again = FrameTokens(critic, episodes, cache_dir=cache)
    assert again.store is not None and (again.store.hits, again.store.misses) == (3, 0)
    fresh = FrameTokens(critic, episodes)
    assert torch.equal(again.tokens, fresh.tokens) and torch.equal(again.present, fresh.present)

    episodes[0].images["front"][0, 0, 0] ^= 255  # one pixel of one frame changed
    changed = FrameTokens(critic, episodes, cache_dir=cache)
    assert (changed.store.hits, changed.store.misses) == (2, 1)
    other_dtype = FrameTokens(critic, episodes, cache_dtype="float32", cache_dir=cache)
    assert other_dtype.store.misses == 3 and other_dtype.tokens.dtype == torch.float32

    victim = changed.store.path(episodes[1])
    victim.write_bytes(b"not a tensor file")
    with pytest.warns(UserWarning, match="unreadable"):
        healed = FrameTokens(critic, episodes, cache_dir=cache)
    assert healed.store.misses == 1
    assert torch.equal(healed.tokens, changed.tokens)
    assert not list(cache.glob("*.tmp*"))  # written under a temporary name, then renamed


def test_colour_tokens_share_the_plain_backbones_cache(tmp_path: Path) -> None:
    """A ``+rgb`` critic reads the files a plain-backbone critic wrote (no second backbone pass)
    and gets the tokens its own backbone computes, colour channels included; its own misses are
    written as plain tokens that the plain critic then reads."""
    from limbic.critic.features import FrameTokens

    episodes = make_episodes(3, seed=0, hw=32, fail_fraction=0.34)
    cache = tmp_path / "tokens"
    plain = ProgressCritic(_config(tmp_path, "efficientnet_lite0:stride16", 1).model)
    rgb = ProgressCritic(_config(tmp_path, "efficientnet_lite0:stride16+rgb", 1).model)
    written = FrameTokens(plain, episodes[:2], cache_dir=cache)
    assert written.store.misses == 2
    shared = FrameTokens(rgb, episodes, cache_dir=cache)
    assert (shared.store.hits, shared.store.misses) == (2, 1)
    assert len(list(cache.glob("*.pt"))) == 3
    fresh = FrameTokens(rgb, episodes)  # the +rgb backbone itself, no cache
    assert shared.tokens.shape == fresh.tokens.shape
    assert shared.tokens.shape[-1] == plain.backbone.feature_dim + 3
    assert torch.equal(shared.tokens, fresh.tokens)
    back = FrameTokens(plain, episodes, cache_dir=cache)
    assert (back.store.hits, back.store.misses) == (3, 0)
    assert torch.equal(back.tokens, shared.tokens[..., :-3])


def test_a_fine_tune_starts_from_the_weights_and_thresholds_of_its_checkpoint(
    tmp_path: Path,
) -> None:
    episodes = make_episodes(3, seed=0, hw=32, fail_fraction=0.34)
    base = ProgressCritic(_config(tmp_path, "small_cnn", 1).model)
    base.done_threshold = 0.73
    base.done_thresholds = {"head": 0.73, "reference": 0.61}
    torch.save({"critic": base.export_state()}, tmp_path / "base.pt")
    # a learning rate too small to move the weights: what comes out is where it started
    cfg = _config(tmp_path / "ft", "small_cnn", 2, init_from=str(tmp_path / "base.pt"), lr=1e-12)
    result = train_critic(cfg, episodes)
    start, tuned = base.state_dict(), result.critic.state_dict()
    for k in start:
        assert torch.allclose(start[k], tuned[k], atol=1e-6), k
    # no validation to calibrate again: the checkpoint's thresholds are kept, not reset to 0.5
    for critic in (result.critic, ProgressCritic.from_checkpoint(result.checkpoint)):
        assert critic.done_threshold == pytest.approx(0.73)
        assert critic.done_thresholds == pytest.approx({"head": 0.73, "reference": 0.61})
    # a checkpoint of another model is named, not half-loaded
    other = _config(tmp_path / "ft2", "small_cnn", 2, init_from=str(tmp_path / "base.pt"))
    other.model.d_model = 64
    with pytest.raises(ValueError, match="critic.init_from: .* model config"):
        train_critic(other, episodes)
