"""Run one episode in simulation and keep what learning needs from it.

Each frame goes through the vision backbone once: its tokens feed the policy (compressed)
and, when there is one, the progress critic (for the potential Φ). The result holds the
compact tokens, states, normalised actions, task rewards, terminal flags and potentials of
the episode, ready for the replay, plus its frames when a video is wanted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from limbic.contracts import ActionSpec, Observation
from limbic.critic.model import ProgressCritic
from limbic.critic.potential import OnlinePotential
from limbic.policy.rlpd import ActionNormalizer
from limbic.policy.vla import VLAPolicy
from limbic.sim.env import SimEnv
from limbic.teleop.arbiter import InterventionArbiter

ActionSource = Callable[[Observation, torch.Tensor, torch.Tensor], np.ndarray]
"""``(observation, compact tokens [1, V, N, k], instruction embedding [1, L]) -> env action``."""


@dataclass
class EpisodeRecord:
    """One finished episode, as the replay and the learning curves want it."""

    instruction: str
    tokens: np.ndarray  # float16[T + 1, V, N, k]; uint8[T + 1, V, H, W, 3] if the backbone trains
    state: np.ndarray  # float32[T + 1, S]
    action: np.ndarray  # float32[T, A], normalised to [-1, 1]
    reward: np.ndarray  # float32[T]: the sparse task reward
    terminal: np.ndarray  # bool[T]
    phi: np.ndarray  # float32[T + 1]: the critic's potential (zeros without a critic)
    done_prob: np.ndarray  # float32[T + 1]
    success: bool
    frames: list[np.ndarray] = field(default_factory=list)
    backbone_tokens: np.ndarray | None = None
    """float16[T + 1, V, N, C]: the uncompressed tokens, when asked for (to fit the compressor)."""
    observations: list[Observation] = field(default_factory=list)
    """The ``T + 1`` observations, when asked for (to write the episode to a dataset)."""
    env_action: np.ndarray | None = None
    """float32[T, A]: the actions as applied, in the arm's units (with the observations); for a
    perturbed demonstration, the expert's own actions, as in :attr:`action`."""
    intervention: np.ndarray | None = None
    """bool[T]: the steps a human (the arbiter) took instead of the policy, when there was one."""
    seed: int | None = None
    """The seed the episode's env was reset with (None: not reseeded)."""
    goal_moved: bool = False
    """A counterfactual copy whose approach frames show the goal elsewhere (``demo_goal_moves``)."""
    cell: tuple[int, int] | None = None
    """The work-area grid cell of the task's named object at reset (None where the simulator
    does not say, as gym-hil's does not)."""

    def __len__(self) -> int:
        return int(self.action.shape[0])

    @property
    def solved_alone(self) -> bool:
        """Succeeded with no step taken by a human."""
        return self.success and (self.intervention is None or not self.intervention.any())

    def shaped_return(self, gamma: float) -> float:
        """Undiscounted sum of ``r_task + gamma * Φ(s') - Φ(s)`` with Φ(terminal) = 0."""
        phi_next = self.phi[1:] * (1.0 - self.terminal)
        return float(np.sum(self.reward + gamma * phi_next - self.phi[:-1]))

    def replay_arrays(self, lang_id: int) -> dict:
        """Keyword arguments for :meth:`ReplayMix.add_episode`."""
        return dict(
            tokens=self.tokens,
            state=self.state,
            lang_id=lang_id,
            action=self.action,
            reward=self.reward,
            terminal=self.terminal,
            phi=self.phi,
        )


