"""The learning algorithm: off-policy actor-critic in the RLPD/SAC family, plus behaviour cloning.

One update, top to bottom:

1. Critic: soft TD targets from a Polyak-averaged target critic, the minimum over a random
   subset of its ensemble heads (REDQ), regressed by every head.
2. Actor: maximise ``mean_e Q_e(s, pi(s)) - alpha * log pi`` and, on rows that came from a
   human (demonstrations, interventions), imitate the human's action (BC term).
3. Temperature: ``alpha`` tracks a target entropy.
4. Target networks: Polyak averaging.

Actor and critic each have their own :class:`ObservationEncoder`: the critic's is shaped by
TD learning, the actor's by behaviour cloning and the actor loss. Actions are normalised to
``[-1, 1]`` per component (``ActionNormalizer``) before they reach the networks.

Data parallel (:meth:`RLPDAgent.data_parallel`): every optimiser step's gradients are averaged
over the ranks, and the random draws (the REDQ head subset, the policy's sampling noise) come
from one generator that every rank keeps in step; each rank takes its own rows of the noise
drawn for the whole global batch. An update on N ranks with batches ``b_0 .. b_{N-1}`` of equal
size is then the update of one process on their concatenation, up to floating-point summation
order.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch idiom)
from torch import nn

from limbic.contracts import ActionSpec
from limbic.launch.config import require
from limbic.policy.losses import (
    actor_loss,
    critic_loss,
    polyak_update,
    td_target,
    temperature_loss,
)
from limbic.policy.networks import (
    POOLINGS,
    POSITIONS,
    WAYPOINT_SOURCES,
    MixtureTanhGaussianActor,
    ObservationEncoder,
    QEnsemble,
    TanhGaussianActor,
    random_shift,
)


@dataclass
class AgentConfig:
    """Network sizes and the actor-critic's hyper-parameters."""

    d_model: int = 64
    """Width of the projected vision tokens."""
    n_queries: int = 4
    """Language-conditioned attention-pooling queries per view."""
    position: str = "learned"
    """How a vision token's place in the grid enters the encoder: ``learned`` (one free
    embedding per token), ``grid`` (a learned linear map of the token's fixed (x, y) grid
    coordinates, so attention pooling yields coordinates as numbers, also for places the
    demonstrations never showed) or ``both`` (their sum)."""
    pooling: str = "attention"
    """How the encoder reduces each view's token grid: ``attention`` (language-conditioned
    queries take weighted averages of the tokens), ``flatten`` (each token is mapped to a
    few numbers and the grid is concatenated in place, so a token's position is its slot),
    ``keypoints`` (spatial soft-argmax: per view, 16 learned softmaxes over the grid, each read
    out as the expected (x, y) of the tokens it picks) or ``attention_keypoints`` (both the
    attention-pooled features and the keypoint coordinates)."""
    feature_dim: int = 256
    """Width of the observation feature the heads read."""
    hidden: int = 256
    """Width of the actor and Q MLPs."""
    n_q: int = 4
    """Q heads in the ensemble."""
    q_subset: int = 2
    """Heads whose minimum forms the TD target."""
    gamma: float = 0.95
    """Discount per control tick."""
    tau: float = 0.01
    """Polyak rate of the target critic."""
    lr: float = 3e-4
    """Adam learning rate of all three optimisers."""
    init_alpha: float = 0.05
    """Initial entropy temperature."""
    target_entropy_per_dim: float | None = None
    """Target entropy per action dimension for the temperature. None: derived from ``bc_std``
    (see :meth:`entropy_target_per_dim`)."""
    bc_weight: float = 1.0
    """Weight of the BC term on human rows during RL."""
    value_weight: float = 1.0
    """Weight of the actor's value term during RL (0: the actor only imitates the human rows;
    with ``imitate_successes`` that is filtered behaviour cloning). At 0, unless IBRL is on, no
    one reads the Q ensemble, so updates skip its step and cost the actor's alone."""
    waypoint_weight: float = 0.0
    """Weight of an auxiliary loss on human rows: a head on the actor's feature predicts the
    motion still to come before the next gripper event (the replay's ``waypoint``: the
    displacement to where the demonstrator grasps or lets go, in normalised action units; Huber
    loss), so the encoder must localise the target, not only copy the motion toward it. 0: no
    head."""
    waypoint_input: bool = False
    """Append the waypoint head's prediction to the feature the actor and Q heads read (needs
    ``waypoint_weight > 0``, or the ``pretrained`` source)."""
    waypoint_source: str = "feature"
    """What the waypoint head reads. ``feature``: the actor's pooled feature (the head shares
    the encoder). ``tokens``: a localiser of its own, an MLP on every view's whole token grid
    and the state, trained by the waypoint loss alone; with ``waypoint_input`` its prediction
    goes to the actor detached (the Q heads do not get it), so imitation cannot make it a
    second channel for memorising layouts, and it reads tokens with ``waypoint_token_noise``.
    ``pretrained``: the same localiser, fitted once before cloning on many views labelled with
    the offset from the tool to the object (``limbic.sim.localise``, the learning loop's
    ``localiser``) and frozen from then on; it needs ``waypoint_input`` and no waypoint loss
    (``waypoint_weight`` 0). It reads the clean state, and the tokens with
    ``waypoint_token_noise``, so its input in training is what it gets when acting."""
    localise_goal: bool = False
    """With ``waypoint_source=pretrained``: the localiser also predicts the offset from the tool
    to the task's goal (pick-and-place's bowl, push's zone, stack's base cube), fitted on the
    same labelled views; the actor reads both offsets."""
    localiser_target: str = "object"
    """With ``waypoint_source=pretrained``: where the localiser's (first) offset points.
    ``object``: the object's centre. ``grasp``: where the tool grasps it, clear of a one-sided
    gripper's fixed jaw (the demonstrator's ``jaw_gap_m``) and at the grasp depth, so the actor
    need not work out the jaws' clearance itself (pick and place, stack;
    ``limbic.sim.localise.localiser_views``). Evaluation measures it along the approach
    against the grasp point with the expert's default gap."""
    localiser_skip: bool = False
    """With ``waypoint_source=pretrained`` and an end-effector action space: a learned linear
    map from the localiser's offset straight to the action head's pre-squash mean, starting as
    the identity from the offset's x, y, z to the chunk's first move (both are in end-effector
    steps, so that first move starts out as the demonstrator's: the whole offset, squashed
    to one step). The actor's own network learns what to add, and cloning trains the map too.
    On in the watched preset (README, "A straight path from the localiser")."""
    waypoint_token_noise: float | None = None
    """Token noise of the localiser's input in training (None: ``token_noise`` for the
    ``tokens`` source, 0 for ``pretrained``), so it can learn on cleaner tokens than the actor,
    which needs the noise against memorising the demonstrations."""
    grad_clip: float = 10.0
    """Global gradient-norm clip for every optimiser step."""
    token_noise: float = 1.0
    """Std of the Gaussian noise added to every vision token of a training batch, in units of
    the tokens' own spread (the compressor scales them to unit std). With a frozen backbone
    the tokens are stored once per frame, so this is the augmentation that keeps a few
    demonstrations from being memorised (0 turns it off)."""
    critic_token_noise: float | None = None
    """Token noise of the critic's batches (None: ``token_noise``, one augmented batch for both;
    two draws of it with a trainable backbone, whose encoding only the critic's batch trains),
    so the Q-function can train on cleaner tokens than the actor, which needs the noise against
    memorising the demonstrations."""
    online_token_noise: float | None = None
    """Token noise of the online updates (after BC pre-training; None: ``token_noise``). The
    noise keeps 20 demonstrations from being memorised, and it also hides the small cube from
    the policy; once the policy's own successes have added layouts (filtered cloning), less of
    it may pay (README, Learning)."""
    online_state_dropout: float | None = None
    """State dropout of the online updates (None: ``state_dropout``), for the same reason."""
    lang_dropout: float = 0.3
    """Fraction of a training batch's rows whose instruction embedding is zeroed."""
    state_noise: float = 0.0
    """Std of the Gaussian noise added to the proprioceptive state (and next state) of a
    training batch, in the state's own units (radians, gripper closure); 0 turns it off."""
    state_dropout: float = 0.5
    """Fraction of a training batch's rows whose proprioceptive state (and next state) is
    zeroed, so the policy cannot lean on the arm's pose alone to tell where it is in a task and
    has to look (0 turns it off). Image BC on pick-and-place, agent seeds 0-4: 0.5 beat 0 on
    every seed (README, Learning)."""
    view_dropout: float = 0.0
    """Fraction of a training batch's rows that lose one camera view, chosen at random (its
    pooled features are masked out, as a missing view is at acting time), so no single view can
    carry the task alone (0 turns it off; needs two views or more)."""
    token_dropout: float = 0.0
    """Fraction of the vision tokens of every training row masked out at random, each token on
    its own (attention pooling ignores a masked token; the other poolings zero it). With a few
    demonstrations the large, salient objects of a scene can stand in for the small one a task
    names (the bowl's place predicts the cube's across layouts); a token that may be gone cannot
    be relied on alone (0 turns it off)."""
    q_normalize: bool = True
    """Divide the actor's Q term by the batch's mean |Q| when above 1 (TD3+BC's normalisation),
    so the BC term keeps its weight against it whatever the scale of the returns."""
    bc_dim_weights: str = "equal"
    """How the BC loss weighs the action components. ``equal``: the squared error of every
    normalised component counts the same. ``inverse_variance``: each component's error is
    divided by its variance in the human rows (a running estimate, kept with the weights), the
    weights then scaled to mean 1, so a component the demonstrations move little (pick-and-
    place's x: a third of y's spread) weighs as much as one they move a lot."""
    head_components: int = 1
    """Components of the action head. 1: one tanh-Gaussian over the chunk, imitation its mean's
    squared error. 2 or more: a mixture of tanh-Gaussians whose imitation loss is the mixture's
    negative log-likelihood of the human actions, so differing actions after similar
    observations stay apart instead of being averaged (``MixtureTanhGaussianActor``);
    deterministic acting takes the most probable component's mean."""
    bc_std: float = 0.1
    """The exploration noise: BC pre-training and every actor step regress the actor's
    (pre-squash) standard deviation to this, so online episodes explore around the demonstrated
    actions instead of in the untrained head's noise, and the entropy term cannot inflate it
    while the Q-function is still poor (0: the entropy term alone sets it, as in SAC)."""
    rl_through_encoder: bool = False
    """Let the actor's value term train the actor's encoder too; off, the encoder learns from the
    BC term alone and the value term moves only the action head (perception stays what the
    demonstrations taught while the Q-function is still poor)."""
    critic_warmup: int = 1000
    """RL updates at the start of online learning that train the critic only: the actor, fresh
    from BC pre-training, follows the Q-function once it has seen some online data."""
    image_shift: int = 4
    """Random-shift augmentation, in pixels, for a trainable backbone (whose frames the replay
    stores instead of tokens): every training batch pads each frame by this much (edge pixels
    repeated) and crops it back at a random offset per row before the backbone runs (0 turns
    it off). Unused with a frozen backbone."""
    lang_noise: float = 0.5
    """Std of the Gaussian noise on the instruction embeddings of a training batch, relative to
    each embedding's own RMS (held-out phrasings land near, not on, the training ones)."""
    actor_ema: float = 0.995
    """Decay of the exponential moving average of the actor (encoder and head) that acts, in
    online episodes, evaluation and serving; every actor step updates it. A closed-loop policy's
    success swings widely between nearby weights; the average does not (0: the live actor acts).
    The decay is capped by a ramp (``actor_ema_ramp``) over the first steps."""
    actor_ema_ramp: float = 10.0
    """The average's decay at actor step ``n`` is ``min(actor_ema, (1 + n) / (ramp + n))``. While
    the ramp is below ``actor_ema`` the average weighs step ``k`` about as ``k ** (ramp - 2)``:
    it spans roughly the last ``1 / (ramp - 1)`` of the steps taken. With ramp 10 the cap
    reaches 0.995 after about 1800 steps and 0.999 after about 9000."""
    bootstrap_from_bc: bool = False
    """Imitation-bootstrapped RL (IBRL): at the first RL update, keep a frozen copy of the acting
    actor as BC pre-training left it (the reference). From the end of the critic's warm-up on,
    acting and the TD targets take, state by state, whichever of the reference's action and the
    RL actor's the Q-function values higher, and the targets bootstrap from the better of the
    two. The RL actor itself learns as before. It helps only where the Q-function ranks the two
    actions right: it did on privileged state, not yet on image tokens (README, Benchmarks)."""

    def __post_init__(self) -> None:
        require(
            self.position in POSITIONS,
            "agent.position",
            f"expected one of {', '.join(POSITIONS)}, got {self.position!r}",
        )
        require(
            self.pooling in POOLINGS,
            "agent.pooling",
            f"expected one of {', '.join(POOLINGS)}, got {self.pooling!r}",
        )
        require(
            self.waypoint_source in WAYPOINT_SOURCES,
            "agent.waypoint_source",
            f"expected one of {', '.join(WAYPOINT_SOURCES)}, got {self.waypoint_source!r}",
        )
        require(
            self.waypoint_token_noise is None or self.waypoint_token_noise >= 0,
            "agent.waypoint_token_noise",
            f"must be >= 0, got {self.waypoint_token_noise}",
        )
        require(
            self.online_token_noise is None or self.online_token_noise >= 0,
            "agent.online_token_noise",
            f"must be >= 0, got {self.online_token_noise}",
        )
        require(
            self.online_state_dropout is None or 0 <= self.online_state_dropout < 1,
            "agent.online_state_dropout",
            f"must be in [0, 1), got {self.online_state_dropout}",
        )
        require(
            self.waypoint_weight >= 0,
            "agent.waypoint_weight",
            f"must be >= 0, got {self.waypoint_weight}",
        )
        pretrained = self.waypoint_source == "pretrained"
        require(
            not self.waypoint_input or self.waypoint_weight > 0 or pretrained,
            "agent.waypoint_input",
            "needs agent.waypoint_weight > 0 (the head it appends is trained by that loss) or "
            "agent.waypoint_source=pretrained",
        )
        if pretrained:
            require(
                self.waypoint_input,
                "agent.waypoint_input",
                "must be true with agent.waypoint_source=pretrained (the localiser is fitted "
                "for the actor to read)",
            )
            require(
                self.waypoint_weight == 0,
                "agent.waypoint_weight",
                "must be 0 with agent.waypoint_source=pretrained (the fitted localiser stays "
                f"frozen), got {self.waypoint_weight}",
            )
        require(
            not self.localise_goal or pretrained,
            "agent.localise_goal",
            "needs agent.waypoint_source=pretrained (the goal's offset is a label of the "
            "localiser's fitted views)",
        )
        require(
            self.localiser_target in ("object", "grasp"),
            "agent.localiser_target",
            f"expected 'object' or 'grasp', got {self.localiser_target!r}",
        )
        require(
            self.localiser_target == "object" or pretrained,
            "agent.localiser_target",
            "needs agent.waypoint_source=pretrained (the grasp point is a label of the "
            "localiser's fitted views)",
        )
        require(
            not self.localiser_skip or pretrained,
            "agent.localiser_skip",
            "needs agent.waypoint_source=pretrained (the map reads the fitted localiser's offset)",
        )
        require(
            not self.localiser_skip or self.head_components == 1,
            "agent.localiser_skip",
            f"needs agent.head_components=1 (one Gaussian head), got {self.head_components}",
        )
        require(self.n_q >= 1, "agent.n_q", f"must be >= 1, got {self.n_q}")
        require(
            1 <= self.q_subset <= self.n_q,
            "agent.q_subset",
            f"must be in [1, n_q={self.n_q}], got {self.q_subset}",
        )
        require(0.0 < self.gamma < 1.0, "agent.gamma", f"must be in (0, 1), got {self.gamma}")
        require(0.0 < self.tau <= 1.0, "agent.tau", f"must be in (0, 1], got {self.tau}")
        require(self.lr > 0, "agent.lr", f"must be > 0, got {self.lr}")
        require(self.init_alpha > 0, "agent.init_alpha", f"must be > 0, got {self.init_alpha}")
        require(self.bc_weight >= 0, "agent.bc_weight", f"must be >= 0, got {self.bc_weight}")
        require(
            self.value_weight >= 0, "agent.value_weight", f"must be >= 0, got {self.value_weight}"
        )
        require(self.token_noise >= 0, "agent.token_noise", f"must be >= 0, got {self.token_noise}")
        require(
            self.critic_token_noise is None or self.critic_token_noise >= 0,
            "agent.critic_token_noise",
            f"must be >= 0 or null, got {self.critic_token_noise}",
        )
        require(
            0.0 <= self.lang_dropout < 1.0,
            "agent.lang_dropout",
            f"must be in [0, 1), got {self.lang_dropout}",
        )
        require(self.state_noise >= 0, "agent.state_noise", f"must be >= 0, got {self.state_noise}")
        require(
            0.0 <= self.state_dropout < 1.0,
            "agent.state_dropout",
            f"must be in [0, 1), got {self.state_dropout}",
        )
        require(
            0.0 <= self.view_dropout < 1.0,
            "agent.view_dropout",
            f"must be in [0, 1), got {self.view_dropout}",
        )
        require(
            0.0 <= self.token_dropout < 1.0,
            "agent.token_dropout",
            f"must be in [0, 1), got {self.token_dropout}",
        )
        require(self.image_shift >= 0, "agent.image_shift", f"must be >= 0, got {self.image_shift}")
        require(self.lang_noise >= 0, "agent.lang_noise", f"must be >= 0, got {self.lang_noise}")
        require(
            self.target_entropy_per_dim is None or math.isfinite(self.target_entropy_per_dim),
            "agent.target_entropy_per_dim",
            f"must be a finite number or null, got {self.target_entropy_per_dim}",
        )
        require(
            self.head_components >= 1,
            "agent.head_components",
            f"must be >= 1, got {self.head_components}",
        )
        require(self.bc_std >= 0, "agent.bc_std", f"must be >= 0, got {self.bc_std}")
        require(
            self.bc_dim_weights in ("equal", "inverse_variance"),
            "agent.bc_dim_weights",
            f"expected equal or inverse_variance, got {self.bc_dim_weights!r}",
        )
        require(
            self.critic_warmup >= 0,
            "agent.critic_warmup",
            f"must be >= 0, got {self.critic_warmup}",
        )
        require(
            0.0 <= self.actor_ema < 1.0,
            "agent.actor_ema",
            f"must be in [0, 1), got {self.actor_ema}",
        )
        require(
            self.actor_ema_ramp > 1.0,
            "agent.actor_ema_ramp",
            f"must be > 1, got {self.actor_ema_ramp}",
        )

    def entropy_target_per_dim(self) -> float:
        """The temperature's target entropy per action dimension.

        With the exploration noise anchored (``bc_std > 0``) the policy's entropy stays near a
        Gaussian's of std ``bc_std`` (less where tanh saturates), so a target above that can
        never be met: alpha would then grow for as long as training runs, and the entropy bonus
        in the TD targets would swamp a sparse task reward (on pick-and-place with the state
        probe: Q fell to -6 for rewards in [0, 1], and held-out success from 0.88 to 0.55 over
        150 episodes). The derived target is one nat per dimension below that Gaussian's
        entropy, so alpha shrinks while the anchor holds. Without the anchor: -0.5 (SAC's -1
        is often too random for manipulation).
        """
        if self.target_entropy_per_dim is not None:
            return self.target_entropy_per_dim
        if self.bc_std > 0:
            return math.log(self.bc_std) + 0.5 * math.log(2 * math.pi * math.e) - 1.0
        return -0.5


