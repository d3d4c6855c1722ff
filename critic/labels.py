"""Training pairs for the progress critic and their labels.

Progress of a frame. ``Φ_t`` is the episode's true task progress when the recorder stored
one (``metadata["progress"]``, ``float32[T]`` in ``[0, 1]``); otherwise, for a successful
episode, ``Φ_t = min(t / s, 1)`` with ``s`` the first frame that shows the task finished
(:func:`finished_frame`): DESIGN.md's ``t / T`` over the demonstration itself, and 1 on the
frames after it (a recorder's settle steps: the arm letting go and backing off), which show
a finished task however long they last. Where no frame shows it (the episode ends on the
step that succeeds), ``s = T − 1``: the first frame 0, the last 1. A failed episode without
stored progress has no progress labels; it still teaches "not done".

Pair label (DESIGN.md), from ``Φ_a`` to ``Φ_b``:

* ``c = (Φ_b − Φ_a) / (1 − Φ_a)`` when ``Φ_b ≥ Φ_a`` (VLAC's forward ``Δt / (T − i)``),
* ``c = (Φ_b − Φ_a) / Φ_a`` when ``Φ_b < Φ_a`` (Robo-Dopamine's backward hop),
* ``c = 0`` under a mismatched instruction (a different task's instruction, drawn for
  ``mismatch_fraction`` of the pairs) and between frames with no visible change (same
  still segment, see :func:`still_segments`).

Done label of a frame of a successful episode: 1 from 95 % of the way to ``s`` on (so every
frame from ``s`` on, and the last frame always), 0 before 80 %, unlabelled in between; every
frame of a failed episode: 0; under a mismatched instruction: 0. ``finish_at_success=False``
measures both over the whole recording instead (``s = T − 1``, the rule before settle steps
were labelled as finished).

Balancing. Pairs drawn uniformly over frames pile up at small time gaps and at progress
near 0. :class:`PairSampler` estimates once how often each (progress bin, time-gap bin)
cell occurs among pairs within an episode, and draws every batch by importance resampling
towards a target that is uniform over progress bins and, within a progress bin, uniform
over the time-gap bins that occur there (small progress only happens over small gaps, so
both marginals cannot be flat at once; the progress marginal is the one the regression
needs flat). Probabilities are floored (``min_bin_prob``, ``min_gap_share``) so a rare pair
is not repeated endlessly.

Goal anchors. A fraction of pairs takes ``a`` from the goal frames (Φ ≥ ``done_after``) of
*another* successful episode of the same instruction. Those pairs teach the backward value
perspective ``1 + c(o_goal, o_t)``, which at evaluation uses a reference demonstration's
goal frame, never the evaluated episode's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from limbic.data.schema import EpisodeArrays
from limbic.launch.config import require

PROGRESS_KEY = "progress"
"""``EpisodeArrays.metadata`` key of an optional per-frame true progress ``float32[T]`` in [0, 1]."""
REFERENCE_MATCHES = ("instruction", "goal")
"""How the reference done head's positive references are chosen (``reference_match``)."""