class Featurizer:
    """Frames -> backbone tokens once -> compact policy tokens and critic tokens."""

    def __init__(self, policy: VLAPolicy, critic: ProgressCritic | None = None):
        self.policy, self.critic = policy, critic
        self.shared = critic is not None and critic.backbone is policy.backbone

    @torch.no_grad()
    def __call__(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(compact policy tokens, critic tokens or None, full backbone tokens)``, batch of one."""
        images = torch.from_numpy(np.stack([obs.images[v] for v in self.policy.views]))[None]
        tokens = self.policy.backbone_tokens(images)
        critic_tokens = None
        if self.critic is not None:
            critic_tokens = tokens if self.shared else self.critic.encode_frames(images)
        return self.policy.compact_tokens(tokens), critic_tokens, tokens


def demo_perturbation(
    spec: ActionSpec, noise: float, rng: np.random.Generator
) -> Callable[[np.ndarray], np.ndarray] | None:
    """DART's executed-action noise for :func:`run_episode`: Gaussian, ``noise`` times each
    motion component's bound, the gripper (last component) untouched, clipped into the bounds.
    ``None`` when ``noise`` is 0."""
    if noise <= 0:
        return None
    scale = noise * np.maximum(np.abs(spec.low), np.abs(spec.high)).astype(np.float64)
    scale[-1] = 0.0

    def perturb(action: np.ndarray) -> np.ndarray:
        return spec.clip(np.asarray(action, np.float64) + rng.normal(size=scale.shape) * scale)

    return perturb


def replay_tokens(policy, obs: Observation, compact: torch.Tensor) -> np.ndarray:
    """What the replay keeps of one frame: its compact tokens ``float16[V, N, k]`` (``compact``
    is the featurizer's ``[1, V, N, k]``), or the frames themselves ``uint8[V, H, W, 3]`` when
    the policy trains its backbone."""
    if policy.trains_backbone:
        return np.stack([obs.images[v] for v in policy.views])
    return compact[0].cpu().numpy().astype(np.float16)


def run_episode(
    env: SimEnv,
    act: ActionSource,
    featurize: Featurizer,
    lang: torch.Tensor,
    seed: int | None = None,
    split: str | None = None,
    keep_frames: bool = False,
    keep_backbone_tokens: bool = False,
    on_reset: Callable[[], None] | None = None,
    keep_observations: bool = False,
    arbiter: InterventionArbiter | None = None,
    perturb: Callable[[np.ndarray], np.ndarray] | None = None,
) -> EpisodeRecord:
    """Run ``act`` for one episode of ``env`` (reset with ``seed``/``split``).

    ``lang`` is a function of the instruction: ``lang(text) -> [1, L]`` embedding. With an
    ``arbiter``, every tick it chooses between ``act``'s action and a human's, and the record
    says which steps the human took. With ``perturb`` (DART-style demonstrations), the arm
    executes ``perturb(action)`` while the record (``action`` and ``env_action``) keeps
    ``action`` itself, inside the bounds: the states show the drift, the actions the correction.
    """
    obs = env.reset(seed=seed, split=split)
    cell = getattr(env, "layout_cell", None)
    if on_reset is not None:
        on_reset()
    if arbiter is not None:
        arbiter.on_episode_start(obs)
    human: list[bool] = []
    instr_emb = lang(env.instruction)
    normalizer = ActionNormalizer(env.action_spec)
    potential = OnlinePotential(featurize.critic) if featurize.critic is not None else None
    tokens, states, actions, rewards, terminals, phis, dones = [], [], [], [], [], [], []
    frames: list[np.ndarray] = []
    full: list[np.ndarray] = []
    observations: list[Observation] = []
    applied: list[np.ndarray] = []

    def observe(o: Observation, first: bool) -> torch.Tensor:
        compact, critic_tokens, backbone_tokens = featurize(o)
        tokens.append(replay_tokens(featurize.policy, o, compact))
        if keep_backbone_tokens:
            full.append(backbone_tokens[0].cpu().numpy().astype(np.float16))
        states.append(o.state)
        if potential is None:
            phi, done = 0.0, 0.0
        elif first:
            phi, done = potential.start(critic_tokens, instr_emb)
        else:
            phi, done = potential.step(critic_tokens)
        phis.append(phi)
        dones.append(done)
        if keep_frames:
            frames.append(np.concatenate([o.images[v] for v in featurize.policy.views], axis=1))
        if keep_observations:
            observations.append(o)
        return compact

    compact = observe(obs, first=True)
    success = False
    for _ in range(env.step_limit):
        action = act(obs, compact, instr_emb)
        if arbiter is not None:
            action, by_human = arbiter.choose(obs, action)
            human.append(bool(by_human))
        if perturb is None:
            result = env.step(action)
            taken = result.action
        else:  # the record, in the replay and on disk alike, is the unperturbed action
            result = env.step(perturb(action))
            taken = env.action_spec.clip(action)
        actions.append(normalizer.normalize(taken))
        if keep_observations:
            applied.append(taken)
        rewards.append(float(result.success))
        terminals.append(result.terminated)
        obs = result.observation
        compact = observe(obs, first=False)
        if result.terminated or result.truncated:
            success = result.success
            break
    return EpisodeRecord(
        instruction=env.instruction,
        tokens=np.stack(tokens),
        state=np.stack(states).astype(np.float32),
        action=np.stack(actions).astype(np.float32),
        reward=np.asarray(rewards, np.float32),
        terminal=np.asarray(terminals, bool),
        phi=np.asarray(phis, np.float32),
        done_prob=np.asarray(dones, np.float32),
        success=success,
        frames=frames,
        backbone_tokens=np.stack(full) if keep_backbone_tokens else None,
        observations=observations,
        env_action=np.stack(applied).astype(np.float32) if keep_observations else None,
        intervention=np.asarray(human, bool) if arbiter is not None else None,
        seed=seed,
        cell=cell,
    )
