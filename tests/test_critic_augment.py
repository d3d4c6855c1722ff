"""Critic augmentation on cached tokens: perturbed instructions and token-grid shifts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_episodes import make_episodes

from limbic.critic.augment import (
    InstructionAugConfig,
    InstructionVariants,
    perturb_instruction,
    shift_tokens,
    token_grid,
)
from limbic.critic.model import CriticModelConfig
from limbic.critic.train import CriticTrainConfig, train_critic
from limbic.launch.config import ConfigError

torch.set_num_threads(1)

INSTRUCTIONS = ["push the red cube onto the blue square", "reach the green ball"]


def test_perturbed_copies_keep_words_of_the_original_and_borrow_only_training_words() -> None:
    cfg = InstructionAugConfig(p=1.0, variants=200, delete=0.3, swap=0.5, insert=0.5)
    variants = InstructionVariants(INSTRUCTIONS, cfg)
    assert variants.texts[:2] == INSTRUCTIONS  # originals first, indices unchanged
    assert len(variants.texts) == 2 + 2 * 200
    vocabulary = {w for t in INSTRUCTIONS for w in t.split()}
    push_copies = variants.texts[2:202]
    assert len(set(push_copies)) > 50  # real variety, not one edit repeated
    for copy in push_copies:
        words = copy.split()
        assert len(words) >= 2
        assert set(words) <= vocabulary
        own = [w for w in words if w in INSTRUCTIONS[0].split()]
        assert len(own) >= 2  # at least two of its own words survive
    # each edit happens: a deletion, a swap (same words, other order), an insertion
    assert any(len(c.split()) < 7 for c in push_copies)
    assert any(
        sorted(c.split()) == sorted(INSTRUCTIONS[0].split()) and c != INSTRUCTIONS[0]
        for c in push_copies
    )
    assert any(set(c.split()) & {"reach", "green", "ball"} for c in push_copies)


def test_perturbation_of_a_two_word_instruction_keeps_both_words() -> None:
    rng = np.random.default_rng(0)
    cfg = InstructionAugConfig(p=1.0, delete=0.99, swap=0.0, insert=0.0)
    assert all(perturb_instruction("stop now", [], rng, cfg) == "stop now" for _ in range(20))


def test_draw_swaps_in_copies_of_the_same_instruction_at_rate_p() -> None:
    variants = InstructionVariants(INSTRUCTIONS, InstructionAugConfig(p=0.3, variants=4))
    index = np.array([0, 1] * 5000)
    drawn = variants.draw(index, np.random.default_rng(1))
    copied = drawn >= 2
    assert copied.mean() == pytest.approx(0.3, abs=0.02)
    owner = (drawn[copied] - 2) // 4  # a copy of instruction i lies in block i
    assert np.array_equal(owner, index[copied])
    assert np.array_equal(drawn[~copied], index[~copied])
    off = InstructionVariants(INSTRUCTIONS, InstructionAugConfig(p=0.0))
    assert off.texts == INSTRUCTIONS
    assert np.array_equal(off.draw(index, np.random.default_rng(1)), index)


def test_shift_moves_the_grid_and_repeats_edge_cells() -> None:
    grid = torch.arange(12.0).reshape(3, 4)  # one view, 3 x 4 tokens, 1 channel
    tokens = torch.stack([grid.flatten(), 100 + grid.flatten()])[None, :, :, None].repeat(
        2, 1, 1, 1
    )
    out = shift_tokens(tokens, (3, 4), np.array([1, 0]), np.array([0, -2]), views=[0])
    down = out[0, 0, :, 0].reshape(3, 4)
    assert torch.equal(down[1:], grid[:-1]) and torch.equal(down[0], grid[0])
    left = out[1, 0, :, 0].reshape(3, 4)
    assert torch.equal(left[:, :2], grid[:, 2:]) and torch.equal(left[:, 2], grid[:, 3])
    assert torch.equal(out[:, 1], tokens[:, 1])  # the view not named stays put
    assert torch.equal(
        shift_tokens(tokens, (3, 4), np.zeros(2, int), np.zeros(2, int), [0, 1]), tokens
    )


def test_token_grid_of_square_strides_and_a_clear_error_otherwise() -> None:
    assert token_grid((128, 128), 64) == (8, 8)
    assert token_grid((96, 128), 12) == (3, 4)
    with pytest.raises(ValueError, match="token_shift"):
        token_grid((128, 128), 65)  # e.g. a class token


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match="lang_aug.p"):
        InstructionAugConfig(p=1.5)
    with pytest.raises(ConfigError, match="token_shift_views"):
        CriticTrainConfig(token_shift=1, token_shift_views=["top"])
    CriticTrainConfig(token_shift_views=["top"])  # ignored while the shift is off


def test_augmented_training_runs_and_resumes_exactly(tmp_path: Path) -> None:
    episodes = make_episodes(4, seed=0, hw=32, fail_fraction=0.25)

    def config(out: str) -> CriticTrainConfig:
        return CriticTrainConfig(
            model=CriticModelConfig(image_hw=[32, 32], d_model=32, pool_heads=2),
            lang_aug=InstructionAugConfig(p=0.5, variants=3),
            token_shift=1,
            steps=5,
            batch_size=16,
            warmup_steps=2,
            out_dir=str(tmp_path / out),
            checkpoint_every=2,
            progress_bar=False,
        )

    straight = train_critic(config("straight"), episodes)
    train_critic(config("resumed"), episodes, stop_at_step=3)
    resumed = train_critic(config("resumed"), episodes)
    plain = train_critic(
        CriticTrainConfig(
            **{**config("plain").__dict__, "lang_aug": InstructionAugConfig(), "token_shift": 0}
        ),
        episodes,
    )
    a, b, c = (r.critic.state_dict() for r in (straight, resumed, plain))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the augmentation changed training