@dataclass
class PairSamplingConfig:
    """How critic training pairs are drawn and labelled."""

    mismatch_fraction: float = 0.08
    """Share of pairs whose instruction is swapped for another task's (label 0, not done)."""
    goal_anchor_fraction: float = 0.15
    """Share of pairs anchored on another successful episode's goal frame (same instruction)."""
    progress_bins: int = 10
    """Bins over the progress label range [-1, 1] for balancing."""
    gap_bins: int = 5
    """Bins over the normalised time gap |t_b − t_a| / (T − 1) in [0, 1] for balancing."""
    min_bin_prob: float = 0.01
    """Floor on a progress bin's estimated probability, capping how much a rare bin is up-weighted."""
    min_gap_share: float = 0.05
    """Floor on a gap bin's share within its progress bin, likewise for rare (progress, gap) cells."""
    pool_factor: int = 8
    """Candidates drawn per returned pair before importance resampling."""
    done_after: float = 0.95
    """Frames at or past this fraction of a successful episode are done (label 1)."""
    not_done_before: float = 0.8
    """Frames before this fraction are not done (label 0); frames in between are unlabelled."""
    still_threshold: float = 1.0
    """Mean absolute pixel difference (0-255 units) under which two frames show no visible change."""
    finish_at_success: bool = True
    """Time-based progress and done labels reach 1 on the first frame that shows the task
    finished (:func:`finished_frame`), so settle frames after it are finished and done; false:
    over the whole recording (``t / (T − 1)``, done from 95 % of it)."""
    stored_progress: bool = True
    """Label with the recording's true task progress where it stores one (``task_progress``:
    simulated recordings); false: the time-based progress of successes, and no progress
    labels for failures, as for recordings without it (an ablation)."""
    reference_negative_fraction: float = 0.0
    """Reference done head only: share of the done frames of successes that are judged against a
    goal frame of *another goal* of their task (label 0: "finished the way this reference
    is" is false), so the head learns to compare what the goal is made of (the colours named)
    rather than only that something was finished. Needs episodes that record their ``goal``
    (``limbic-record`` stores it); episodes without one are left out of it."""
    reference_match: str = "instruction"
    """Reference done head only: which successes give a frame its positive references:
    ``instruction`` (the same instruction) or ``goal`` (the same recorded goal whatever the
    phrasing, :func:`goal_of`; the same instruction for episodes that store no goal). With many
    colours and phrasings few successes share an instruction; a goal looks the same however it
    was asked for."""

    def __post_init__(self) -> None:
        require(
            self.reference_match in REFERENCE_MATCHES,
            "critic.pairs.reference_match",
            f"expected one of {list(REFERENCE_MATCHES)}, got {self.reference_match!r}",
        )
        require(
            0.0 <= self.reference_negative_fraction < 1.0,
            "critic.pairs.reference_negative_fraction",
            f"expected [0, 1), got {self.reference_negative_fraction}",
        )
        require(
            0.0 <= self.mismatch_fraction < 0.5,
            "critic.pairs.mismatch_fraction",
            f"expected [0, 0.5), got {self.mismatch_fraction}",
        )
        require(
            0.0 <= self.goal_anchor_fraction < 1.0,
            "critic.pairs.goal_anchor_fraction",
            f"expected [0, 1), got {self.goal_anchor_fraction}",
        )
        require(
            self.progress_bins >= 2 and self.gap_bins >= 1,
            "critic.pairs.progress_bins",
            "need progress_bins >= 2 and gap_bins >= 1",
        )
        require(
            0.0 < self.min_bin_prob < 1.0,
            "critic.pairs.min_bin_prob",
            f"expected (0, 1), got {self.min_bin_prob}",
        )
        require(
            0.0 < self.min_gap_share <= 1.0,
            "critic.pairs.min_gap_share",
            f"expected (0, 1], got {self.min_gap_share}",
        )
        require(
            self.pool_factor >= 1,
            "critic.pairs.pool_factor",
            f"expected >= 1, got {self.pool_factor}",
        )
        require(
            0.0 < self.not_done_before <= self.done_after <= 1.0,
            "critic.pairs.done_after",
            "need 0 < not_done_before <= done_after <= 1",
        )
        require(
            self.still_threshold >= 0.0,
            "critic.pairs.still_threshold",
            f"expected >= 0, got {self.still_threshold}",
        )


def hop_progress(phi_a: np.ndarray | float, phi_b: np.ndarray | float) -> np.ndarray:
    """Signed progress label from ``Φ_a`` to ``Φ_b`` (forward and backward hop forms), in [-1, 1].

    ``Φ_a = 1 = Φ_b`` and ``Φ_a = 0 = Φ_b`` give 0 (no change, nothing left to divide).
    """
    phi_a = np.asarray(phi_a, dtype=np.float64)
    phi_b = np.asarray(phi_b, dtype=np.float64)
    delta = phi_b - phi_a
    forward = delta / np.maximum(1.0 - phi_a, 1e-12)
    backward = delta / np.maximum(phi_a, 1e-12)
    out = np.where(delta >= 0, forward, backward)
    return np.clip(np.where(np.abs(delta) < 1e-12, 0.0, out), -1.0, 1.0).astype(np.float32)


