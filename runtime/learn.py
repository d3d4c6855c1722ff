"""The in-process learning loop: env -> policy -> replay -> updates, with periodic evaluation.

    demonstrations (scripted expert)  -> replay "demo" partition, PCA fit of the vision tokens
    behaviour-cloning pre-training    -> the actor starts from the demonstrations
    online episodes (stochastic policy) -> replay "online" partition
        after each episode: UTD x steps updates on batches mixing online and human data
    every ``eval_every`` episodes: deterministic policy on held-out seeds / split

The same code runs the three arms of the learning benchmark: ``mode=rl`` with the critic's
shaped reward, ``mode=rl`` with ``reward.shaping_weight=0`` (sparse only), and ``mode=bc``.

Under ``torchrun`` every rank is a data-parallel learner (``limbic.runtime.distributed``): it
records the same demonstrations, plays its own share of the online episodes into the replay it
holds, samples its own batches, and takes the same gradient-averaged updates as the others;
evaluation episodes are shared out and their results summed; rank 0 alone writes the
checkpoint, the curve and the videos.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from limbic.critic.model import ProgressCritic
from limbic.launch.components import RobotConfig
from limbic.launch.config import ConfigError, require
from limbic.policy.encoders import LanguageEncoder
from limbic.policy.vla import PolicyConfig, VLAPolicy
from limbic.runtime.distributed import (
    DEVICES,
    DistContext,
    init_distributed,
    pick_device,
    rank_rng,
    shutdown,
)
from limbic.runtime.evaluation import (
    EvalTally,
    cell_counts,
    chunked_actions,
    play,
    write_video,
)
from limbic.runtime.replay import ReplayConfig, ReplayMix, RewardConfig, after_last_handback
from limbic.runtime.rollout import (
    EpisodeRecord,
    Featurizer,
    demo_perturbation,
    replay_tokens,
    run_episode,
)
from limbic.sim.counterfactual import ApproachRecorder, goal_moved_observations, sample_goal_xy
from limbic.sim.curriculum import LayoutCurriculum
from limbic.sim.envs import make_expert, make_sim_env
from limbic.sim.expert import ExpertConfig
from limbic.sim.localise import COLOR_MODES, OBJECT_OFFSET, PoseRange, localiser_views
from limbic.sim.operator import ScriptedTakeover
from limbic.sim.tasks import GRID, TASKS
from limbic.teleop.arbiter import TakeoverConfig


@dataclass
class LocaliserConfig:
    """The labelled views that fit a ``pretrained`` localiser (``policy.agent.waypoint_source``;
    ``limbic.sim.localise``): fresh training-split layouts, the tool put at random places over
    the work area on each, every view labelled with the offset from the tool to the object."""

    layouts: int = 400
    poses: int = 8
    """Tool poses per layout."""
    steps: int = 3000
    """Fitting steps (batch ``batch_size``)."""
    batch_size: int = 256
    lr: float = 1e-3
    holdout: float = 0.1
    """Share of the layouts (the last ones) kept out of the fit to measure it."""
    heldout_layouts: int = 40
    """Layouts of the held-out split it is also measured on (never fitted on; 0: none)."""
    near_share: float = 0.5
    """Share of the poses drawn around the object (within ``near_m`` along x and y, lower
    down) instead of over the whole work area: where the approach ends and the grasp is
    decided (``limbic.sim.localise.PoseRange``; README, "A pre-trained localiser": in the
    watched preset, five seeds, the mean held-out success was higher at every evaluation than
    with 0, the uniform poses)."""
    near_m: float = 0.05
    """Half-width of the square around the object those poses are drawn in, and the
    horizontal distance within which ``localiser.json``'s ``near_*`` figures count a view."""
    colors: str = "task"
    """The objects' colours in the fitted views: ``task`` (the training split's palette) or
    ``random`` (any hue, never near a held-out colour; ``limbic.sim.localise.random_color``).
    The held-out split's views it is measured on keep their own colours."""

    def __post_init__(self) -> None:
        for name in ("layouts", "poses", "steps", "batch_size"):
            value = getattr(self, name)
            require(value >= 1, f"localiser.{name}", f"must be >= 1, got {value}")
        require(self.lr > 0, "localiser.lr", f"must be > 0, got {self.lr}")
        require(
            0.0 <= self.holdout < 1.0,
            "localiser.holdout",
            f"must be in [0, 1), got {self.holdout}",
        )
        require(
            self.heldout_layouts >= 0,
            "localiser.heldout_layouts",
            f"must be >= 0, got {self.heldout_layouts}",
        )
        require(
            0.0 <= self.near_share <= 1.0,
            "localiser.near_share",
            f"must be in [0, 1], got {self.near_share}",
        )
        require(self.near_m > 0, "localiser.near_m", f"must be > 0, got {self.near_m}")
        require(
            self.colors in COLOR_MODES,
            "localiser.colors",
            f"expected one of {list(COLOR_MODES)}, got {self.colors!r}",
        )

    def pose_range(self) -> PoseRange:
        """Where :func:`localiser_views` puts the tool."""
        return PoseRange(near_share=self.near_share, near_m=self.near_m)