@dataclass(frozen=True)
class ObsShape:
    """What the agent's inputs look like: token maps per view, state, language."""

    n_views: int
    n_tokens: int
    token_dim: int
    state_dim: int
    lang_dim: int
    action_dim: int
    chunk_len: int = 1


class ActionNormalizer:
    """Maps env actions (declared bounds) to ``[-1, 1]`` per component and back."""

    def __init__(self, spec: ActionSpec):
        self.low = spec.low.astype(np.float32)
        self.high = spec.high.astype(np.float32)
        self.half = (self.high - self.low) / 2
        self.mid = (self.high + self.low) / 2

    def normalize(self, action: np.ndarray) -> np.ndarray:
        """Env units -> [-1, 1]."""
        return ((np.asarray(action, np.float32) - self.mid) / self.half).clip(-1.0, 1.0)

    def denormalize(self, action: np.ndarray) -> np.ndarray:
        """[-1, 1] -> env units, inside the declared bounds."""
        return np.clip(np.asarray(action, np.float32) * self.half + self.mid, self.low, self.high)


EMA_KEYS = ("ema_encoder.", "ema_actor.", "ema_steps")
"""State-dict keys of the acting average (absent from checkpoints written before it)."""

Batch = dict[str, torch.Tensor]
"""``tokens, state, lang, action, reward, terminal, next_tokens, next_state, human`` tensors,
and optionally ``discount`` (``gamma^n`` per row; ``gamma`` when absent) and ``waypoint`` (the
motion to the next gripper event; needed with ``waypoint_weight``)."""


