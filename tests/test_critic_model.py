"""The ProgressCritic interface: shapes, ranges, caching split, missing views, language, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from limbic.critic.model import CriticModelConfig, ProgressCritic
from limbic.launch.config import ConfigError

torch.set_num_threads(1)

CFG = CriticModelConfig(
    backbone="small_cnn",
    views=["front", "wrist"],
    image_hw=[32, 32],
    d_model=32,
    pool_heads=2,
    dropout=0.0,
)


@pytest.fixture(scope="module")
def critic() -> ProgressCritic:
    torch.manual_seed(0)
    return ProgressCritic(CFG).eval()


def _images(b: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (b, 2, 32, 32, 3), dtype=torch.uint8, generator=g)


def _lang(b: int, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(
        torch.randn(b, 384, generator=torch.Generator().manual_seed(seed)), dim=-1
    )


def test_forward_shapes_and_ranges(critic: ProgressCritic) -> None:
    with torch.no_grad():
        progress, done = critic(_images(3, 0), _images(3, 1), _lang(3))
    assert progress.shape == (3,) and done.shape == (3,)
    assert progress.dtype == torch.float32 and done.dtype == torch.float32
    assert torch.all(progress.abs() <= 1) and torch.all((done >= 0) & (done <= 1))
    assert critic.metadata() == {
        "views": ["front", "wrist"],
        "image_hw": [32, 32],
        "lang_dim": 384,
        "backbone": "small_cnn",
        "num_tokens": 4,
        "feature_dim": 128,
    }


def test_cached_tokens_plus_head_equal_forward(critic: ProgressCritic) -> None:
    a, b, lang = _images(2, 0), _images(2, 1), _lang(2)
    with torch.no_grad():
        progress, done = critic(a, b, lang)
        p2, d_logit = critic.head(critic.encode_frames(a), critic.encode_frames(b), lang)
    torch.testing.assert_close(p2, progress)
    torch.testing.assert_close(torch.sigmoid(d_logit), done)
    # numpy uint8 in, same answer
    with torch.no_grad():
        p3, _ = critic(a.numpy(), b.numpy(), lang)
    torch.testing.assert_close(p3, progress)


def test_zeroed_view_is_missing_and_ignored(critic: ProgressCritic) -> None:
    a, b, lang = _images(2, 0), _images(2, 1), _lang(2)
    a[:, 1] = 0
    b[:, 1] = 0
    mask = torch.tensor([[True, False], [True, False]])
    with torch.no_grad():
        auto, _ = critic(a, b, lang)
        explicit, _ = critic(a, b, lang, mask, mask)
        other = b.clone()
        other[:, 1] = 77  # content of a masked view must not matter
        masked_other, _ = critic(a, other, lang, mask, mask)
    torch.testing.assert_close(auto, explicit)
    torch.testing.assert_close(masked_other, explicit)
    with pytest.raises(ValueError, match="at least one present view"):
        critic(a, b, lang, torch.zeros(2, 2, dtype=torch.bool), mask)


def test_language_conditions_the_frame_embedding(critic: ProgressCritic) -> None:
    """Language acts on the visual tokens (FiLM, pooling), not only on the final head."""
    tokens = critic.encode_frames(_images(1, 0))
    with torch.no_grad():
        for block in critic.film_blocks:  # FiLM starts as identity; give it some weight
            torch.nn.init.normal_(block.film.weight, std=0.5)
        z1 = critic.embed_frame(tokens, critic.embed_lang(_lang(1, 0)))
        z2 = critic.embed_frame(tokens, critic.embed_lang(_lang(1, 1)))
        for block in critic.film_blocks:
            torch.nn.init.zeros_(block.film.weight)
    assert not torch.allclose(z1, z2)


def test_bad_inputs_name_the_argument(critic: ProgressCritic) -> None:
    with pytest.raises(ValueError, match=r"images_b: expected shape \(B, 2, 32, 32, 3\)"):
        critic(_images(1), torch.zeros(1, 2, 16, 16, 3, dtype=torch.uint8), _lang(1))
    with pytest.raises(ValueError, match=r"lang: expected shape \(B, 384\)"):
        critic(_images(1), _images(1), torch.zeros(1, 10))
    with pytest.raises(ConfigError, match="critic.model.d_model"):
        CriticModelConfig(d_model=30, pool_heads=4)


def test_predict_with_instruction_strings(critic: ProgressCritic) -> None:
    progress, done = critic.predict(
        _images(2, 0), _images(2, 1), ["push the red block", "push the blue block"]
    )
    assert isinstance(progress, np.ndarray) and progress.shape == (2,) and done.shape == (2,)


def test_checkpoint_round_trip(critic: ProgressCritic, tmp_path: Path) -> None:
    path = tmp_path / "critic.pt"
    torch.save(critic.export_state(), path)
    loaded = ProgressCritic.from_checkpoint(path)
    a, b, lang = _images(2, 0), _images(2, 1), _lang(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(a, b, lang), critic(a, b, lang))
    assert not loaded.training
    with pytest.raises(FileNotFoundError, match="no such file"):
        ProgressCritic.from_checkpoint(tmp_path / "missing.pt")


def test_match_gate_scales_progress(critic: ProgressCritic) -> None:
    a, b, lang = _images(3, 0), _images(3, 1), _lang(3)
    with torch.no_grad():
        lang_d = critic.embed_lang(lang)
        z_a = critic.embed_frame(critic.encode_frames(a), lang_d)
        z_b = critic.embed_frame(critic.encode_frames(b), lang_d)
        raw = torch.tanh(critic.pair_mlp(torch.cat([z_a, z_b, z_b - z_a, lang_d], -1)).squeeze(-1))
        gate = torch.sigmoid(critic.match_logit(z_a, z_b, lang_d))
        torch.testing.assert_close(critic.pair_head(z_a, z_b, lang_d), raw * gate)
        # a gate that says "wrong instruction" silences progress whatever the frames
        bias = critic.match_mlp[-1].bias
        saved = bias.clone()
        bias.fill_(-30.0)
        try:
            assert critic.pair_head(z_a, z_b, lang_d).abs().max() < 1e-9
        finally:
            bias.copy_(saved)  # the module-scoped critic is shared with other tests


def test_a_critic_saved_before_the_match_gate_loads_without_one(tmp_path: Path) -> None:
    torch.manual_seed(0)
    old = ProgressCritic(CriticModelConfig(**{**CFG.__dict__, "match_gate": False})).eval()
    state = old.export_state()
    del state["config"]["match_gate"]  # what an older checkpoint holds
    del state["done_threshold"]
    torch.save(state, tmp_path / "old.pt")
    loaded = ProgressCritic.from_checkpoint(tmp_path / "old.pt")
    assert loaded.match_mlp is None and loaded.done_threshold == 0.5
    a, b, lang = _images(2, 0), _images(2, 1), _lang(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(a, b, lang), old(a, b, lang))
    with pytest.raises(RuntimeError, match="no match gate"):
        loaded.match_logit(torch.zeros(1, 32), torch.zeros(1, 32), torch.zeros(1, 32))


def test_pixel_colour_channels_are_projected_apart_from_the_features() -> None:
    """With a ``+rgb`` backbone the last three token channels (each cell's mean colour) reach the
    frame embedding through their own projection, not through the features' layer norm, so
    two frames whose features agree and whose colours differ embed differently."""
    torch.manual_seed(0)
    cfg = CriticModelConfig(
        backbone="small_cnn+rgb", image_hw=[32, 32], d_model=32, pool_heads=2, dropout=0.0
    )
    critic = ProgressCritic(cfg).eval()
    assert critic.colour_dim == 3 and critic.colour_proj is not None
    assert critic.token_proj[1].in_features == critic.backbone.feature_dim - 3
    tokens = torch.randn(2, 2, critic.num_tokens, critic.backbone.feature_dim)
    recoloured = tokens.clone()
    recoloured[..., -3:] = torch.tensor([-1.0, 0.7, 0.8])  # another colour everywhere
    lang = critic.embed_lang(torch.randn(2, 384))
    with torch.no_grad():
        assert not torch.allclose(
            critic.embed_frame(tokens, lang), critic.embed_frame(recoloured, lang)
        )
        critic.colour_proj.weight.zero_()
        torch.testing.assert_close(
            critic.embed_frame(tokens, lang), critic.embed_frame(recoloured, lang)
        )
    plain = ProgressCritic(CriticModelConfig(**{**cfg.__dict__, "backbone": "small_cnn"}))
    assert plain.colour_dim == 0 and plain.colour_proj is None