@dataclass
class LearnConfig:
    """One learning run in simulation."""

    robot: RobotConfig = field(default_factory=RobotConfig)
    """The simulated arm and task (``robot.type`` must be ``sim``: learning in-process needs a simulator)."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    critic_checkpoint: str = ""
    """Progress-critic checkpoint for the shaped reward; empty turns shaping off."""
    mode: str = "rl"
    """``rl``: BC pre-training then actor-critic online; ``bc``: behaviour cloning only."""
    demos: int = 20
    """Scripted demonstrations in the human partition."""
    demo_expert: ExpertConfig = field(default_factory=ExpertConfig)
    """The scripted expert that records the demonstrations (``demo_expert.speed`` below 1 makes
    it approach more slowly: more frames per demonstration, smaller steps to imitate)."""
    demo_noise: float = 0.0
    """DART: Gaussian noise, as a fraction of each motion component's bound (the gripper's is
    left alone), added to what the arm executes while the demonstrations are recorded. The
    recorded action stays the expert's own, so the demonstrations also show the expert pulling
    the arm back from drift it did not cause: the states a cloned policy reaches by its own
    small errors."""
    demo_goal_moves: int = 0
    """Counterfactual copies of each demonstration (pick_place only): in a copy, the frames
    before the grasp show the goal (the bowl) at a place drawn anywhere in the work area,
    independent of the cube; the actions and the frames from the grasp on are the
    demonstration's own. The layout sampler keeps the bowl clear of the cube, so in recorded
    layouts the bowl's place predicts the cube's; the copies show the same approach with the
    bowl elsewhere (see ``limbic.sim.counterfactual``). 0 (the default): none."""
    demo_start_spread: float = 0.0
    """Where each demonstration's tool starts: at the home height over a point drawn uniformly
    from this fraction of the work area around its centre (1: anywhere over it), instead of the
    task's start. The layouts are the same; the demonstrator's first motions then differ from
    one demonstration to the next by more than the layout, so what they teach is the motion
    from wherever the tool is to the cube, not a motion per layout. Online and evaluation
    episodes keep the task's start. 0 (the default): the task's start (limbic's own
    simulator only)."""
    online_episodes: int = 150
    """Online episodes of the learning policy."""
    layout_focus: float = 0.0
    """Layout curriculum (``limbic.sim.curriculum``): the share of online episodes whose
    object cell is picked by the policy's recent failures there (a cell is picked with
    probability proportional to its failure rate over its last ``layout_window`` episodes; an
    episode counts as solved only when it succeeded with no human step). The rest, and all
    with 0 (the default), take the task's own layout. Training cells only (limbic's own
    simulator)."""
    layout_window: int = 10
    """Episodes per cell the layout curriculum remembers."""
    utd: float = 2.0
    """Gradient updates per environment step."""
    batch_size: int = 256
    bc_pretrain_steps: int = 3000
    """Behaviour-cloning steps before online learning (and the whole of ``mode=bc``)."""
    eval_every: int = 25
    """Evaluate after every this many online episodes (and at 0)."""
    eval_episodes: int = 20
    eval_split: str = "heldout"
    """Split of the evaluation episodes (held-out colours, positions, phrasings)."""
    seed: int = 0
    out_dir: str = "runs/train"
    videos: int = 2
    """Evaluation episodes saved as MP4 at the final evaluation."""
    progress: bool = True
    threads: int = 0
    """torch threads (0: leave torch's default)."""
    device: str = "auto"
    """``auto`` (GPU ``LOCAL_RANK`` when CUDA is there, else the CPU), ``cpu`` or ``cuda``."""
    interventions: bool = False
    """A simulated human (the scripted expert) watches the online episodes and takes over when
    the policy goes wrong (``takeover``); its steps go to the intervention partition."""
    takeover: TakeoverConfig = field(default_factory=TakeoverConfig)
    imitate_successes: bool = False
    """Self-imitation: an online episode the policy ran alone and that succeeded goes to the
    demonstration partition too, so the BC term imitates the policy's own successes beside the
    human's (filtered behaviour cloning on layouts the demonstrations never showed)."""
    explore: bool = True
    """Online episodes sample the actor's actions (exploration); false: they take its mean, the
    action evaluation takes, so the policy's own successes and a human's takeovers come from the
    very behaviour being evaluated (as DAgger's learner acts)."""
    online_goal_moves: int = 0
    """Counterfactual copies of the online episodes the BC term learns from (pick_place only,
    limbic's own simulator, in-process runtime): for each success the policy ran alone and
    that ``imitate_successes`` copies, and for each episode a watcher stepped into, this many
    copies whose frames before the cube is first lifted show the bowl at a place drawn
    anywhere in the work area (``limbic.sim.counterfactual``, ``until="lift"``). A copy keeps
    only those approach steps (the rest would repeat the episode's own rows): a success's go
    to the demonstration partition, a watcher's steps among them to the intervention
    partition. The layout sampler keeps the bowl clear of the cube, so in the layouts the
    online episodes are played on, as in the demonstrations', the bowl's place predicts the
    cube's; the policy's successes and the watcher's corrections would teach that shortcut
    again. 0 (the default): none."""
    imitate_assisted: bool = False
    """With ``imitate_successes``: in an online episode a human stepped into and that succeeded,
    the policy's own steps after the human's last hand-back go to the demonstration partition
    too (the policy finishing the task from where the human left it: on the layouts where it
    needed help, which its unassisted successes seldom cover)."""
    localiser: LocaliserConfig = field(default_factory=LocaliserConfig)
    """How the ``pretrained`` localiser is fitted (``policy.agent.waypoint_source=pretrained``;
    ignored otherwise)."""

    def __post_init__(self) -> None:
        require(
            self.robot.type == "sim",
            "robot.type",
            f"in-process learning needs robot.type=sim, got {self.robot.type!r}",
        )
        camera_hw = tuple(self.robot.sim.camera.image_hw)
        require(
            tuple(self.policy.image_hw) == camera_hw,
            "policy.image_hw",
            f"{list(self.policy.image_hw)} differs from the cameras' {list(camera_hw)} "
            "(robot.sim.camera.height/width)",
        )
        require(self.mode in ("rl", "bc"), "learn.mode", f"{self.mode!r} is not 'rl' or 'bc'")
        require(self.demos >= 1, "learn.demos", f"must be >= 1, got {self.demos}")
        require(
            self.imitate_successes or not self.imitate_assisted,
            "imitate_assisted",
            "copies assisted successes beside the unassisted ones: it needs imitate_successes=true",
        )
        require(
            self.demo_goal_moves >= 0,
            "learn.demo_goal_moves",
            f"must be >= 0, got {self.demo_goal_moves}",
        )
        require(
            self.online_goal_moves >= 0,
            "learn.online_goal_moves",
            f"must be >= 0, got {self.online_goal_moves}",
        )
        for name, moves in (
            ("learn.demo_goal_moves", self.demo_goal_moves),
            ("learn.online_goal_moves", self.online_goal_moves),
        ):
            if moves:
                sim = self.robot.sim
                task = TASKS.get(sim.task) if sim.env == "limbic" else None
                require(
                    task is not None and task.goal_mocap is not None,
                    name,
                    f"needs a task whose goal can move (pick_place); got env={sim.env!r} "
                    f"task={sim.task!r}",
                )
        require(
            0.0 <= self.demo_start_spread <= 1.0,
            "learn.demo_start_spread",
            f"must be in [0, 1] (a fraction of the work area), got {self.demo_start_spread}",
        )
        if self.demo_start_spread:
            self._require_own_simulator("learn.demo_start_spread")
        require(
            0.0 <= self.demo_noise <= 1.0,
            "learn.demo_noise",
            f"must be in [0, 1] (a fraction of the action bound), got {self.demo_noise}",
        )
        require(
            0.0 <= self.layout_focus <= 1.0,
            "learn.layout_focus",
            f"must be in [0, 1] (a share of the online episodes), got {self.layout_focus}",
        )
        require(
            self.layout_window >= 1,
            "learn.layout_window",
            f"must be >= 1, got {self.layout_window}",
        )
        if self.layout_focus:
            self._require_own_simulator("learn.layout_focus")
        if self.policy.agent.waypoint_source == "pretrained":
            self._require_own_simulator("policy.agent.waypoint_source")
        require(
            self.online_episodes >= 0,
            "learn.online_episodes",
            f"must be >= 0, got {self.online_episodes}",
        )
        require(self.utd > 0, "learn.utd", f"must be > 0, got {self.utd}")
        require(self.batch_size >= 2, "learn.batch_size", f"must be >= 2, got {self.batch_size}")
        require(self.eval_every >= 1, "learn.eval_every", f"must be >= 1, got {self.eval_every}")
        require(
            self.eval_episodes >= 1,
            "learn.eval_episodes",
            f"must be >= 1, got {self.eval_episodes}",
        )
        require(
            self.device in DEVICES, "learn.device", f"{self.device!r} is not one of {list(DEVICES)}"
        )

    def _require_own_simulator(self, name: str) -> None:
        require(
            self.robot.sim.env == "limbic",
            name,
            f"needs limbic's own simulator (env=limbic), got env={self.robot.sim.env!r}",
        )


class StopRequestedError(RuntimeError):
    """A stop was requested during a long phase (demonstrations, pre-training, evaluation)."""


# Seeds far apart so demonstrations, online episodes and evaluation never share a layout.
DEMO_SEED, ONLINE_SEED, LAYOUT_SEED = 1_000_000, 2_000_000, 4_000_000
LOCALISER_SEED = 5_000_000


@dataclass
class EvalResult:
    """Deterministic-policy evaluation after ``episodes`` online episodes."""

    episodes: int
    success_rate: float
    mean_length: float
    mean_shaped_return: float
    minutes: float
    human_share: float = 0.0
    """Share of the online steps so far that the simulated human took (``interventions``)."""
    imitated: int = 0
    """Online successes copied to the demonstration partition so far (``imitate_successes``)."""
    assisted: int = 0
    """Assisted successes whose steps after the last hand-back were copied (``imitate_assisted``)."""
    by_cell: dict[str, list[int]] = field(default_factory=dict)
    """Successes and episodes by the work-area grid cell of the task's named object at reset:
    ``{"i,j": [successes, episodes]}``, ``i`` along x away from the arm's base (empty where the
    simulator does not say)."""
    online_by_cell: dict[str, list[int]] = field(default_factory=dict)
    """The online episodes so far by the same cells: ``{"i,j": [solved alone, episodes]}``
    (training cells; where the layout curriculum, ``layout_focus``, sent them)."""
    localiser_mm: list[float] = field(default_factory=list)
    """With a ``pretrained`` localiser: its mean absolute error in x, y and z (mm) over the
    evaluation episodes' approach frames (up to the policy's first close, while the object is
    where the reset put it), against the simulator's offset; empty otherwise."""
    outcomes: dict[str, int] = field(default_factory=dict)
    """For a task that carries its object (pick-and-place, stack): the evaluation episodes by
    how they ended (``limbic.runtime.evaluation.OUTCOMES``); empty otherwise."""


@dataclass
class LearnResult:
    """What a run produced."""

    curve: list[EvalResult]
    final_success: float
    out_dir: Path
    updates: int
    minutes: float
    rank: int = 0
    """The rank that returns this result (rank 0 wrote the outputs)."""
    world_size: int = 1
    finished: bool = True
    """False when the run was stopped before its budget (it can be resumed)."""

    def episodes_to(self, rate: float) -> int | None:
        """Online episodes at the first evaluation that reached ``rate`` (None if none did)."""
        hit = [e.episodes for e in self.curve if e.success_rate >= rate]
        return hit[0] if hit else None


class Learner:
    """Holds the env, policy, critic, replay and their RNGs for one run (one rank of it)."""

    keep_observations = False
    """Keep demonstrations' observations (a subclass that writes them to a dataset sets it)."""

    def __init__(self, cfg: LearnConfig, dist: DistContext | None = None):
        self.cfg = cfg
        # alone (no group given): rank 0 of one, on the configured device
        self.dist = dist if dist is not None else DistContext(device=pick_device(cfg.device))
        self.device = self.dist.device
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.rng = rank_rng(cfg.seed, self.dist)
        self.env = make_sim_env(cfg.robot.sim)
        self.critic = (
            ProgressCritic.from_checkpoint(cfg.critic_checkpoint).eval().to(self.device)
            if cfg.critic_checkpoint
            else None
        )
        backbone = None
        if (
            self.critic is not None
            and self.critic.config.backbone == cfg.policy.backbone
            and self.critic.backbone.frozen
        ):
            backbone = self.critic.backbone  # one frozen backbone, one pass per frame
        self.policy = VLAPolicy(
            cfg.policy,
            self.env.action_spec,
            len(self.env.state_names),
            backbone=backbone,
            seed=cfg.seed,
        ).to(self.device)
        # same weights everywhere now; the agent's gradients are averaged over ranks from here on
        self.policy.agent.data_parallel(self.dist if self.dist.distributed else None)
        self.featurize = Featurizer(self.policy, self.critic)
        self.language = LanguageEncoder()
        self._lang_cache: dict[str, torch.Tensor] = {}
        self.reward = (
            cfg.reward if self.critic is not None else RewardConfig(cfg.reward.task_weight, 0.0)
        )
        self.replay = ReplayMix(
            cfg.replay,
            self.policy.frame_shape,
            len(self.env.state_names),
            self.env.action_spec.dim,
            self.language.dim,
            cfg.policy.chunk_len,
            self.policy.frame_dtype,
        )
        self.arbiter = (
            ScriptedTakeover(
                make_expert(
                    self.env, ExpertConfig(jaw_gap_m=cfg.demo_expert.jaw_gap_m), seed=cfg.seed + 1
                ),
                self.env.action_spec,
                cfg.takeover,
            )
            if cfg.interventions
            else None
        )
        # ranks draw their own layouts, as they play their own episodes
        self.curriculum = LayoutCurriculum(
            cfg.layout_focus,
            cfg.layout_window,
            np.random.default_rng([LAYOUT_SEED, cfg.seed, self.dist.rank]),
        )
        self.online_cells = np.zeros((GRID, GRID, 2))  # per cell: solved alone, episodes
        self.goal_rng = np.random.default_rng([ONLINE_SEED, cfg.seed, self.dist.rank, 1])
        self.goal_moved = 0  # online_goal_moves copies stored
        self.played_steps = self.human_steps = 0
        self.imitated = 0  # online successes copied to the demonstration partition
        self.assisted = 0  # assisted successes whose tail was copied there (imitate_assisted)
        self.out = Path(cfg.out_dir)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

    def interrupted(self) -> bool:
        """Whether a stop was requested (a process that can be stopped overrides this)."""
        return False

    def _check_interrupted(self, what: str) -> None:
        if self.interrupted():
            raise StopRequestedError(f"stopped during {what}")

    def lang(self, text: str) -> torch.Tensor:
        """Instruction embedding ``[1, L]`` on the learning device, cached per instruction."""
        if text not in self._lang_cache:
            self._lang_cache[text] = self.language([text]).to(self.device)
        return self._lang_cache[text]

    def _lang_id(self, instruction: str) -> int:
        """The replay's id of ``instruction`` (its embedding stored once)."""
        embedding = self.lang(instruction)[0].cpu().numpy()
        return self.replay.instruction_id(instruction, embedding)

    def _store(self, source: str, ep: EpisodeRecord) -> None:
        lang_id = self._lang_id(ep.instruction)
        if source == "online" and ep.intervention is not None and ep.intervention.any():
            self.replay.add_shared_episode(ep.intervention, **ep.replay_arrays(lang_id))
            if ep.success and self.cfg.imitate_successes and self.cfg.imitate_assisted:
                tail = after_last_handback(ep.intervention)
                if tail.any():
                    self.replay.add_episode("demo", keep=tail, **ep.replay_arrays(lang_id))
                    self.assisted += 1
        else:
            self.replay.add_episode(source, **ep.replay_arrays(lang_id))
            if source == "online" and ep.success and self.cfg.imitate_successes:
                self.replay.add_episode("demo", **ep.replay_arrays(lang_id))
                self.imitated += 1

    def _batch(self) -> dict[str, torch.Tensor]:
        b = self.replay.sample(
            self.cfg.batch_size, self.rng, self.reward, self.cfg.policy.agent.gamma
        )
        return {k: torch.from_numpy(v).to(self.device) for k, v in b.items()}

    # --- phases -------------------------------------------------------------------------------
    def _store_goal_moved(self, ep: EpisodeRecord, recorder: ApproachRecorder) -> None:
        """The ``online_goal_moves`` copies of an online episode the BC term learns from (a
        success copied to the demonstrations, or one with a watcher's steps): their approach
        steps only, to the demonstration or (the watcher's) the intervention partition."""
        watched = ep.intervention is not None and ep.intervention.any()
        if not (watched or (ep.success and self.cfg.imitate_successes)):
            return
        recorder.finish()
        approach = np.arange(len(ep)) < min(recorder.approach_frames, len(ep))
        keep = approach & ep.intervention if watched else approach
        if not keep.any():
            return
        lang_id = self._lang_id(ep.instruction)
        for _ in range(self.cfg.online_goal_moves):
            copy = self._goal_moved_copy(ep, recorder, self.goal_rng)
            source = "intervention" if watched else "demo"
            self.replay.add_episode(source, keep=keep, **copy.replay_arrays(lang_id))
            self.goal_moved += 1

    def _goal_moved_copy(
        self, ep: EpisodeRecord, recorder: ApproachRecorder, rng: np.random.Generator
    ) -> EpisodeRecord:
        """``ep`` with its approach frames rendered with the goal elsewhere (``demo_goal_moves``,
        ``online_goal_moves``)."""
        moved = goal_moved_observations(self.env, recorder, sample_goal_xy(self.env, rng))
        n = len(moved)
        tokens = ep.tokens.copy()
        backbone = None if ep.backbone_tokens is None else ep.backbone_tokens.copy()
        for t, o in enumerate(moved):
            compact, _, full = self.featurize(o)
            tokens[t] = replay_tokens(self.policy, o, compact)
            if backbone is not None:
                backbone[t] = full[0].cpu().numpy().astype(np.float16)
        observations = (
            [*moved, *ep.observations[n:]] if ep.observations else []
        )  # the dataset copy shows what the policy was trained on
        return dataclasses.replace(
            ep,
            tokens=tokens,
            backbone_tokens=backbone,
            observations=observations,
            frames=[],
            goal_moved=True,
        )

    def _demo_start(self, rng: np.random.Generator) -> tuple[float, float]:
        """A demonstration's tool start (``demo_start_spread``): uniform over that fraction of
        the work area around its centre."""
        center = np.asarray(self.env.arm.work_center_xy, np.float64)
        half = np.asarray(self.env.arm.work_half_extent_xy, np.float64)
        x, y = center + rng.uniform(-1.0, 1.0, 2) * half * self.cfg.demo_start_spread
        return float(x), float(y)

    def collect_demos(self) -> float:
        """Record the scripted demonstrations, fit the token compressor on them, fill the demo partition.

        Returns the fraction of token variance the compressor keeps.
        """
        expert = make_expert(self.env, self.cfg.demo_expert, seed=self.cfg.seed)
        perturb = demo_perturbation(
            self.env.action_spec,
            self.cfg.demo_noise,
            np.random.default_rng([DEMO_SEED, self.cfg.seed]),
        )
        moves = self.cfg.demo_goal_moves
        goal_rng = np.random.default_rng([DEMO_SEED, self.cfg.seed, 1])
        start_rng = np.random.default_rng([DEMO_SEED, self.cfg.seed, 2])
        demos: list[EpisodeRecord] = []
        for i in range(self.cfg.demos):
            self._check_interrupted("demonstrations")
            if self.cfg.demo_start_spread:
                self.env.next_start_xy = self._demo_start(start_rng)
            recorder = ApproachRecorder(self.env) if moves else None
            act = lambda _obs, _tokens, _lang: expert.act()  # noqa: E731
            ep = run_episode(
                self.env,
                recorder.wrap(act) if recorder else act,
                self.featurize,
                self.lang,
                seed=DEMO_SEED + i,
                split="train",
                keep_backbone_tokens=True,
                on_reset=expert.reset,
                keep_observations=self.keep_observations,
                perturb=perturb,
            )
            demos.append(ep)
            if recorder is not None:
                recorder.finish()
                for _ in range(moves):
                    demos.append(self._goal_moved_copy(ep, recorder, goal_rng))
        full = torch.from_numpy(
            np.concatenate([d.backbone_tokens for d in demos]).astype(np.float32)
        ).to(self.device)
        kept = self.policy.compressor.fit(full)
        # every rank recorded the same demonstrations; rank 0's fit is the one all ranks use
        self.dist.broadcast_module(self.policy.compressor)
        for d in demos:
            if not self.policy.trains_backbone:  # else the replay keeps the recorded frames
                backbone_tokens = torch.from_numpy(d.backbone_tokens.astype(np.float32))
                d.tokens = (
                    self.policy.compact_tokens(backbone_tokens.to(self.device))
                    .cpu()
                    .numpy()
                    .astype(np.float16)
                )
            d.backbone_tokens = None
            self._store("demo", d)
        self.fit_localiser()
        return kept

    def _localiser_rows(
        self, layouts: int, seed: int, split: str, colors: str = "task"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        """Compact tokens, states and labels of :func:`localiser_views` on ``layouts`` layouts
        (the backbone run on 64 views at a time), and each row's layout (its episode id)."""
        lc, views = self.cfg.localiser, self.policy.views
        tokens: list[torch.Tensor] = []
        states: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        images: list[np.ndarray] = []
        layout_of: list[str] = []

        def flush() -> None:
            if images:
                batch = torch.from_numpy(np.stack(images)).to(self.device)
                tokens.append(self.policy.compact_tokens(self.policy.backbone_tokens(batch)).cpu())
                images.clear()

        with torch.no_grad():
            for obs, label in localiser_views(
                self.env,
                layouts,
                lc.poses,
                seed,
                split,
                lc.pose_range(),
                colors,
                goal=self.cfg.policy.agent.localise_goal,
                target=self.cfg.policy.agent.localiser_target,
                jaw_gap_m=self.cfg.demo_expert.jaw_gap_m,
            ):
                if len(labels) % 256 == 0:
                    self._check_interrupted("localiser views")
                images.append(np.stack([obs.images[v] for v in views]))
                states.append(obs.state)
                labels.append(label)
                layout_of.append(self.env.episode_id)
                if len(images) == 64:
                    flush()
            flush()
        return (
            torch.cat(tokens),
            torch.from_numpy(np.stack(states).astype(np.float32)),
            torch.from_numpy(np.stack(labels)),
            np.asarray(layout_of),
        )

    def fit_localiser(self) -> dict[str, float] | None:
        """With ``policy.agent.waypoint_source=pretrained``: fit the localiser on labelled views
        of fresh training-split layouts (``localiser``), after the token compressor is fitted
        and before cloning; measure it on layouts it was not fitted on and, when asked, on the
        held-out split's; write the figures (mm, median over views of the mean error of x, y
        and z) to ``localiser.json``. Returns them (None without a pretrained localiser)."""
        if self.cfg.policy.agent.waypoint_source != "pretrained":
            return None
        if self.policy.trains_backbone:
            raise ConfigError(
                "policy.agent.waypoint_source",
                "a pretrained localiser reads the frozen backbone's compact tokens; "
                f"policy.backbone={self.cfg.policy.backbone!r} trains its backbone",
            )
        lc, agent = self.cfg.localiser, self.policy.agent
        mm = 1000.0 * self.env.arm.max_ee_step_m
        tokens, state, label, layout_of = self._localiser_rows(
            lc.layouts, LOCALISER_SEED, "train", lc.colors
        )
        # the held-back rows are whole layouts: the last ones recorded
        order = list(dict.fromkeys(layout_of))
        held_back = order[len(order) - int(round(lc.holdout * len(order))) :]
        back = np.isin(layout_of, held_back)
        holdout = float(back.mean())
        fitted = agent.fit_localiser(
            tokens, state, label, lc.steps, lc.batch_size, lc.lr, holdout, seed=self.cfg.seed
        )
        # every rank fitted the same rows the same way; rank 0's weights are the ones kept
        self.dist.broadcast_module(agent.actor_encoder.waypoint_head)
        self.dist.broadcast_module(agent.ema_encoder.waypoint_head)
        report = {
            "views": int(tokens.shape[0]),
            "fit_mm": fitted["fit_error"] * mm,
            "holdout_mm": fitted["holdout_error"] * mm,
            "holdout_mean_label_mm": fitted["holdout_error_mean_label"] * mm,
        }
        # the same figures for the views with the tool near the object, where the grasp is won
        # (the object's offset alone), and, for a localiser of the goal too, each offset's own
        obj, dim = OBJECT_OFFSET, label.shape[-1]
        near_step = lc.near_m / self.env.arm.max_ee_step_m
        near = torch.from_numpy(back) & (label[:, :2].abs().amax(-1) <= near_step)
        report["holdout_near_views"] = int(near.sum())
        report["holdout_near_mm"] = (
            agent.localiser_error(tokens[near], state[near], label[near], obj) * mm
        )
        parts = {"object": obj, "goal": slice(obj.stop, dim)} if dim > obj.stop else {}
        for name, part in parts.items():
            report[f"holdout_{name}_mm"] = (
                agent.localiser_error(tokens[back], state[back], label[back], part) * mm
            )
        if lc.heldout_layouts:
            tokens, state, label, _ = self._localiser_rows(
                lc.heldout_layouts, LOCALISER_SEED + 500_000, "heldout"
            )
            report["heldout_split_mm"] = agent.localiser_error(tokens, state, label) * mm
            near = label[:, :2].abs().amax(-1) <= near_step
            report["heldout_split_near_mm"] = (
                agent.localiser_error(tokens[near], state[near], label[near], obj) * mm
            )
            for name, part in parts.items():
                report[f"heldout_split_{name}_mm"] = (
                    agent.localiser_error(tokens, state, label, part) * mm
                )
        if self.dist.is_main:
            (self.out / "localiser.json").write_text(json.dumps(report, indent=1))
            tqdm.write(
                "localiser: "
                + ", ".join(
                    f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in report.items()
                )
            )
        return report

    def pretrain(self, steps: int) -> float:
        """Behaviour cloning on the human partitions; returns the last BC loss."""
        loss = float("nan")
        for step in range(steps):
            if step % 50 == 0:
                self._check_interrupted("pre-training")
            loss = self.policy.agent.bc_update(self._batch())["bc_loss"]
        return loss

    def policy_action(self, deterministic: bool):
        """An action source for :func:`run_episode` backed by the learning policy
        (:func:`~limbic.runtime.evaluation.chunked_actions`). Make one per episode."""
        return chunked_actions(self.policy, self.device, deterministic)

    def evaluate(self, episodes_done: int, started: float, videos: int = 0) -> EvalResult:
        """Deterministic policy on held-out seeds of the evaluation split.

        Episode ``i`` is played by rank ``i % world_size`` and the results are summed over the
        ranks; rank 0 records the videos (of the first ``videos`` episodes it plays).
        """
        d, gamma = self.dist, self.cfg.policy.agent.gamma
        tally, recorded = EvalTally(), 0
        for i in range(d.rank, self.cfg.eval_episodes, d.world_size):
            keep = d.is_main and recorded < videos
            self._check_interrupted("evaluation")
            ep, located, outcome = play(
                self.env,
                self.policy,
                self.featurize,
                self.lang,
                i,
                self.cfg.eval_split,
                keep_frames=keep,
                act=self.policy_action(True),
            )
            tally.add(ep, gamma, located, outcome)
            if keep:
                write_video(
                    self.out / f"eval_{i:02d}.mp4", ep.frames, int(self.cfg.robot.sim.control_hz)
                )
                recorded += 1
        tally = EvalTally.from_list(d.sum(tally.as_list()))
        online, human, imitated, assisted = d.sum(
            [self.played_steps, self.human_steps, self.imitated, self.assisted]
        )
        online_cells = np.asarray(d.sum(self.online_cells.ravel().tolist()))
        n = self.cfg.eval_episodes
        return EvalResult(
            episodes=episodes_done,
            success_rate=tally.wins / n,
            mean_length=tally.steps / n,
            mean_shaped_return=tally.shaped / n,
            minutes=(time.monotonic() - started) / 60,
            human_share=human / online if online else 0.0,
            imitated=int(imitated),
            assisted=int(assisted),
            by_cell=tally.by_cell(),
            online_by_cell=cell_counts(online_cells.reshape(self.online_cells.shape)),
            localiser_mm=tally.localiser_mm(self.env.arm.max_ee_step_m),
            outcomes=tally.outcomes(),
        )

    def run(self) -> LearnResult:
        """The whole run: demos, pre-training, online learning with evaluations.

        Online episodes go round the ranks (episode ``k`` on rank ``(k - 1) % world_size``);
        after each round every rank makes ``utd`` updates per environment step of the round's
        mean episode, so all ranks make the same updates and the replay ratio (rows sampled
        per environment step) is the single process's.
        """
        cfg, d = self.cfg, self.dist
        started = time.monotonic()
        self.collect_demos()
        self.pretrain(cfg.bc_pretrain_steps)
        curve = [self.evaluate(0, started)]
        online = cfg.online_episodes if cfg.mode == "rl" else 0
        bar = tqdm(
            total=online,
            desc=f"learning ({cfg.mode})",
            unit="ep",
            disable=not (cfg.progress and d.is_main),
        )
        bar.set_postfix(success=f"{curve[-1].success_rate:.0%}")
        credit = 0.0
        next_eval = cfg.eval_every
        for first in range(1, online + 1, d.world_size):
            ep_i = first + d.rank
            steps = 0
            if ep_i <= online:  # the last round may leave some ranks without an episode
                self.env.next_cell = self.curriculum.pick()
                act = self.policy_action(not cfg.explore)
                recorder = None
                if cfg.online_goal_moves:
                    recorder = ApproachRecorder(self.env, until="lift")
                    act = recorder.wrap(act)
                ep = run_episode(
                    self.env,
                    act,
                    self.featurize,
                    self.lang,
                    seed=ONLINE_SEED + ep_i,
                    split="train",
                    arbiter=self.arbiter,
                )
                self._store("online", ep)
                if recorder is not None:
                    self._store_goal_moved(ep, recorder)
                self.curriculum.record(ep.cell, ep.solved_alone)
                if ep.cell is not None:
                    self.online_cells[ep.cell] += (float(ep.solved_alone), 1.0)
                steps = len(ep)
                self.played_steps += steps
                if ep.intervention is not None:
                    self.human_steps += int(ep.intervention.sum())
            (round_steps,) = d.sum([steps])
            done = min(first + d.world_size - 1, online)
            credit += cfg.utd * round_steps / d.world_size
            while credit >= 1.0:
                self.policy.agent.update(self._batch())
                credit -= 1.0
            bar.update(done - (first - 1))
            if done >= next_eval or done == online:
                curve.append(self.evaluate(done, started))
                while next_eval <= done:
                    next_eval += cfg.eval_every
                bar.set_postfix(
                    success=f"{curve[-1].success_rate:.0%}", updates=self.policy.agent.updates
                )
        bar.close()
        if cfg.videos:
            final = self.evaluate(online, started, videos=cfg.videos)
            curve[-1] = final if curve[-1].episodes == online else curve[-1]
        result = LearnResult(
            curve,
            curve[-1].success_rate,
            self.out,
            self.policy.agent.updates,
            (time.monotonic() - started) / 60,
            rank=d.rank,
            world_size=d.world_size,
        )
        self.save(result)
        return result

    # --- outputs ------------------------------------------------------------------------------
    def save(self, result: LearnResult) -> None:
        """Checkpoint, learning curve (JSON and PNG): rank 0's, once every rank agrees on the weights."""
        self.dist.check_in_sync(self.policy, "policy")
        if not self.dist.is_main:
            return
        self.policy.save(self.out / "policy.pt", extra={"learn_config": asdict(self.cfg)})
        (self.out / "curve.json").write_text(
            json.dumps([asdict(e) for e in result.curve], indent=1)
        )
        plot_curves({self.cfg.mode: result.curve}, self.out / "curve.png")

    def close(self) -> None:
        """Free the renderer."""
        self.env.close()


def plot_curves(curves: dict[str, list[EvalResult]], path: Path) -> None:
    """Success rate against online episodes, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for name, curve in curves.items():
        ax.plot(
            [e.episodes for e in curve], [e.success_rate for e in curve], marker="o", label=name
        )
    ax.set_xlabel("online episodes")
    ax.set_ylabel("held-out success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def learn(cfg: LearnConfig) -> LearnResult:
    """Run one learning run (one rank of it under torchrun) and return its curve."""
    dist = init_distributed(cfg.device)
    try:
        learner = Learner(cfg, dist)
        try:
            return learner.run()
        finally:
            learner.close()
    finally:
        shutdown(dist)