def apply_hop(phi_a: np.ndarray | float, c: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hop_progress`: ``Φ_b`` from ``Φ_a`` and the progress ``c``."""
    phi_a = np.asarray(phi_a, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    return np.where(c >= 0, phi_a + c * (1.0 - phi_a), phi_a * (1.0 + c)).astype(np.float32)


def finished_frame(episode: EpisodeArrays) -> int | None:
    """The first frame of a successful episode that shows the task finished, or None.

    A step's ``success`` flag judges the state its action led to, which the *next* frame shows
    (the recorder's convention), so this is one past the first step whose flag is set. None for
    a failure, for a success without per-step flags, and where the episode ends on that step.
    """
    if not episode.succeeded:
        return None
    hits = np.flatnonzero(np.asarray(episode.success, dtype=bool))
    if len(hits) == 0 or hits[0] + 1 >= len(episode):
        return None
    return int(hits[0]) + 1


def task_end(episode: EpisodeArrays, finish_at_success: bool = True) -> int:
    """The frame at which time-based progress reaches 1: :func:`finished_frame` when there is one
    (and ``finish_at_success``), else the last frame."""
    end = finished_frame(episode) if finish_at_success else None
    return max(len(episode) - 1, 1) if end is None else end


def episode_progress(
    episode: EpisodeArrays, stored: bool = True, finish_at_success: bool = True
) -> np.ndarray | None:
    """``Φ_t`` for every frame (see the module docstring), or None for a failure without it
    (``stored=False`` ignores a recorded progress; ``finish_at_success``: see :func:`task_end`)."""
    n = len(episode)
    stored = episode.metadata.get(PROGRESS_KEY) if stored else None
    if stored is not None:
        phi = np.asarray(stored, dtype=np.float32)
        if phi.shape != (n,) or not np.all(np.isfinite(phi)) or phi.min() < 0 or phi.max() > 1:
            raise ValueError(
                f"episode {episode.episode_index}: metadata[{PROGRESS_KEY!r}] must be float32[{n}] in [0, 1], "
                f"got shape {phi.shape}, range [{phi.min():.3g}, {phi.max():.3g}]"
            )
        return phi
    if episode.succeeded:
        end = task_end(episode, finish_at_success)
        return np.minimum(np.arange(n, dtype=np.float32) / end, 1.0).astype(np.float32)
    return None


def done_labels(
    episode: EpisodeArrays,
    done_after: float = 0.95,
    not_done_before: float = 0.8,
    finish_at_success: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(label float32[T], labelled bool[T])``: done past ``done_after`` of the way to the
    success's :func:`task_end`, 0 before ``not_done_before``."""
    n = len(episode)
    if not episode.succeeded:
        return np.zeros(n, dtype=np.float32), np.ones(n, dtype=bool)
    frac = np.arange(n) / task_end(episode, finish_at_success)
    label = (frac >= done_after - 1e-9).astype(np.float32)
    label[-1] = 1.0
    labelled = (label == 1.0) | (frac < not_done_before)
    return label, labelled


def task_of(episode: EpisodeArrays) -> str:
    """The task an episode shows: its recorded task name, else its instruction (so two
    phrasings of one task are never taken for a mismatch when the task name is known)."""
    return str(episode.metadata.get("task") or episode.instruction)


def goal_of(episode: EpisodeArrays) -> tuple | None:
    """What an episode was asked to reach: its task and recorded ``goal`` (slot -> colour in
    simulation), comparable across phrasings; None when the recording stores no goal."""
    goal = episode.metadata.get("goal")
    if not goal:
        return None
    return (task_of(episode), tuple(sorted((str(k), str(v)) for k, v in goal.items())))


def other_task_instructions(episodes: list[EpisodeArrays]) -> dict[str, list[str]]:
    """For each instruction, the sorted instructions of every other task."""
    task_of_instruction = {e.instruction: task_of(e) for e in episodes}
    out = {}
    for text, task in task_of_instruction.items():
        out[text] = sorted(t for t, k in task_of_instruction.items() if k != task)
    return out


def still_segments(images: dict[str, np.ndarray], threshold: float, stride: int = 1) -> np.ndarray:
    """``int64[T]`` segment ids: consecutive frames within ``threshold`` of their segment's first frame share one.

    The difference is the mean absolute pixel difference (0-255) over every view, on a
    ``stride``-subsampled grid.
    """
    views = sorted(images)
    if not views:
        raise ValueError("images: expected at least one view")
    frames = np.concatenate(
        [images[v][:, ::stride, ::stride].reshape(images[v].shape[0], -1) for v in views], axis=1
    ).astype(np.int16)
    seg = np.zeros(frames.shape[0], dtype=np.int64)
    start = 0
    for t in range(1, frames.shape[0]):
        if np.abs(frames[t] - frames[start]).mean() > threshold:
            start = t
            seg[t] = seg[t - 1] + 1
        else:
            seg[t] = seg[t - 1]
    return seg


@dataclass
class PairBatch:
    """A batch of labelled pairs as indices into the sampler's episodes (all arrays of length B)."""

    episode_a: np.ndarray
    """int64: episode of frame ``a`` (differs from ``episode_b`` for goal-anchored pairs)."""
    frame_a: np.ndarray
    episode_b: np.ndarray
    frame_b: np.ndarray
    instruction: np.ndarray
    """int64 index into :attr:`PairSampler.instructions` (a mismatched one where ``mismatch``)."""
    progress: np.ndarray
    """float32 label in [-1, 1]."""
    progress_mask: np.ndarray
    """bool: the progress label is known."""
    done: np.ndarray
    """float32 done label of frame ``b``."""
    done_mask: np.ndarray
    """bool: the done label is known."""
    mismatch: np.ndarray
    """bool: the instruction is another task's."""

    def __len__(self) -> int:
        return int(self.frame_b.shape[0])


class PairSampler:
    """Draws labelled, balanced critic training pairs from a list of episodes."""

    def __init__(self, episodes: list[EpisodeArrays], config: PairSamplingConfig, seed: int = 0):
        if not episodes:
            raise ValueError("episodes: expected at least one episode to sample pairs from")
        self.config = config
        self.episodes = episodes
        self.lengths = np.array([len(e) for e in episodes], dtype=np.int64)
        if self.lengths.min() < 2:
            i = int(np.argmin(self.lengths))
            raise ValueError(
                f"episodes[{i}] (index {episodes[i].episode_index}) has {self.lengths[i]} frame(s); need >= 2"
            )
        self.instructions: list[str] = sorted({e.instruction for e in episodes})
        self.instruction_of = np.array(
            [self.instructions.index(e.instruction) for e in episodes], dtype=np.int64
        )
        others = other_task_instructions(episodes)
        self.mismatch_choices = [
            np.array([self.instructions.index(t) for t in others[text]], dtype=np.int64)
            for text in self.instructions
        ]
        """Per instruction index: indices of other tasks' instructions (a mismatch draws one)."""
        self.phi = [
            episode_progress(e, config.stored_progress, config.finish_at_success) for e in episodes
        ]
        dl = [
            done_labels(e, config.done_after, config.not_done_before, config.finish_at_success)
            for e in episodes
        ]
        self.done = [d[0] for d in dl]
        self.done_mask = [d[1] for d in dl]
        self.segments = [still_segments(e.images, config.still_threshold) for e in episodes]
        # Goal frames of successful episodes, per instruction (goal-anchored pairs and the
        # reference head's references) and per (task, goal) (the reference head's negatives).
        self.goal_key = [goal_of(e) for e in episodes]
        self.goal_frames: dict[int, list[tuple[int, int]]] = {}
        frames_of_goal: dict[tuple, list[tuple[int, int]]] = {}
        for i, e in enumerate(episodes):
            if e.succeeded and self.phi[i] is not None:
                for t in np.flatnonzero(self.phi[i] >= config.done_after - 1e-6):
                    self.goal_frames.setdefault(int(self.instruction_of[i]), []).append((i, int(t)))
                    if self.goal_key[i] is not None:
                        frames_of_goal.setdefault(self.goal_key[i], []).append((i, int(t)))
        self.same_goal_frames = frames_of_goal
        """Per (task, goal): the goal frames of its successes, whatever their phrasing."""
        self.other_goal_frames: dict[tuple, list[tuple[int, int]]] = {
            key: [
                g
                for k, frames in frames_of_goal.items()
                if k[0] == key[0] and k != key
                for g in frames
            ]
            for key in set(filter(None, self.goal_key))
        }
        """Per (task, goal): the goal frames of successes of the task's other goals."""
        self.cell_prob = self._estimate_cell_prob(np.random.default_rng([seed, 0x5EED]))
        self.cell_weight = self._cell_weights()

    @property
    def num_cells(self) -> int:
        """Progress bins × gap bins, plus one cell for pairs whose progress is unknown."""
        return self.config.progress_bins * self.config.gap_bins + 1

    def _uniform_pairs(self, n: int, rng: np.random.Generator) -> PairBatch:
        """``n`` pairs of frames of one episode, drawn uniformly (episode, then both frames)."""
        ep = rng.integers(len(self.episodes), size=n)
        length = self.lengths[ep]
        fa = (rng.random(n) * length).astype(np.int64)
        fb = (rng.random(n) * length).astype(np.int64)
        progress = np.zeros(n, dtype=np.float32)
        known = np.zeros(n, dtype=bool)
        for j in range(n):
            i = int(ep[j])
            phi = self.phi[i]
            if phi is None:
                continue
            if self.segments[i][fa[j]] != self.segments[i][fb[j]]:
                progress[j] = hop_progress(phi[fa[j]], phi[fb[j]])
            known[j] = True
        return self._with_done(ep, fa, ep, fb, progress, known)

    def _goal_anchored_pairs(self, n: int, rng: np.random.Generator) -> PairBatch | None:
        """``n`` pairs whose ``a`` is a goal frame of another success with the same instruction."""
        usable = [
            i
            for i, phi in enumerate(self.phi)
            if phi is not None
            and any(g[0] != i for g in self.goal_frames.get(int(self.instruction_of[i]), []))
        ]
        if not usable:
            return None
        ep_b = np.array(usable, dtype=np.int64)[rng.integers(len(usable), size=n)]
        fb = (rng.random(n) * self.lengths[ep_b]).astype(np.int64)
        ep_a = np.zeros(n, dtype=np.int64)
        fa = np.zeros(n, dtype=np.int64)
        progress = np.zeros(n, dtype=np.float32)
        for j in range(n):
            i = int(ep_b[j])
            others = [g for g in self.goal_frames[int(self.instruction_of[i])] if g[0] != i]
            ep_a[j], fa[j] = others[int(rng.integers(len(others)))]
            progress[j] = hop_progress(self.phi[int(ep_a[j])][fa[j]], self.phi[i][fb[j]])  # type: ignore[index]
        return self._with_done(ep_a, fa, ep_b, fb, progress, np.ones(n, dtype=bool))

    def _with_done(
        self,
        ep_a: np.ndarray,
        fa: np.ndarray,
        ep_b: np.ndarray,
        fb: np.ndarray,
        progress: np.ndarray,
        known: np.ndarray,
    ) -> PairBatch:
        done = np.array(
            [self.done[int(i)][t] for i, t in zip(ep_b, fb, strict=True)], dtype=np.float32
        )
        done_mask = np.array(
            [self.done_mask[int(i)][t] for i, t in zip(ep_b, fb, strict=True)], dtype=bool
        )
        n = len(ep_b)
        return PairBatch(
            ep_a,
            fa,
            ep_b,
            fb,
            self.instruction_of[ep_b].copy(),
            progress,
            known,
            done,
            done_mask,
            np.zeros(n, dtype=bool),
        )

    def cells(self, batch: PairBatch) -> np.ndarray:
        """Balancing cell of every pair: (progress bin, time-gap bin), or the "unknown" cell."""
        cfg = self.config
        pbin = np.clip(
            ((batch.progress + 1.0) / 2.0 * cfg.progress_bins).astype(np.int64),
            0,
            cfg.progress_bins - 1,
        )
        same = batch.episode_a == batch.episode_b
        gap = np.where(
            same,
            np.abs(batch.frame_b - batch.frame_a)
            / np.maximum(self.lengths[batch.episode_b] - 1, 1),
            1.0,
        )
        gbin = np.clip((gap * cfg.gap_bins).astype(np.int64), 0, cfg.gap_bins - 1)
        return np.where(batch.progress_mask, pbin * cfg.gap_bins + gbin, self.num_cells - 1)

    def _estimate_cell_prob(self, rng: np.random.Generator, n: int = 20000) -> np.ndarray:
        counts = np.bincount(self.cells(self._uniform_pairs(n, rng)), minlength=self.num_cells)
        return counts / counts.sum()

    def _cell_weights(self) -> np.ndarray:
        """Importance weight per cell: flat over progress bins, then over the gap bins within one.

        ``w = 1 / (max(P(bin), min_bin_prob) · max(P(gap | bin), min_gap_share) · n(bin))`` with
        ``n(bin) = Σ_gap min(1, P(gap | bin) / min_gap_share)``, so every progress bin gets the
        same mass and its gap bins equal shares (rare ones proportionally less). Pairs of
        unknown progress keep their natural share.
        """
        cfg = self.config
        grid = self.cell_prob[:-1].reshape(cfg.progress_bins, cfg.gap_bins)
        row = grid.sum(1, keepdims=True)
        share = grid / np.maximum(row, 1e-12)
        n_eff = np.maximum(np.minimum(share / cfg.min_gap_share, 1.0).sum(1, keepdims=True), 1e-12)
        w = 1.0 / (np.maximum(row, cfg.min_bin_prob) * np.maximum(share, cfg.min_gap_share) * n_eff)
        known = (grid * w).sum()
        w = w * (1.0 - self.cell_prob[-1]) / max(known, 1e-12)
        return np.append(w.ravel(), 1.0)

    def draw_references(
        self, episode_b: np.ndarray, rng: np.random.Generator, done_b: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A reference goal frame for each frame ``b``: a goal frame of another successful
        episode with the same instruction, or with ``reference_match="goal"`` the same goal
        (``(episode, frame)`` int64 arrays; ``-1`` where there is none), and which references
        are negatives (bool).

        With ``reference_negative_fraction`` > 0 and ``done_b`` (the frames' done labels), that
        share of the done frames instead gets a goal frame of another goal of the same task
        (:func:`goal_of`): a negative, whose label is 0. The reference done head is trained
        against them."""
        n = len(episode_b)
        ep = np.full(n, -1, dtype=np.int64)
        fr = np.full(n, -1, dtype=np.int64)
        negative = np.zeros(n, dtype=bool)
        frac = self.config.reference_negative_fraction
        flip = rng.random(n) < frac if frac > 0 and done_b is not None else negative
        for j, i in enumerate(episode_b):
            i = int(i)
            if flip[j] and done_b[j] > 0.5 and self.goal_key[i] is not None:
                others = self.other_goal_frames[self.goal_key[i]]
                if others:
                    ep[j], fr[j] = others[int(rng.integers(len(others)))]
                    negative[j] = True
                    continue
            if self.config.reference_match == "goal" and self.goal_key[i] is not None:
                goals = self.same_goal_frames.get(self.goal_key[i], [])
            else:
                goals = self.goal_frames.get(int(self.instruction_of[i]), [])
            others = [g for g in goals if g[0] != i]
            if others:
                ep[j], fr[j] = others[int(rng.integers(len(others)))]
        return ep, fr, negative

    def sample(self, n: int, rng: np.random.Generator) -> PairBatch:
        """``n`` pairs: ``goal_anchor_fraction`` goal-anchored, the rest balanced within episodes;
        then ``mismatch_fraction`` of all of them put under another task's instruction."""
        cfg = self.config
        n_anchor = int(rng.binomial(n, cfg.goal_anchor_fraction))
        anchored = self._goal_anchored_pairs(n_anchor, rng) if n_anchor else None
        n_within = n - (len(anchored) if anchored is not None else 0)
        pool = self._uniform_pairs(n_within * cfg.pool_factor, rng)
        weight = self.cell_weight[self.cells(pool)]
        pick = rng.choice(len(pool), size=n_within, replace=True, p=weight / weight.sum())
        parts = [pool] if anchored is None else [pool, anchored]
        picks = [pick] if anchored is None else [pick, np.arange(len(anchored))]
        batch = PairBatch(
            *(
                np.concatenate([getattr(b, f)[k] for b, k in zip(parts, picks, strict=True)])
                for f in PairBatch.__dataclass_fields__
            )
        )
        if cfg.mismatch_fraction > 0:
            mism = rng.random(n) < cfg.mismatch_fraction
            mism &= np.array([len(self.mismatch_choices[i]) > 0 for i in batch.instruction])
            wrong = batch.instruction.copy()
            for k in np.flatnonzero(mism):
                wrong[k] = rng.choice(self.mismatch_choices[batch.instruction[k]])
            batch.instruction = wrong
            batch.progress = np.where(mism, 0.0, batch.progress).astype(np.float32)
            batch.progress_mask = batch.progress_mask | mism
            batch.done = np.where(mism, 0.0, batch.done).astype(np.float32)
            batch.done_mask = batch.done_mask | mism
            batch.mismatch = mism
        return batch