class DataParallelGroup(Protocol):
    """What the agent needs of a data-parallel group (``limbic.runtime.distributed.DistContext``)."""

    rank: int
    world_size: int

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over the ranks."""

    def average_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Replace each gradient by its mean over the ranks."""

    def broadcast_module(self, module: nn.Module) -> None:
        """Give ``module``'s parameters and buffers rank 0's values."""

    def broadcast_generator(self, generator: torch.Generator) -> None:
        """Give ``generator`` rank 0's state."""


def _median_row_error(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """Median over rows of the mean absolute error per component (nan for no rows)."""
    if predicted.shape[0] == 0:
        return float("nan")
    return float((predicted - target).abs().mean(-1).median())


class RLPDAgent(nn.Module):
    """Actor, critic ensemble, target critic, temperature and their optimisers."""

    def __init__(self, cfg: AgentConfig, shape: ObsShape, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.cfg, self.shape = cfg, shape
        self.action_size = shape.action_dim * shape.chunk_len
        # the waypoint head predicts the offset to the object (and, localising the goal, to it)
        waypoint_dim = max(shape.action_dim - 1, 1) * (2 if cfg.localise_goal else 1)

        def encoder(critic: bool = False) -> ObservationEncoder:
            # a localiser (tokens or pretrained source) serves the actor alone
            waypoint = (cfg.waypoint_weight > 0 or cfg.waypoint_source == "pretrained") and not (
                critic and cfg.waypoint_source != "feature"
            )
            return ObservationEncoder(
                shape.n_views,
                shape.n_tokens,
                shape.token_dim,
                shape.state_dim,
                shape.lang_dim,
                cfg.d_model,
                cfg.n_queries,
                cfg.feature_dim,
                position=cfg.position,
                pooling=cfg.pooling,
                waypoint_dim=waypoint_dim if waypoint else 0,
                waypoint_input=cfg.waypoint_input and waypoint,
                waypoint_source=cfg.waypoint_source,
            )

        self.actor_encoder = encoder()
        if cfg.head_components > 1:
            self.actor: TanhGaussianActor = MixtureTanhGaussianActor(
                self.actor_encoder.feature_dim,
                shape.action_dim,
                shape.chunk_len,
                cfg.hidden,
                cfg.head_components,
            )
        else:
            self.actor = TanhGaussianActor(
                self.actor_encoder.feature_dim,
                shape.action_dim,
                shape.chunk_len,
                cfg.hidden,
                # the offset's x, y, z onto the first dx, dy, dz (the gripper comes last)
                skip_dim=waypoint_dim if cfg.localiser_skip else 0,
                skip_identity=min(3, waypoint_dim, shape.action_dim - 1),
            )
        # the acting copy: a moving average of the actor (the live one when actor_ema is 0)
        self.ema_encoder = copy.deepcopy(self.actor_encoder).requires_grad_(False)
        self.ema_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))
        if cfg.bc_dim_weights == "inverse_variance":  # running variance of each human component
            self.register_buffer("bc_action_var", torch.zeros(shape.action_dim))
            self.register_buffer("bc_var_rows", torch.zeros((), dtype=torch.long))
        if cfg.bootstrap_from_bc:  # the frozen BC reference (IBRL); filled at the first RL update
            self.ref_encoder = copy.deepcopy(self.actor_encoder).requires_grad_(False)
            self.ref_actor = copy.deepcopy(self.actor).requires_grad_(False)
            self.register_buffer("ref_frozen", torch.zeros((), dtype=torch.bool))
            self.register_buffer("ref_active", torch.zeros((), dtype=torch.bool))
        self.critic_encoder = encoder(critic=True)
        self.critic = QEnsemble(
            self.critic_encoder.feature_dim, self.action_size, cfg.n_q, cfg.hidden
        )
        self.target_encoder = copy.deepcopy(self.critic_encoder).requires_grad_(False)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.init_alpha)))
        self.target_entropy = cfg.entropy_target_per_dim() * self.action_size
        self.actor_opt = torch.optim.Adam(
            [*self.actor_encoder.parameters(), *self.actor.parameters()], lr=cfg.lr
        )
        self.critic_opt = torch.optim.Adam(
            [*self.critic_encoder.parameters(), *self.critic.parameters()], lr=cfg.lr
        )
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.updates = 0
        self.parallel: DataParallelGroup | None = None
        # a trainable backbone (attach_frames); kept out of the agent's own state dict, since
        # the policy that owns the backbone saves it
        self._frames_to_tokens: nn.Module | None = None
        self.frames_opt: torch.optim.Optimizer | None = None

    def attach_frames(self, frames_to_tokens: nn.Module) -> None:
        """Learn from frames through a trainable backbone: ``frames_to_tokens`` maps
        ``uint8[B, H, W, 3]`` to tokens ``[B, N, token_dim]`` with gradients.

        Batches then carry frames ``uint8[B, V, H, W, 3]`` under ``tokens``/``next_tokens``.
        Each batch is shifted at random (``image_shift``) and encoded once: the critic's loss
        trains the backbone during RL and the BC loss during pre-training (as DrQ, the actor's
        value term sees the backbone's output detached); next frames are encoded without
        gradients.
        """
        self._frames_to_tokens = frames_to_tokens
        params = [p for p in frames_to_tokens.parameters() if p.requires_grad]
        self.frames_opt = torch.optim.Adam(params, lr=self.cfg.lr)

    @property
    def learns_from_frames(self) -> bool:
        """Whether batches carry frames for a trainable backbone instead of stored tokens."""
        return self._frames_to_tokens is not None

    def encode_frames(self, frames: torch.Tensor, shift: bool = True) -> torch.Tensor:
        """``uint8[B, V, H, W, 3]`` -> tokens ``[B, V, N, k]`` through the trainable backbone,
        each frame randomly shifted by up to ``image_shift`` pixels when ``shift``."""
        if self._frames_to_tokens is None:
            raise RuntimeError("encode_frames needs a trainable backbone (attach_frames)")
        b, v = frames.shape[:2]
        flat = frames.reshape(b * v, *frames.shape[2:])
        pad = self.cfg.image_shift
        if shift and pad > 0:
            # uniform draws through the shared generator, so data-parallel ranks stay in step
            u = self._randn((b, v, 2), frames.device, uniform=True).reshape(b * v, 2)
            offsets = (u * (2 * pad + 1)).long().clamp_(0, 2 * pad)
            flat = random_shift(flat, pad, offsets)
        tokens = self._frames_to_tokens(flat)
        return tokens.reshape(b, v, *tokens.shape[1:])

    def _tokens_from_frames(self, b: Batch) -> Batch:
        """The batch with its frames encoded: ``tokens`` with gradients into the backbone,
        ``next_tokens`` (when present) without."""
        out = dict(b)
        out["tokens"] = self.encode_frames(b["tokens"])
        if "next_tokens" in b:
            with torch.no_grad():
                out["next_tokens"] = self.encode_frames(b["next_tokens"])
        return out

    def data_parallel(self, group: DataParallelGroup | None) -> RLPDAgent:
        """Learn as one rank of ``group``: gradients averaged over ranks, noise sliced per rank.

        Every rank calls this at the same point; the weights (target networks included) and
        the generator are then rank 0's everywhere. Afterwards every rank must make the same
        updates with batches of the same size. Optimiser states are not sent: join before the
        first step, or have every rank restore the same checkpoint. None: learn alone again.
        """
        if group is not None:
            group.broadcast_module(self)
            if self._frames_to_tokens is not None:
                group.broadcast_module(self._frames_to_tokens)
            group.broadcast_generator(self.generator)
        self.parallel = group
        return self

    @property
    def alpha(self) -> torch.Tensor:
        """The entropy temperature (detached)."""
        return self.log_alpha.detach().exp()

    # --- acting --------------------------------------------------------------------------------
    def _acting_copy(self) -> tuple[ObservationEncoder, TanhGaussianActor]:
        """The encoder and head that act: the moving average, or the live actor without one."""
        if self.cfg.actor_ema > 0:
            return self.ema_encoder, self.ema_actor
        return self.actor_encoder, self.actor

    @torch.no_grad()
    def act(
        self,
        tokens: torch.Tensor,
        state: torch.Tensor,
        lang: torch.Tensor,
        deterministic: bool = False,
    ) -> torch.Tensor:
        """Normalised actions ``[B, chunk_len * action_dim]`` in [-1, 1] (the acting copy's, or
        the BC reference's where the Q-function prefers it; see ``bootstrap_from_bc``)."""
        encoder, actor = self._acting_copy()
        feature = encoder(tokens, state, lang)
        action = actor(feature, deterministic=deterministic)[0]
        if self.cfg.bootstrap_from_bc:
            # a tensor condition, not a Python branch, so an exported graph keeps the choice
            ref = self.ref_actor(
                self.ref_encoder(tokens, state, lang), deterministic=deterministic
            )[0]
            critic_feature = self.critic_encoder(tokens, state, lang)
            q_rl = self.critic(critic_feature, action).mean(0)
            q_ref = self.critic(critic_feature, ref).mean(0)
            take_ref = self.ref_active & (q_ref > q_rl)
            action = torch.where(take_ref.unsqueeze(-1), ref, action)
        return action

    @torch.no_grad()
    def _freeze_reference(self) -> None:
        """Keep the acting actor as it is now as the frozen BC reference (IBRL)."""
        encoder, actor = self._acting_copy()
        self.ref_encoder.load_state_dict(encoder.state_dict())
        self.ref_actor.load_state_dict(actor.state_dict())
        self.ref_frozen.fill_(True)

    @torch.no_grad()
    def _update_ema(self) -> None:
        """Move the acting copy towards the live actor (after every actor step).

        The decay ramps up as ``(1 + n) / (ramp + n)`` over the first steps, so a fresh average
        follows the live actor instead of lingering at the initial weights."""
        n = int(self.ema_steps)
        decay = min(self.cfg.actor_ema, (1 + n) / (self.cfg.actor_ema_ramp + n))
        self.ema_steps += 1
        for ema, live in ((self.ema_encoder, self.actor_encoder), (self.ema_actor, self.actor)):
            for e, p in zip(ema.parameters(), live.parameters(), strict=True):
                e.lerp_(p, 1.0 - decay)
            for e, b in zip(ema.buffers(), live.buffers(), strict=True):
                e.copy_(b)

    # --- learning ------------------------------------------------------------------------------
    def _noise(self, rows: int, device: torch.device) -> torch.Tensor:
        """Standard normal sampling noise ``[rows, actor.noise_dim]`` for this rank's rows."""
        return self._randn((rows, self.actor.noise_dim), device)

    def _randn(
        self, shape: tuple[int, ...], device: torch.device, uniform: bool = False
    ) -> torch.Tensor:
        """Standard normal (or uniform in [0, 1)) noise of ``shape`` for this rank's rows.

        All ranks draw the global batch's noise and keep their slice, so the shared generator
        advances alike everywhere and row ``i`` of rank ``r`` gets what row ``r * rows + i``
        of one process on the concatenated batch would.
        """
        rank, world = (self.parallel.rank, self.parallel.world_size) if self.parallel else (0, 1)
        rows, *rest = shape
        draw = torch.rand if uniform else torch.randn
        full = draw((rows * world, *rest), generator=self.generator)
        return full[rank * rows : (rank + 1) * rows].to(device)

    def _mean_abs(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of ``|x|`` over every rank's rows, at least 1: the normalisation shrinks the value
        term when returns are large and never magnifies a Q-function that is still near 0."""
        total, count = float(x.abs().sum()), float(x.numel())
        if self.parallel is not None:
            total, count = self.parallel.sum([total, count])
        return torch.tensor(max(total / count, 1.0), device=x.device)

    def augment(
        self, b: Batch, token_noise: float | None = None, state_dropout: float | None = None
    ) -> Batch:
        """The batch as training sees it: noisy vision tokens and perturbed instructions.

        Tokens (and next tokens) get ``token_noise`` (default: the configured one) Gaussian
        noise; ``lang_dropout`` of the rows lose their instruction, the rest get ``lang_noise``
        relative Gaussian noise; the state gets ``state_noise`` noise and ``state_dropout``
        (default: the configured one) of the rows lose it (the same rows for the state and the
        next state). ``view_mask`` (true: present) marks what ``view_dropout`` removed, per view
        ``[rows, views]``, or, with ``token_dropout``, per token ``[rows, views, tokens]``; the
        encoders take either. A ``tokens``-source waypoint localiser gets ``waypoint_tokens``,
        the tokens with a noise draw of their own (``waypoint_token_noise``); a ``pretrained``
        one gets those (noise 0 unless configured) and ``waypoint_state``, the clean state.
        """
        cfg = self.cfg
        token_noise = cfg.token_noise if token_noise is None else token_noise
        state_dropout = cfg.state_dropout if state_dropout is None else state_dropout
        out = dict(b)
        rows, device = b["tokens"].shape[0], b["tokens"].device
        if token_noise > 0:
            for key in ("tokens", "next_tokens"):
                if key in b:
                    noise = self._randn(tuple(b[key].shape), device)
                    out[key] = b[key].float() + token_noise * noise
        pretrained = cfg.waypoint_source == "pretrained"
        if (cfg.waypoint_weight > 0 and cfg.waypoint_source == "tokens") or pretrained:
            # the localiser's own draw (``waypoint_token_noise``)
            loc_noise = cfg.waypoint_token_noise
            if loc_noise is None:
                loc_noise = 0.0 if pretrained else token_noise
            out["waypoint_tokens"] = b["tokens"].float()
            if loc_noise > 0:
                noise = self._randn(tuple(b["tokens"].shape), device)
                out["waypoint_tokens"] = out["waypoint_tokens"] + loc_noise * noise
            if pretrained:  # it reads the state as acting gives it
                out["waypoint_state"] = b["state"].float()
        if cfg.lang_dropout > 0 or cfg.lang_noise > 0:
            lang = b["lang"].float()
            rms = lang.pow(2).mean(-1, keepdim=True).sqrt()
            noisy = lang + cfg.lang_noise * rms * self._randn(tuple(lang.shape), device)
            keep = self._randn((rows, 1), device, uniform=True) >= cfg.lang_dropout
            out["lang"] = noisy * keep
        if cfg.state_noise > 0 or state_dropout > 0:
            keep = None
            if state_dropout > 0:
                keep = self._randn((rows, 1), device, uniform=True) >= state_dropout
            for key in ("state", "next_state"):
                if key in b:
                    state = b[key].float()
                    if cfg.state_noise > 0:
                        state = state + cfg.state_noise * self._randn(tuple(state.shape), device)
                    out[key] = state if keep is None else state * keep
        views = b["tokens"].shape[1]
        if cfg.view_dropout > 0 and views > 1:
            drop = self._randn((rows, 1), device, uniform=True) < cfg.view_dropout
            which = (
                (self._randn((rows, 1), device, uniform=True) * views).long().clamp_max(views - 1)
            )
            lost = torch.arange(views, device=device) == which  # [rows, views]
            out["view_mask"] = ~(lost & drop)
        if cfg.token_dropout > 0:  # the mask becomes per token, [rows, views, tokens]
            n_tokens = self.shape.n_tokens
            keep = self._randn((rows, views, n_tokens), device, uniform=True) >= cfg.token_dropout
            keep = keep | ~keep.any(-1, keepdim=True)  # a view never loses every token this way
            if "view_mask" in out:
                keep = keep & out["view_mask"].unsqueeze(-1)
            out["view_mask"] = keep
        return out

    def _step(
        self,
        loss: torch.Tensor,
        opt: torch.optim.Optimizer,
        clip: bool = True,
        with_frames: bool = False,
    ) -> None:
        """Backward, average gradients over the ranks, clip, and take the optimiser step
        (``with_frames``: the trainable backbone's step too, clipped together)."""
        opts = [opt, self.frames_opt] if with_frames and self.frames_opt is not None else [opt]
        params = [p for o in opts for g in o.param_groups for p in g["params"]]
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        if self.parallel is not None:
            self.parallel.average_gradients(params)
        if clip:
            nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        for o in opts:
            o.step()

    def update(self, batch: Batch, update_actor: bool = True) -> dict[str, float]:
        """One critic step, and (when ``update_actor`` and the critic's warm-up is over) one actor
        and temperature step."""
        cfg = self.cfg
        requested = update_actor
        warm = self.updates >= cfg.critic_warmup
        update_actor = update_actor and warm
        if cfg.bootstrap_from_bc:
            if not bool(self.ref_frozen):  # the first RL update: BC pre-training is over
                self._freeze_reference()
            if warm:  # the Q-function has trained for its warm-up: acting may compare with it
                self.ref_active.fill_(True)
        noise, dropout = cfg.online_token_noise, cfg.online_state_dropout  # None: as in BC
        if self.learns_from_frames:
            # one shifted encoding: the critic's loss trains the backbone, the actor reads it detached
            # (with no critic loss to train it, the actor's loss does)
            encoded = self._tokens_from_frames(batch)
            tokens = encoded["tokens"].detach() if self.uses_critic else encoded["tokens"]
            actor_batch = self.augment({**encoded, "tokens": tokens}, noise, dropout)
            critic_noise = noise if cfg.critic_token_noise is None else cfg.critic_token_noise
            critic_batch = self.augment(encoded, critic_noise, dropout)
        else:
            actor_batch = self.augment(batch, noise, dropout)
            critic_batch = (
                actor_batch
                if cfg.critic_token_noise is None
                else self.augment(batch, cfg.critic_token_noise, dropout)
            )
        if not self.uses_critic:  # filtered cloning: the actor's step alone, no warm-up to wait
            metrics = self._actor_step(actor_batch, cfg.bc_weight, rl=False) if requested else {}
            self.updates += 1
            return metrics
        metrics, critic_feature = self._critic_step(critic_batch)
        if update_actor:
            metrics.update(
                self._actor_step(actor_batch, cfg.bc_weight, rl=True, critic_feature=critic_feature)
            )
        polyak_update(self.target_encoder, self.critic_encoder, cfg.tau)
        polyak_update(self.target_critic, self.critic, cfg.tau)
        self.updates += 1
        return metrics

    @property
    def uses_critic(self) -> bool:
        """Whether anything reads the Q ensemble: the actor's value term or IBRL's comparisons.
        Without either (``value_weight = 0``) RL updates train the actor alone and the critic
        stays as initialised."""
        return self.cfg.value_weight > 0 or self.cfg.bootstrap_from_bc

    def fit_localiser(
        self,
        tokens: torch.Tensor,
        state: torch.Tensor,
        offset: torch.Tensor,
        steps: int,
        batch_size: int = 256,
        lr: float = 1e-3,
        holdout: float = 0.1,
        seed: int = 0,
    ) -> dict[str, float]:
        """Fit the ``pretrained``-source localiser on labelled views and leave it frozen.

        ``tokens [M, V, N, k]``, ``state [M, S]`` and ``offset [M, D]`` (the label: tool to
        object) are rows in the order they were recorded; the last ``holdout`` share of them
        is kept out of the fit and measured. Huber loss, Adam at ``lr`` and a tenth of it over
        the last quarter of the ``steps``; the inputs get ``waypoint_token_noise`` as in
        training. The live and acting copies of the actor get the same fitted weights, and no
        later loss moves them (the actor reads the localiser's prediction detached).

        Returns the median absolute error per row (over the label's components, in its units)
        on the fitted and the held-back rows, and the same for predicting the mean label.
        """
        if self.cfg.waypoint_source != "pretrained":
            raise RuntimeError("fit_localiser needs agent.waypoint_source=pretrained")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        rows = tokens.shape[0]
        if not (state.shape[0] == offset.shape[0] == rows):
            raise ValueError(
                f"tokens, state and offset need one row each per view, got {rows}, "
                f"{state.shape[0]} and {offset.shape[0]}"
            )
        if offset.shape[-1] != self.actor_encoder.waypoint_dim:
            raise ValueError(
                f"offset: expected {self.actor_encoder.waypoint_dim} components, "
                f"got {offset.shape[-1]}"
            )
        fit = rows - int(round(holdout * rows))
        if fit < 1 or (holdout > 0 and fit == rows):
            raise ValueError(f"{rows} rows leave none to fit or to hold back at holdout={holdout}")
        head = self.actor_encoder.waypoint_head
        device = next(head.parameters()).device
        tokens, state, offset = (x.float().to(device) for x in (tokens, state, offset))
        noise = self.cfg.waypoint_token_noise or 0.0
        opt = torch.optim.Adam(head.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        with torch.enable_grad():
            for step in range(steps):
                if step == (3 * steps) // 4:
                    for group in opt.param_groups:
                        group["lr"] = lr * 0.1
                idx = torch.randint(0, fit, (min(batch_size, fit),), generator=gen).to(device)
                x = tokens[idx]
                if noise > 0:
                    x = x + noise * torch.randn(x.shape, generator=gen).to(device)
                loss = F.smooth_l1_loss(self.actor_encoder.locate(x, state[idx]), offset[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        self.ema_encoder.waypoint_head.load_state_dict(head.state_dict())

        mean_label = offset[:fit].mean(0).expand_as(offset)
        parts = {"fit": slice(0, fit), "holdout": slice(fit, rows)}
        report = {
            f"{k}_error": self.localiser_error(tokens[r], state[r], offset[r])
            for k, r in parts.items()
        }
        for k, r in parts.items():
            report[f"{k}_error_mean_label"] = _median_row_error(mean_label[r], offset[r])
        return report

    @torch.no_grad()
    def localiser_error(
        self,
        tokens: torch.Tensor,
        state: torch.Tensor,
        offset: torch.Tensor,
        components: slice = slice(None),
    ) -> float:
        """The localiser's median over rows of its mean absolute error per component (those of
        ``components``: e.g. the object's offset alone of one that localises the goal too), in
        the label's units (nan for no rows)."""
        device = next(self.actor_encoder.waypoint_head.parameters()).device
        predicted = self.actor_encoder.locate(tokens.float().to(device), state.float().to(device))
        return _median_row_error(
            predicted.cpu()[:, components], offset.float().cpu()[:, components]
        )

    def bc_update(self, batch: Batch) -> dict[str, float]:
        """A behaviour-cloning-only actor step on the batch's human rows (pre-training, BC baseline).

        With a trainable backbone the BC loss trains it too."""
        if self.learns_from_frames:
            frames_only = {k: v for k, v in batch.items() if k != "next_tokens"}
            batch = self._tokens_from_frames(frames_only)
        return self._actor_step(self.augment(batch), bc_weight=1.0, rl=False)

    def _critic_step(self, b: Batch) -> tuple[dict[str, float], torch.Tensor]:
        cfg = self.cfg
        with torch.no_grad():
            rows, device = b["reward"].shape[0], b["reward"].device
            noise = self._noise(rows, device)
            next_obs = (b["next_tokens"], b["next_state"], b["lang"], b.get("view_mask"))
            next_action, next_logp = self.actor(self.actor_encoder(*next_obs), noise=noise)
            next_feature = self.target_encoder(*next_obs)
            heads = torch.randperm(cfg.n_q, generator=self.generator)[: cfg.q_subset].to(device)
            next_q = self.target_critic(next_feature, next_action)[heads]
            if cfg.bootstrap_from_bc and bool(self.ref_frozen):
                # bootstrap from the better of the RL actor's and the reference's next action
                ref_action, _ = self.ref_actor(self.ref_encoder(*next_obs), noise=noise)
                ref_q = self.target_critic(next_feature, ref_action)[heads]
                take_ref = ref_q.min(0).values > next_q.min(0).values
                next_q = torch.where(take_ref.unsqueeze(0), ref_q, next_q)
            discount = b.get("discount", cfg.gamma)  # gamma^n per row for n-step windows
            target = td_target(b["reward"], b["terminal"], next_q, next_logp, self.alpha, discount)
        feature = self.critic_encoder(b["tokens"], b["state"], b["lang"], b.get("view_mask"))
        q = self.critic(feature, b["action"])
        loss = critic_loss(q, target)
        self._step(loss, self.critic_opt, with_frames=b["tokens"].requires_grad)
        metrics = {
            "critic_loss": float(loss.detach()),
            "q_mean": float(q.detach().mean()),
            "target_mean": float(target.mean()),
        }
        return metrics, feature.detach()

    @torch.no_grad()
    def _bc_weights(self, b: Batch) -> torch.Tensor | None:
        """Per-component BC weights (``bc_dim_weights``), updated with the batch's human rows."""
        if self.cfg.bc_dim_weights == "equal":
            return None
        human = b["human"].bool()
        rows = b["action"][human].float().reshape(-1, self.shape.action_dim)
        if rows.shape[0] >= 2:  # every chunk position is a sample of its component
            n = self.bc_var_rows.item()
            batch_var = rows.var(dim=0, unbiased=False)
            # the exact mean of the batches' variances over the first 100, then a moving one
            rate = 1.0 / (n + 1) if n < 100 else 0.01
            self.bc_action_var.lerp_(batch_var, rate)
            self.bc_var_rows += 1
        if self.bc_var_rows.item() == 0:
            return None
        inverse = 1.0 / self.bc_action_var.clamp_min(1e-4)
        return (inverse / inverse.mean()).repeat(self.shape.chunk_len)

    def _actor_step(
        self, b: Batch, bc_weight: float, rl: bool, critic_feature: torch.Tensor | None = None
    ) -> dict[str, float]:
        feature = self.actor_encoder(
            b["tokens"],
            b["state"],
            b["lang"],
            b.get("view_mask"),
            b.get("waypoint_tokens"),
            b.get("waypoint_state"),
        )
        imitation, std = self.actor.imitation(feature, b["action"], b["human"], self._bc_weights(b))
        metrics = {"bc_loss": float(imitation.detach())}
        loss = bc_weight * imitation
        if self.cfg.waypoint_weight > 0:
            if "waypoint" not in b:
                raise KeyError("agent.waypoint_weight > 0 needs the batch's 'waypoint' rows")
            predicted = self.actor_encoder.waypoint(
                feature, b.get("waypoint_tokens", b["tokens"]), b["state"], b.get("view_mask")
            )
            error = F.smooth_l1_loss(predicted, b["waypoint"].float(), reduction="none").mean(-1)
            human = b["human"].float()
            waypoint = (error * human).sum() / human.sum().clamp(min=1.0)
            loss = loss + self.cfg.waypoint_weight * waypoint
            metrics["waypoint_loss"] = float(waypoint.detach())
        if self.cfg.bc_std > 0:  # the exploration noise stays anchored at bc_std
            loss = loss + (std.log() - math.log(self.cfg.bc_std)).pow(2).mean()
        if rl:
            rl_feature = feature if self.cfg.rl_through_encoder else feature.detach()
            action, logp = self.actor(
                rl_feature, noise=self._noise(feature.shape[0], feature.device)
            )
            if critic_feature is None:
                with torch.no_grad():
                    critic_feature = self.critic_encoder(
                        b["tokens"], b["state"], b["lang"], b.get("view_mask")
                    )
            self.critic.requires_grad_(False)
            q = self.critic(critic_feature, action)
            self.critic.requires_grad_(True)
            rl_loss = actor_loss(q, logp, self.alpha)
            if self.cfg.q_normalize:
                rl_loss = rl_loss / self._mean_abs(q.detach())
            loss = loss + self.cfg.value_weight * rl_loss
            alpha_loss = temperature_loss(self.log_alpha, logp, self.target_entropy)
            self._step(alpha_loss, self.alpha_opt, clip=False)
            metrics.update(
                {
                    "actor_loss": float(rl_loss.detach()),
                    "alpha": float(self.alpha),
                    "entropy": float(-logp.detach().mean()),
                }
            )
        self._step(loss, self.actor_opt, with_frames=b["tokens"].requires_grad)
        self._update_ema()
        return metrics

    # --- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self) -> dict:
        """Everything needed to resume exactly: weights, optimiser states, counters, RNG."""
        return {
            "model": self.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(),
            "updates": self.updates,
            "generator": self.generator.get_state(),
            **({"frames_opt": self.frames_opt.state_dict()} if self.frames_opt else {}),
        }

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        """``load_state_dict``, strict but for a checkpoint from before the acting average:
        its average starts as the live actor."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        ema = [k for k in missing if k.startswith(EMA_KEYS)]
        if unexpected or len(ema) < len(missing):
            raise RuntimeError(
                f"agent weights do not fit (missing {[k for k in missing if k not in ema]}, "
                f"unexpected {unexpected})"
            )
        if ema:
            self.ema_encoder.load_state_dict(self.actor_encoder.state_dict())
            self.ema_actor.load_state_dict(self.actor.state_dict())

    def restore(self, ckpt: dict) -> None:
        """Inverse of :meth:`checkpoint`."""
        self.load_model_state(ckpt["model"])
        self.actor_opt.load_state_dict(ckpt["actor_opt"])
        self.critic_opt.load_state_dict(ckpt["critic_opt"])
        self.alpha_opt.load_state_dict(ckpt["alpha_opt"])
        self.updates = int(ckpt["updates"])
        self.generator.set_state(ckpt["generator"])
        if self.frames_opt is not None and "frames_opt" in ckpt:
            self.frames_opt.load_state_dict(ckpt["frames_opt"])
