"""The replay: online rollouts, demonstrations and interventions as separate partitions.

Each partition keeps its own ring buffer of frames (compact float16 vision tokens, or for a
trainable backbone the uint8 pixels; state; instruction id) and of transitions (frame indices,
normalised action, task reward, terminal, the critic's potential before and after). A batch
mixes the partitions at a configured ratio (``human_ratio`` of it from demonstrations and
interventions). The reward is assembled at sampling time from its parts, so the sparse task
reward and the critic's potential-based shaping can be switched on and off without touching
the stored data:

    r = task_weight * r_task + shaping_weight * (gamma * (1 - terminal) * phi' - phi)

``phi' = 0`` at a terminal state (Ng et al.'s condition for policy invariance).

Every frame also keeps its *waypoint*: the motion still to come before the episode's next change
of the gripper command (the grasp, the release) or its end, as the sum of the normalised arm
actions from that frame on. Both action kinds are deltas, so it is the displacement to where the
demonstrator grasps or lets go. It is read off the episode's own actions, so any recording has
it, real or simulated; the agent's optional waypoint head learns to predict it.

With action chunks (``chunk_len = K > 1``) a transition is a window of up to K steps of one
episode: the action is the K actions executed from its first frame (the last one repeated
where the window is cut short), the next frame is the one after the window, and the reward is
the window's discounted sum. The shaping term telescopes over the window to
``gamma^n * (1 - terminal) * phi' - phi`` (n: the steps in the window), so the shaped
return stays the task return plus ``-phi(s_0)`` and the optimal policy is unchanged. Every step
starts a window (open-loop execution makes any K consecutive executed actions a valid action
sequence), and a window never crosses the end of an episode or of a run of kept steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from limbic.launch.config import require

PARTITIONS = ("online", "demo", "intervention")
HUMAN = ("demo", "intervention")


@dataclass
class ReplayConfig:
    """Sizes and the batch mix of the replay."""

    online_capacity: int = 100_000
    """Transitions kept from online rollouts (oldest dropped first)."""
    human_capacity: int = 50_000
    """Transitions kept per human partition (demonstrations, interventions)."""
    human_ratio: float = 0.5
    """Fraction of each batch drawn from the human partitions (RLPD's symmetric sampling: 0.5)."""
    intervention_share: float = 0.5
    """Fraction of the human part drawn from interventions when both human partitions have data."""

    def __post_init__(self) -> None:
        require(
            0.0 <= self.human_ratio <= 1.0,
            "replay.human_ratio",
            f"must be in [0, 1], got {self.human_ratio}",
        )
        require(
            0.0 <= self.intervention_share <= 1.0,
            "replay.intervention_share",
            f"must be in [0, 1], got {self.intervention_share}",
        )
        require(
            self.online_capacity > 0 and self.human_capacity > 0,
            "replay.capacity",
            "capacities must be > 0",
        )


@dataclass
class RewardConfig:
    """Which reward terms the learner sees (switchable for ablations)."""

    task_weight: float = 1.0
    """Weight of the sparse task reward (1 on the success step)."""
    shaping_weight: float = 1.0
    """Weight of the critic's potential-based shaping term (0 turns it off)."""


class Partition:
    """Ring buffers of frames and transitions for one data source."""

    def __init__(
        self,
        capacity: int,
        token_shape: tuple[int, ...],
        state_dim: int,
        action_dim: int,
        chunk_len: int = 1,
        frame_dtype: type = np.float16,
    ):
        # Each episode adds one frame more than it adds transitions, so even one-step episodes
        # cannot overwrite a frame that a stored transition still points at.
        frames = 2 * capacity
        # per-frame tokens (or a trainable backbone's pixels) grow as episodes arrive, up to
        # ``frames``: a partition sized for 100k transitions of 2x128x128 pixels would be 20 GB
        self.tokens = np.zeros((min(frames, 1024), *token_shape), frame_dtype)
        self.state = np.zeros((frames, state_dim), np.float32)
        self.waypoint = np.zeros((frames, max(action_dim - 1, 1)), np.float32)
        self.lang = np.zeros(frames, np.int32)
        self.obs = np.zeros(capacity, np.int64)
        self.next = np.zeros(capacity, np.int64)
        self.action_dim, self.chunk_len = action_dim, chunk_len
        self.action = np.zeros((capacity, chunk_len * action_dim), np.float32)
        self.reward = np.zeros((capacity, chunk_len), np.float32)
        self.steps = np.ones(capacity, np.int32)
        self.terminal = np.zeros(capacity, bool)
        self.phi = np.zeros(capacity, np.float32)
        self.phi_next = np.zeros(capacity, np.float32)
        self.capacity, self.frame_capacity = capacity, frames
        self.size = self.ptr = self.frame_ptr = 0
        self.episodes = 0

    def _frame_slots(self, n: int) -> np.ndarray:
        need = min(self.frame_ptr + n, self.frame_capacity)
        if need > len(self.tokens):  # first pass round the ring: slots are taken in order
            grown = np.zeros(
                (min(self.frame_capacity, max(need, 2 * len(self.tokens))), *self.tokens.shape[1:]),
                self.tokens.dtype,
            )
            grown[: len(self.tokens)] = self.tokens
            self.tokens = grown
        slots = (self.frame_ptr + np.arange(n)) % self.frame_capacity
        self.frame_ptr = int((self.frame_ptr + n) % self.frame_capacity)
        return slots

    def add_episode(
        self,
        tokens: np.ndarray,
        state: np.ndarray,
        lang_id: int,
        action: np.ndarray,
        reward: np.ndarray,
        terminal: np.ndarray,
        phi: np.ndarray,
        keep: np.ndarray | None = None,
    ) -> None:
        """Store ``T`` transitions from ``T + 1`` frames (``phi`` has ``T + 1`` entries too).

        ``action`` is per step, ``[T, action_dim]``; the windows of ``chunk_len`` steps are built
        here. ``keep`` (bool[T]) stores only those transitions (the frames they need are stored
        whole): an episode the policy and a human shared goes half here, half there, and no
        window reaches across from one to the other.
        """
        t = action.shape[0]
        if action.ndim != 2 or action.shape[1] != self.action_dim:
            raise ValueError(
                f"actions must be per step, [T, {self.action_dim}]; got shape {action.shape}"
            )
        if tokens.shape[0] != t + 1 or state.shape[0] != t + 1 or phi.shape[0] != t + 1:
            raise ValueError(
                f"an episode of {t} actions needs {t + 1} frames, states and potentials; got "
                f"{tokens.shape[0]}, {state.shape[0]}, {phi.shape[0]}"
            )
        keep = np.ones(t, bool) if keep is None else np.asarray(keep, bool)
        if keep.shape != (t,):
            raise ValueError(f"keep must be bool[{t}], got shape {keep.shape}")
        n = int(keep.sum())
        if n == 0:
            return
        if t > self.capacity:
            raise ValueError(f"episode of {t} steps is longer than the partition ({self.capacity})")
        frames = self._frame_slots(t + 1)
        self.tokens[frames] = tokens
        self.state[frames] = state
        self.waypoint[frames] = motion_to_next_event(action)
        self.lang[frames] = lang_id
        start, steps = window_bounds(keep, self.chunk_len)
        # step i of each window: its own step while inside the window, else the window's last
        offset = np.arange(self.chunk_len)[None, :]
        inside = offset < steps[:, None]
        idx = start[:, None] + np.minimum(offset, steps[:, None] - 1)
        last = start + steps - 1
        rows = (self.ptr + np.arange(n)) % self.capacity
        self.obs[rows], self.next[rows] = frames[start], frames[last + 1]
        self.action[rows] = action[idx].reshape(n, -1)
        self.reward[rows] = np.where(inside, reward[idx], 0.0)
        self.steps[rows] = steps
        self.terminal[rows] = terminal[last]
        self.phi[rows], self.phi_next[rows] = phi[start], phi[last + 1]
        self.ptr = int((self.ptr + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)
        self.episodes += 1


def motion_to_next_event(action: np.ndarray) -> np.ndarray:
    """``float32[T + 1, A - 1]``: for each of an episode's frames, the sum of the arm actions (all
    but the last, gripper, component) from that frame up to the first later step where the
    gripper command (normalised: closed above 0) differs from the step before, or up to the end
    of the episode when no change follows. The last frame's is zero."""
    action = np.asarray(action, np.float32)
    t = action.shape[0]
    if action.shape[1] < 2:  # a gripper-only action space has no arm motion to sum
        return np.zeros((t + 1, 1), np.float32)
    closed = action[:, -1] > 0
    marks = np.append(np.flatnonzero(closed[1:] != closed[:-1]) + 1, t)
    stop = marks[np.minimum(np.searchsorted(marks, np.arange(t + 1), side="right"), len(marks) - 1)]
    cum = np.concatenate([np.zeros((1, action.shape[1] - 1), np.float32), action[:, :-1].cumsum(0)])
    return (cum[stop] - cum).astype(np.float32)


def after_last_handback(intervention: np.ndarray) -> np.ndarray:
    """``bool[T]``: the steps after the last one a human took (none if a human took the last)."""
    human = np.asarray(intervention, bool)
    tail = np.zeros(human.shape, bool)
    if human.any():
        tail[np.flatnonzero(human)[-1] + 1 :] = True
    return tail


def window_bounds(keep: np.ndarray, chunk_len: int) -> tuple[np.ndarray, np.ndarray]:
    """First step and length of the window of every kept step: up to ``chunk_len`` steps, never
    past the end of the run of kept steps it starts in."""
    start = np.flatnonzero(keep)
    # the run a kept step is in ends at the first dropped step after it (or the episode's end)
    stops = np.append(np.flatnonzero(~keep), keep.shape[0])
    run_end = stops[np.searchsorted(stops, start)]
    return start, np.minimum(chunk_len, run_end - start)


class ReplayMix:
    """The three partitions, the instruction-embedding table, and mixed sampling."""

    def __init__(
        self,
        cfg: ReplayConfig,
        token_shape: tuple[int, ...],
        state_dim: int,
        action_dim: int,
        lang_dim: int,
        chunk_len: int = 1,
        frame_dtype: type = np.float16,
    ):
        """``action_dim`` is one step's; with ``chunk_len > 1`` transitions are windows (above).
        ``token_shape``/``frame_dtype`` describe what is stored per frame: compact tokens
        (float16), or a trainable backbone's frames (uint8 ``(views, H, W, 3)``)."""
        self.cfg = cfg
        self.partitions = {
            name: Partition(
                cfg.online_capacity if name == "online" else cfg.human_capacity,
                token_shape,
                state_dim,
                action_dim,
                chunk_len,
                frame_dtype,
            )
            for name in PARTITIONS
        }
        self.lang_dim = lang_dim
        self._lang_ids: dict[str, int] = {}
        self.lang_table = np.zeros((0, lang_dim), np.float32)

    def instruction_id(self, text: str, embedding: np.ndarray) -> int:
        """The id of an instruction's embedding (added on first sight)."""
        if text not in self._lang_ids:
            self._lang_ids[text] = len(self._lang_ids)
            self.lang_table = np.vstack(
                [self.lang_table, np.asarray(embedding, np.float32).reshape(1, -1)]
            )
        return self._lang_ids[text]

    def add_episode(self, source: str, **arrays: np.ndarray | int) -> None:
        """Store an episode in partition ``source`` (``online``, ``demo`` or ``intervention``)."""
        if source not in self.partitions:
            raise KeyError(f"unknown replay partition {source!r}; choose from {list(PARTITIONS)}")
        self.partitions[source].add_episode(**arrays)

    def add_shared_episode(self, intervention: np.ndarray, **arrays: np.ndarray | int) -> None:
        """Store an episode the policy and a human shared: the steps a human took
        (``intervention``, bool[T]) go to the intervention partition, the policy's to online."""
        human = np.asarray(intervention, bool)
        self.partitions["online"].add_episode(keep=~human, **arrays)
        self.partitions["intervention"].add_episode(keep=human, **arrays)

    def __len__(self) -> int:
        return sum(p.size for p in self.partitions.values())

    def counts(self, batch_size: int) -> dict[str, int]:
        """How many rows of a batch each partition gives (empty partitions give none)."""
        sizes = {k: p.size for k, p in self.partitions.items()}
        human = [k for k in HUMAN if sizes[k] > 0]
        if not human and sizes["online"] == 0:
            raise ValueError("the replay is empty")
        n_human = (
            0
            if not human
            else (batch_size if sizes["online"] == 0 else round(batch_size * self.cfg.human_ratio))
        )
        counts = {"online": batch_size - n_human, "demo": 0, "intervention": 0}
        if len(human) == 2:
            counts["intervention"] = round(n_human * self.cfg.intervention_share)
            counts["demo"] = n_human - counts["intervention"]
        elif human:
            counts[human[0]] = n_human
        if sizes["online"] == 0:
            counts["online"] = 0
        return counts

    def sample(
        self, batch_size: int, rng: np.random.Generator, reward: RewardConfig, gamma: float
    ) -> dict[str, np.ndarray]:
        """A mixed batch; ``human`` marks rows from demonstrations and interventions, and
        ``discount`` is each row's ``gamma^n`` for its window of ``n`` steps."""
        parts: dict[str, list[np.ndarray]] = {
            k: []
            for k in (
                "tokens",
                "state",
                "lang",
                "action",
                "reward",
                "terminal",
                "next_tokens",
                "next_state",
                "waypoint",
                "human",
                "discount",
            )
        }
        for name, n in self.counts(batch_size).items():
            if n == 0:
                continue
            p = self.partitions[name]
            rows = rng.integers(0, p.size, size=n)
            obs, nxt = p.obs[rows], p.next[rows]
            term = p.terminal[rows]
            discount = np.power(gamma, p.steps[rows]).astype(np.float32)
            shaped = discount * (1.0 - term) * p.phi_next[rows] - p.phi[rows]
            task = p.reward[rows] @ np.power(gamma, np.arange(p.chunk_len)).astype(np.float32)
            parts["tokens"].append(p.tokens[obs])
            parts["next_tokens"].append(p.tokens[nxt])
            parts["state"].append(p.state[obs])
            parts["next_state"].append(p.state[nxt])
            parts["waypoint"].append(p.waypoint[obs])
            parts["lang"].append(self.lang_table[p.lang[obs]])
            parts["action"].append(p.action[rows])
            parts["reward"].append(reward.task_weight * task + reward.shaping_weight * shaped)
            parts["discount"].append(discount)
            parts["terminal"].append(term)
            parts["human"].append(np.full(n, name in HUMAN))
        return {k: np.concatenate(v) for k, v in parts.items()}
