"""Critic pair labels on hand-computed cases, and the balanced pair sampler."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from limbic.critic.labels import (
    PairSampler,
    PairSamplingConfig,
    apply_hop,
    done_labels,
    episode_progress,
    finished_frame,
    hop_progress,
    still_segments,
    task_end,
)
from limbic.data.schema import EpisodeArrays
from limbic.launch.config import ConfigError


def _episode(
    n: int,
    success: bool = True,
    instruction: str = "push",
    index: int = 0,
    images=None,
    progress=None,
) -> EpisodeArrays:
    if images is None:
        # Every frame visibly different: the scene brightens step by step.
        images = np.repeat((np.arange(n) * 200 // n).astype(np.uint8), 16 * 16 * 3).reshape(
            n, 16, 16, 3
        )
    succ = np.zeros(n, dtype=bool)
    succ[-1] = success
    meta = {} if progress is None else {"progress": np.asarray(progress, dtype=np.float32)}
    return EpisodeArrays(
        episode_index=index,
        instruction=instruction,
        images={"front": images},
        state=np.zeros((n, 2), np.float32),
        action=np.zeros((n, 2), np.float32),
        reward=succ.astype(np.float32),
        success=succ,
        done=np.eye(n, dtype=bool)[-1],
        intervention=np.zeros(n, dtype=bool),
        metadata=meta,
    )


def test_hop_progress_hand_computed() -> None:
    assert hop_progress(0.2, 0.6) == pytest.approx(0.5)  # (0.6 - 0.2) / (1 - 0.2)
    assert hop_progress(0.8, 0.2) == pytest.approx(-0.75)  # (0.2 - 0.8) / 0.8
    assert hop_progress(0.0, 1.0) == pytest.approx(1.0)
    assert hop_progress(1.0, 0.0) == pytest.approx(-1.0)
    assert hop_progress(0.4, 0.4) == 0.0
    assert hop_progress(1.0, 1.0) == 0.0 and hop_progress(0.0, 0.0) == 0.0
    # VLAC's forward form Δt / (T − i) for time-based progress: i=2, j=5, T=10.
    assert hop_progress(2 / 10, 5 / 10) == pytest.approx(3 / 8)


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_apply_hop_inverts_hop_progress(phi_a: float, phi_b: float) -> None:
    c = hop_progress(phi_a, phi_b)
    assert -1.0 <= c <= 1.0
    assert apply_hop(phi_a, c) == pytest.approx(phi_b, abs=1e-5)


def test_episode_progress_sources() -> None:
    np.testing.assert_allclose(episode_progress(_episode(5)), [0, 0.25, 0.5, 0.75, 1.0])
    assert episode_progress(_episode(5, success=False)) is None
    stored = [0.0, 0.2, 0.1, 0.3, 0.3]
    np.testing.assert_allclose(
        episode_progress(_episode(5, success=False, progress=stored)), stored
    )
    with pytest.raises(ValueError, match=r"metadata\['progress'\]"):
        episode_progress(_episode(5, progress=[0.0, 2.0, 0, 0, 0]))
    # the ablation ignores a stored progress: time for a success, nothing for a failure
    assert episode_progress(_episode(5, success=False, progress=stored), stored=False) is None
    np.testing.assert_allclose(
        episode_progress(_episode(5, progress=stored), stored=False), [0, 0.25, 0.5, 0.75, 1.0]
    )


def test_a_failure_with_stored_progress_gets_progress_labels_unless_told_not_to() -> None:
    episodes = [_episode(20, instruction="push red", index=i) for i in range(3)]
    episodes.append(
        _episode(
            15, success=False, instruction="push red", index=3, progress=np.linspace(0, 0.6, 15)
        )
    )
    rng = np.random.default_rng(0)
    for stored in (True, False):
        cfg = PairSamplingConfig(
            mismatch_fraction=0.0, goal_anchor_fraction=0.0, stored_progress=stored
        )
        batch = PairSampler(episodes, cfg, seed=0).sample(256, rng)
        failure = batch.episode_b == 3
        assert failure.any()
        assert bool(batch.progress_mask[failure].any()) == stored


def test_done_labels_last_5_and_first_80_percent() -> None:
    label, labelled = done_labels(_episode(21))  # t / 20
    np.testing.assert_array_equal(np.flatnonzero(label), [19, 20])
    np.testing.assert_array_equal(np.flatnonzero(~labelled), [16, 17, 18])
    label, labelled = done_labels(_episode(21, success=False))
    assert not label.any() and labelled.all()
    label, _ = done_labels(_episode(4))
    assert label[-1] == 1.0  # the last frame of a success is always done


def _settled(n: int, first_success_step: int, **kw) -> EpisodeArrays:
    """A success whose flag is set from ``first_success_step`` on: the recorder's settle steps
    follow it up to frame ``n − 1``."""
    episode = _episode(n, **kw)
    episode.success[:] = False
    episode.success[first_success_step:] = True
    return episode


def test_the_finished_frame_is_the_one_after_the_first_successful_step() -> None:
    # a step's flag judges the state its action led to, which the next frame shows
    assert finished_frame(_settled(12, 3)) == 4
    assert task_end(_settled(12, 3)) == 4
    assert task_end(_settled(12, 3), finish_at_success=False) == 11
    # the episode ends on the step that succeeds: no frame shows the finished task
    assert finished_frame(_episode(12)) is None and task_end(_episode(12)) == 11
    assert finished_frame(_episode(12, success=False)) is None


def test_settle_frames_after_the_finished_frame_are_progress_one_and_done() -> None:
    """A success that settles for 7 frames after frame 4 shows it finished: time-based progress
    reaches 1 on frame 4 and stays there, and every frame from 4 on is done, where the rule over
    the whole recording would call most of them in progress and not done."""
    episode = _settled(12, 3)
    np.testing.assert_allclose(episode_progress(episode), [0, 0.25, 0.5, 0.75] + [1.0] * 8)
    label, labelled = done_labels(episode)
    np.testing.assert_array_equal(np.flatnonzero(label), range(4, 12))
    assert labelled.all()  # frame 3 is at 75 % of the way to frame 4: not done
    # over the whole recording instead
    np.testing.assert_allclose(
        episode_progress(episode, finish_at_success=False), np.arange(12) / 11, rtol=1e-6
    )
    label, labelled = done_labels(episode, finish_at_success=False)
    np.testing.assert_array_equal(np.flatnonzero(label), [11])
    np.testing.assert_array_equal(np.flatnonzero(~labelled), [9, 10])
    # a stored true progress is the label either way
    stored = np.linspace(0, 1, 12)
    episode.metadata["progress"] = stored
    np.testing.assert_allclose(episode_progress(episode), stored, rtol=1e-6)


def test_sampled_pairs_among_settle_frames_are_zero_and_they_are_goal_frames() -> None:
    episodes = [_settled(12, 3, instruction="push red", index=i) for i in range(3)]
    for finish in (True, False):
        cfg = PairSamplingConfig(
            mismatch_fraction=0.0, goal_anchor_fraction=0.0, finish_at_success=finish
        )
        sampler = PairSampler(episodes, cfg, seed=0)
        batch = sampler.sample(512, np.random.default_rng(0))
        settled = (batch.frame_a >= 4) & (batch.frame_b >= 4)
        assert settled.any()
        assert np.all(batch.progress[settled] == 0.0) == finish
        assert np.all(batch.done[batch.frame_b >= 4] == 1.0) == finish
        goal_frames = sorted({t for _, t in sampler.goal_frames[0]})
        assert goal_frames == (list(range(4, 12)) if finish else [11])


def test_still_segments_group_frames_without_visible_change() -> None:
    base = np.full((6, 8, 8, 3), 100, dtype=np.uint8)
    base[2] += 1  # sensor noise: not a visible change
    base[3:5] = 180
    base[5] = 20
    np.testing.assert_array_equal(
        still_segments({"front": base}, threshold=2.0, stride=1), [0, 0, 0, 1, 1, 2]
    )


def test_config_rejects_bad_values_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="critic.pairs.mismatch_fraction"):
        PairSamplingConfig(mismatch_fraction=0.7)


def _sampler(**kw) -> PairSampler:
    episodes = [
        _episode(20 + i, instruction=("push red" if i % 2 else "push blue"), index=i)
        for i in range(6)
    ]
    episodes.append(_episode(15, success=False, instruction="push red", index=6))
    return PairSampler(episodes, PairSamplingConfig(**kw), seed=0)


def test_sampled_labels_follow_the_hop_rule() -> None:
    sampler = _sampler(mismatch_fraction=0.0, goal_anchor_fraction=0.0)
    batch = sampler.sample(512, np.random.default_rng(0))
    for j in range(len(batch)):
        ea, eb = int(batch.episode_a[j]), int(batch.episode_b[j])
        assert ea == eb
        phi = sampler.phi[eb]
        if phi is None:  # the failure without stored progress: done labels only
            assert not batch.progress_mask[j]
            assert batch.done_mask[j] and batch.done[j] == 0.0
            continue
        expected = hop_progress(phi[batch.frame_a[j]], phi[batch.frame_b[j]])
        assert batch.progress[j] == pytest.approx(float(expected), abs=1e-6)


def test_pairs_without_visible_change_are_labelled_zero() -> None:
    frames = np.zeros((10, 16, 16, 3), dtype=np.uint8)
    for t in range(10):
        frames[t, min(t, 6)] = 255  # the scene stops changing after frame 6
    sampler = PairSampler(
        [_episode(10, images=frames)],
        PairSamplingConfig(mismatch_fraction=0.0, goal_anchor_fraction=0.0),
    )
    batch = sampler.sample(400, np.random.default_rng(1))
    still = (batch.frame_a >= 6) & (batch.frame_b >= 6)
    assert still.any() and np.all(batch.progress[still] == 0.0)
    moving = (batch.frame_a < 6) & (batch.frame_b != batch.frame_a)
    assert np.all(batch.progress[moving] != 0.0)


def test_mismatched_instructions_get_zero_progress_and_not_done() -> None:
    sampler = _sampler(mismatch_fraction=0.08)
    batch = sampler.sample(4000, np.random.default_rng(2))
    rate = batch.mismatch.mean()
    assert 0.06 < rate < 0.10
    own = sampler.instruction_of[batch.episode_b]
    np.testing.assert_array_equal(batch.instruction != own, batch.mismatch)
    assert np.all(batch.progress[batch.mismatch] == 0.0) and np.all(
        batch.progress_mask[batch.mismatch]
    )
    assert np.all(batch.done[batch.mismatch] == 0.0) and np.all(batch.done_mask[batch.mismatch])


def test_a_mismatch_is_always_another_tasks_instruction_never_a_paraphrase() -> None:
    phrasings = {
        "push": ["push the cube", "shove the cube"],
        "reach": ["touch the ball", "go to the ball"],
    }
    episodes = []
    for task, texts in phrasings.items():
        for text in texts:
            for _ in range(3):
                ep = _episode(12, instruction=text, index=len(episodes))
                ep.metadata["task"] = task
                episodes.append(ep)
    sampler = PairSampler(episodes, PairSamplingConfig(mismatch_fraction=0.3))
    batch = sampler.sample(2000, np.random.default_rng(4))
    task_of_text = {t: k for k, texts in phrasings.items() for t in texts}
    own = [task_of_text[episodes[int(e)].instruction] for e in batch.episode_b]
    given_task = [task_of_text[sampler.instructions[int(i)]] for i in batch.instruction]
    differs = np.array([a != b for a, b in zip(own, given_task, strict=True)])
    np.testing.assert_array_equal(differs, batch.mismatch)
    assert 0.25 < batch.mismatch.mean() < 0.35
    # every wrong instruction of the other task gets drawn
    assert {sampler.instructions[int(i)] for i in batch.instruction[batch.mismatch]} == set(
        task_of_text
    )


def test_goal_anchored_pairs_come_from_another_success_of_the_same_task() -> None:
    sampler = _sampler(mismatch_fraction=0.0, goal_anchor_fraction=0.3)
    batch = sampler.sample(1000, np.random.default_rng(3))
    cross = batch.episode_a != batch.episode_b
    assert 0.2 < cross.mean() < 0.4
    for j in np.flatnonzero(cross):
        ea, eb = int(batch.episode_a[j]), int(batch.episode_b[j])
        assert sampler.instruction_of[ea] == sampler.instruction_of[eb]
        assert sampler.episodes[ea].succeeded
        phi_a = sampler.phi[ea][batch.frame_a[j]]
        assert phi_a >= 0.95 - 1e-6
        assert batch.progress[j] == pytest.approx(
            float(hop_progress(phi_a, sampler.phi[eb][batch.frame_b[j]])), abs=1e-6
        )


def test_balancing_flattens_progress_bins_and_gaps_within_them() -> None:
    # Half of every episode is a still tail: uniform pairs are dominated by progress 0.
    episodes = []
    for i in range(4):
        frames = np.repeat(
            (np.minimum(np.arange(30), 15) * 12).astype(np.uint8), 16 * 16 * 3
        ).reshape(30, 16, 16, 3)
        episodes.append(_episode(30, images=frames, index=i))
    sampler = PairSampler(
        episodes, PairSamplingConfig(mismatch_fraction=0.0, goal_anchor_fraction=0.0)
    )
    rng = np.random.default_rng(4)

    def grid(batch) -> np.ndarray:
        counts = np.bincount(sampler.cells(batch), minlength=sampler.num_cells)[:-1]
        return counts.reshape(sampler.config.progress_bins, sampler.config.gap_bins) / len(batch)

    uniform, balanced = grid(sampler._uniform_pairs(20000, rng)), grid(sampler.sample(20000, rng))
    zero_bin = sampler.config.progress_bins // 2
    assert uniform.sum(1)[zero_bin] > 0.3  # progress-0 pairs dominate without balancing
    rows = balanced.sum(1)
    assert rows.max() / rows.min() < 1.3  # about 1/10 of the pairs in every progress bin
    # Within the top progress bin, the time gaps are spread out instead of piling up.
    top = balanced[-1][balanced[-1] > 0] / balanced[-1].sum()
    top_uniform = uniform[-1][uniform[-1] > 0] / uniform[-1].sum()
    assert top.max() / top.min() < top_uniform.max() / top_uniform.min()
    assert top.max() / top.min() < 1.5


def test_sampling_is_a_function_of_the_rng() -> None:
    sampler = _sampler()
    a = sampler.sample(64, np.random.default_rng([7, 3]))
    b = sampler.sample(64, np.random.default_rng([7, 3]))
    for name in a.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_sampler_rejects_too_short_episodes() -> None:
    with pytest.raises(ValueError, match="1 frame"):
        PairSampler([_episode(1)], PairSamplingConfig())
