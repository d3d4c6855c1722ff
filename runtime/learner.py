"""``limbic-learner``: receives episodes, keeps the replay, trains, publishes weights, checkpoints.

The same learning as the in-process loop (:mod:`limbic.runtime.learn`), split over threads of
one process and fed by actor processes:

* set-up (once per run): scripted demonstrations -> the demo partition, the token
  compressor fitted on them, behaviour-cloning pre-training, an evaluation, a checkpoint;
* the **inbox thread** (:mod:`limbic.runtime.inbox`) receives and checks episodes;
* the **storing thread** featurises each new episode (the frozen backbone once per frame),
  stores it durably (:mod:`limbic.runtime.episode_store`: dataset, replay file, replay
  index) and only then acknowledges it and adds it to the in-memory replay;
* the **training loop** (main thread) does ``utd`` updates per online step received, exactly
  as many as the in-process loop after the same episodes; offers weights to the
  **publication thread** (:mod:`limbic.runtime.weight_sync`) every ``publish_every``
  updates; checkpoints every ``checkpoint_every``; evaluates on held-out seeds every
  ``eval_every`` online episodes trained on; and finishes after ``online_episodes``.

``<out_dir>/policy.pt`` is the checkpoint: the policy (servable with
``limbic-serve served_policy@policy=vla``) plus the optimiser states, counters and RNG state to
resume exactly; with the replay index it lets a killed learner resume where it was.
``<out_dir>/status.json`` is rewritten about once a second for progress displays.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import traceback
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from limbic.data.writer import DatasetLayout
from limbic.launch.config import require
from limbic.policy.rlpd import EMA_KEYS, ActionNormalizer
from limbic.runtime import auth
from limbic.runtime.episode_store import EpisodeStore
from limbic.runtime.inbox import EpisodeInbox
from limbic.runtime.learn import (
    DEMO_SEED,
    EvalResult,
    LearnConfig,
    Learner,
    LearnResult,
    StopRequestedError,
    plot_curves,
)
from limbic.runtime.priority import lower_priority
from limbic.runtime.protocol import EpisodeUpload, ErrorCode, ProtocolError
from limbic.runtime.replay import after_last_handback
from limbic.runtime.rollout import EpisodeRecord
from limbic.runtime.weight_sync import ActingLag, WeightLag, WeightSync

log = logging.getLogger(__name__)

CHECKPOINT = "policy.pt"
STATUS = "status.json"


@dataclass
class LearnerConfig(LearnConfig):
    """The learner process: the in-process loop's learning settings plus its endpoints and cadence."""

    endpoint: str = "tcp://127.0.0.1:5557"
    """Where actors send episodes (bind address; ``tcp://0.0.0.0:5557`` for remote actors, with CURVE)."""
    weights_endpoint: str = "tcp://127.0.0.1:5556"
    """The inference server's weights endpoint; empty: publish nothing."""
    publish_every: int = 10
    """Publish weights every this many updates (and after set-up)."""
    checkpoint_every: int = 250
    """Checkpoint every this many updates (and after set-up, each evaluation and at the end)."""
    resume: bool = True
    """Continue from ``out_dir``'s checkpoint and replay when there are some."""
    use_videos: bool = True
    """Datasets store frames as video (``vcodec``; else PNG images)."""
    vcodec: str = "h264"
    """Video codec of the datasets (LeRobot's choices). Not LeRobot's default ``libsvtav1``: run
    as root, the SVT-AV1 encoder makes its threads real-time (SCHED_FIFO 99), and each episode the
    learner stores then pre-empts the control loops and the server on shared cores (every missed
    tick of the actors fell within half a second of one). x264's threads keep the learner's
    niceness."""
    max_message_bytes: int = 256 * 2**20
    """Largest episode message accepted."""
    nice: int = 10
    """Added to the process's niceness, and to its autogroup's when it leads its own session (as
    under ``limbic-train``), so control loops and the server win shared cores
    (:mod:`limbic.runtime.priority`)."""
    linger_s: float = 3.0
    """After finishing, keep answering actors this long (late re-sends get their acknowledgement)."""
    curve_secret_key: str = ""
    """This learner's ``.key_secret`` file: the episode endpoint then requires CURVE."""
    authorized_clients_dir: str = ""
    """With CURVE: folder of the actors' public ``.key`` files (empty: any key holder)."""
    server_public_key: str = ""
    """The inference server's public CURVE key file, when its weights endpoint requires CURVE."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.publish_every >= 1, "learner.publish_every", "must be >= 1")
        require(self.checkpoint_every >= 1, "learner.checkpoint_every", "must be >= 1")
        require(bool(self.endpoint), "learner.endpoint", "must not be empty")
        require(self.max_message_bytes >= 2**20, "learner.max_message_bytes", "must be >= 1 MiB")
        require(
            0 <= self.nice <= 19,
            "learner.nice",
            f"must be in [0, 19] (lowers priority only), got {self.nice}",
        )
        from lerobot.datasets.video_utils import VALID_VIDEO_CODECS

        require(
            self.vcodec in VALID_VIDEO_CODECS,
            "learner.vcodec",
            f"{self.vcodec!r} is not one of LeRobot's codecs {sorted(VALID_VIDEO_CODECS)}",
        )


@dataclass
class LearnerState:
    """Counters the checkpoint carries besides the policy and optimisers."""

    online_updates: int = 0
    """Gradient updates since online learning began (owed: ``utd`` per online step)."""
    curve: list[dict[str, Any]] = field(default_factory=list)
    """Evaluations so far (``EvalResult`` fields)."""
    replay_episodes: int = 0
    """Episodes the replay index held when the checkpoint was written."""
    weights_version: int = 0
    """The last weights version published."""
    rng: dict[str, Any] = field(default_factory=dict)
    """The batch-sampling generator's state."""
    minutes: float = 0.0
    """Wall minutes of learning before this checkpoint (over all runs)."""


class AsyncLearner(Learner):
    """The learner process; :meth:`run` until finished or ``stop``."""

    keep_observations = True

    def __init__(self, cfg: LearnerConfig, stop: threading.Event | None = None):
        require(
            not cfg.interventions,
            "learner.interventions",
            "the learner plays no episodes; actors take interventions (actor.arbiter=scripted)",
        )
        super().__init__(cfg)
        self.cfg: LearnerConfig = cfg
        self.stop = stop or threading.Event()
        env = self.env
        self.layout = DatasetLayout(
            views=self.policy.views,
            image_hw=tuple(cfg.robot.sim.camera.image_hw),
            state_names=env.state_names,
            action_spec=env.action_spec,
            fps=int(round(cfg.robot.sim.control_hz)),
            robot_type=f"sim_{cfg.robot.sim.arm}",
        )
        self.normalizer = ActionNormalizer(env.action_spec)
        self.store: EpisodeStore | None = None
        self.state = LearnerState()
        self.cond = threading.Condition()
        self.online_steps: list[int] = []  # cumulative online steps after each online episode
        self.lag = WeightLag()
        self.acting_lag = ActingLag()
        self.sync: WeightSync | None = None
        self.inbox: EpisodeInbox | None = None
        self.phase = "starting"
        self.resumed: dict[str, Any] | None = None
        self.finished = False
        self._rates: deque[tuple[float, int]] = deque(maxlen=64)
        self._status_at = 0.0
        self._started = time.monotonic()
        self._minutes0 = 0.0
        self._frozen_arrays: dict[str, np.ndarray] = {}

    def interrupted(self) -> bool:
        return self.stop.is_set()

    # ------------------------------------------------------------ storing

    def check_episode(self, ep: EpisodeUpload) -> None:
        """Raise ``bad_field`` unless ``ep`` fits this learner's arm, cameras and action space."""

        def bad(field_name: str, problem: str) -> ProtocolError:
            return ProtocolError(ErrorCode.BAD_FIELD, field_name, problem, ep.id)

        lay = self.layout
        for view in lay.views:
            if view not in ep.images:
                raise bad("images", f"missing view {view!r}; have {sorted(ep.images)}")
            hw = tuple(ep.images[view].shape[1:3])
            if hw != tuple(lay.image_hw):
                raise bad(
                    f"images[{view!r}]",
                    f"expected {lay.image_hw[0]}x{lay.image_hw[1]} frames, got {hw[0]}x{hw[1]}",
                )
        if ep.state.shape[1] != len(lay.state_names):
            raise bad(
                "state",
                f"expected {len(lay.state_names)} values per frame, got {ep.state.shape[1]}",
            )
        spec = lay.action_spec
        if ep.action.shape[1] != spec.dim:
            raise bad(
                "action",
                f"expected {spec.dim} components {list(spec.names)}, got {ep.action.shape[1]}",
            )
        outside = (ep.action < spec.low - 1e-5) | (ep.action > spec.high + 1e-5)
        if outside.any():
            t, i = (int(x[0]) for x in np.nonzero(outside))
            raise bad(
                f"action[{t}][{spec.names[i]}]",
                f"{ep.action[t, i]:.6g} is outside [{spec.low[i]:.6g}, {spec.high[i]:.6g}]",
            )
        if len(ep) > self.cfg.replay.online_capacity:
            raise bad("action", f"{len(ep)} steps exceed the replay's capacity")

    @torch.no_grad()
    def compact_tokens(self, ep: EpisodeUpload, batch: int = 32) -> np.ndarray:
        """``float16[T + 1, V, N, k]``: the frozen backbone once per frame, then the compressor.
        With a trainable backbone, the frames themselves (``uint8[T + 1, V, H, W, 3]``)."""
        images = np.stack([ep.images[v] for v in self.policy.views], axis=1)  # [T+1, V, H, W, 3]
        if self.policy.trains_backbone:
            return np.ascontiguousarray(images, dtype=np.uint8)
        out = []
        for s in range(0, len(images), batch):
            tokens = self.policy.backbone_tokens(
                torch.from_numpy(np.ascontiguousarray(images[s : s + batch]))
            )
            out.append(self.policy.compact_tokens(tokens).numpy().astype(np.float16))
        return np.concatenate(out)

    def ingest(self, ep: EpisodeUpload, tokens: np.ndarray | None = None) -> None:
        """Store ``ep`` durably, then add it to the replay (storing thread, or set-up)."""
        if tokens is None:
            tokens = self.compact_tokens(ep)
        arrays = {
            "tokens": tokens,
            "state": ep.state,
            "action": self.normalizer.normalize(ep.action),
            "reward": ep.reward,
            "terminal": ep.terminated,
            "phi": ep.phi,
        }
        if ep.source == "intervention":
            arrays["intervention"] = np.asarray(ep.intervention, bool)
        self.store.add(ep, arrays, {"late_ticks": ep.late_ticks})
        self._add_to_replay(ep.source, ep.instruction, arrays)
        if ep.source != "demo":
            self.lag.add_episode(
                self.sync.published if self.sync else [],
                ep.policy_version,
                ep.tick_ns,
                ep.action_ns,
            )
            self.acting_lag.add_episode(
                self.sync.published if self.sync else [],
                ep.policy_version,
                self.state.online_updates,
            )

    def _add_to_replay(self, source: str, instruction: str, arrays: dict[str, np.ndarray]) -> None:
        lang = self.lang(instruction)[0].numpy()
        with self.cond:
            lang_id = self.replay.instruction_id(instruction, lang)
            human = arrays.pop("intervention", None)
            if source == "intervention" and human is not None:  # each step to its own partition
                self.replay.add_shared_episode(human, lang_id=lang_id, **arrays)
                if (
                    self.cfg.imitate_successes
                    and self.cfg.imitate_assisted
                    and (arrays["reward"] > 0).any()
                ):  # the policy's own finish after the human's last hand-back
                    tail = after_last_handback(human)
                    if tail.any():
                        self.replay.add_episode("demo", lang_id=lang_id, keep=tail, **arrays)
                        self.assisted += 1
            else:
                self.replay.add_episode(source, lang_id=lang_id, **arrays)
                # self-imitation (as in the in-process loop): a success the policy ran alone,
                # told by its task reward, so a replay rebuilt from the datasets copies it again
                if (
                    source == "online"
                    and self.cfg.imitate_successes
                    and (arrays["reward"] > 0).any()
                ):
                    self.replay.add_episode("demo", lang_id=lang_id, **arrays)
                    self.imitated += 1
            if source != "demo":  # online interaction, with or without a human stepping in
                steps = len(arrays["action"])
                total = (self.online_steps[-1] if self.online_steps else 0) + steps
                self.online_steps.append(total)
                # the curve's human share: the steps a human took of all the arms' online steps
                self.played_steps += steps
                if source == "intervention":
                    self.human_steps += steps if human is None else int(np.sum(human))
            self.cond.notify_all()

    def _store(self, source: str, ep: EpisodeRecord) -> None:
        """Set-up: a scripted demonstration through the same durable path as actors' episodes."""
        n = self.store.count(source)
        seed = ep.seed if ep.seed is not None else DEMO_SEED + n
        name = f"{source}-{n:06d}" + ("-goal-moved" if ep.goal_moved else "")
        upload = record_to_upload(ep, name, source, seed=seed)
        self.ingest(upload, tokens=ep.tokens)

    def _storing_loop(self) -> None:
        while not self.stop.is_set():
            delivery = self.inbox.get(timeout_s=0.2)
            if delivery is None:
                continue
            ep = delivery.episode
            try:
                self.ingest(ep)
                error = None
            except (
                Exception
            ) as e:  # a failed store fails this episode (re-sent later), not the learner
                log.error("storing %s failed: %s\n%s", ep.episode_id, e, traceback.format_exc())
                error = e
            self.inbox.done(ep.episode_id, error)

    # ------------------------------------------------------------ status for actors and displays

    @property
    def owed_updates(self) -> int:
        """Updates the online data received so far still asks for (``utd`` per step)."""
        steps = self.online_steps[-1] if self.online_steps else 0
        return max(0, math.floor(self.cfg.utd * steps) - self.state.online_updates)

    def _trained_through(self) -> int:
        """Online episodes whose updates are all done (as the in-process loop counts them)."""
        utd, done = self.cfg.utd, self.state.online_updates
        return sum(math.floor(utd * s) <= done for s in self.online_steps)

    def actor_status(self) -> dict[str, Any]:
        """The fields of a ``learner_status`` reply."""
        return {
            "episodes": len(self.online_steps),
            "updates": self.policy.agent.updates,
            "backlog_updates": self.owed_updates,
            "policy_version": self.sync.version if self.sync else 0,
            "finished": self.finished,
        }

    def updates_per_s(self) -> float:
        if len(self._rates) < 2:
            return 0.0
        (t0, u0), (t1, u1) = self._rates[0], self._rates[-1]
        return (u1 - u0) / (t1 - t0) if t1 > t0 else 0.0

    def write_status(self, force: bool = False) -> None:
        """``status.json`` for progress displays and ``limbic-bench train`` (about once a second)."""
        now = time.monotonic()
        if not force and now - self._status_at < 1.0:
            return
        self._status_at = now
        self._rates.append((now, self.policy.agent.updates))
        curve = self.state.curve
        status = {
            "phase": self.phase,
            "episodes": len(self.online_steps),
            "budget": self.online_budget,
            "trained_through": self._trained_through(),
            "updates": self.policy.agent.updates,
            "updates_per_s": self.updates_per_s(),
            "backlog_updates": self.owed_updates,
            "weights_version": self.sync.version if self.sync else 0,
            "success_rate": curve[-1]["success_rate"] if curve else None,
            "curve": curve,
            "weight_lag_s": self.lag.median_s if self.lag.samples else None,
            "weight_lag_samples": len(self.lag.samples),
            "acting_lag_updates": self.acting_lag.median if self.acting_lag.samples else None,
            "acting_lag_samples": len(self.acting_lag.samples),
            "replay_episodes": len(self.store) if self.store else 0,
            "resumed": self.resumed,
            "finished": self.finished,
            "minutes": self.minutes,
            "pid": os.getpid(),
        }
        tmp = self.out / (STATUS + ".tmp")
        tmp.write_text(json.dumps(status, indent=1))
        os.replace(tmp, self.out / STATUS)

    @property
    def online_budget(self) -> int:
        return self.cfg.online_episodes if self.cfg.mode == "rl" else 0

    @property
    def minutes(self) -> float:
        return self._minutes0 + (time.monotonic() - self._started) / 60

    # ------------------------------------------------------------ checkpoints

    def checkpoint(self) -> None:
        """Write ``policy.pt`` atomically: policy, optimisers, counters, RNG, curve."""
        self.state.replay_episodes = len(self.store)
        self.state.weights_version = self.sync.version if self.sync else self.state.weights_version
        self.state.rng = self.rng.bit_generator.state
        self.state.minutes = self.minutes
        extra: dict[str, Any] = {"learner": asdict(self.state), "learn_config": asdict(self.cfg)}
        path = self.out / CHECKPOINT
        tmp = path.with_suffix(".tmp")
        self.policy.save(tmp, extra=extra)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def restore(self) -> None:
        """Load the checkpoint and rebuild the replay from the replay index."""
        path = self.out / CHECKPOINT
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if "backbone" in ckpt:
            self.policy.backbone.load_state_dict(ckpt["backbone"])
        missing, unexpected = self.policy.load_state_dict(ckpt["weights"], strict=False)
        ema = tuple(f"agent.{k}" for k in EMA_KEYS)  # restore() fills an older checkpoint's
        if unexpected or any(not k.startswith(("backbone.", *ema)) for k in missing):
            raise ValueError(
                f"{path} does not fit this policy config (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        self.policy.agent.restore(ckpt["agent"])
        self.state = LearnerState(**ckpt["learner"])
        self.rng.bit_generator.state = self.state.rng
        self._minutes0 = self.state.minutes
        for record, arrays in self.store:
            instruction = arrays.pop("instruction")
            self._add_to_replay(record["source"], instruction, arrays)
        self.resumed = {
            "checkpoint": str(path),
            "updates": self.policy.agent.updates,
            "online_updates": self.state.online_updates,
            "checkpoint_replay_episodes": self.state.replay_episodes,
            "replay_episodes": len(self.store),
            "weights_version": self.state.weights_version,
        }
        log.info(
            "resumed from %s: %d updates, %d episodes in the replay (%d at the checkpoint)",
            path,
            self.policy.agent.updates,
            len(self.store),
            self.state.replay_episodes,
        )

    # ------------------------------------------------------------ phases

    def setup(self) -> None:
        """Resume from a checkpoint, or collect demonstrations, pre-train, evaluate and checkpoint."""
        cfg = self.cfg
        store_root = self.out
        if cfg.resume and (self.out / CHECKPOINT).exists():
            self.store = EpisodeStore(store_root, self.layout, cfg.use_videos, vcodec=cfg.vcodec)
            self.phase = "resuming"
            self.restore()
            return
        EpisodeStore.wipe(store_root)  # a set-up cut short leaves nothing worth keeping
        self.store = EpisodeStore(store_root, self.layout, cfg.use_videos, vcodec=cfg.vcodec)
        self.phase = "demonstrations"
        self.write_status(force=True)
        self.collect_demos()
        self.phase = "pretraining"
        self.write_status(force=True)
        self.pretrain(cfg.bc_pretrain_steps)
        self.phase = "evaluating"
        self.write_status(force=True)
        self.state.curve.append(asdict(self.evaluate(0, self._started)))
        self.checkpoint()

    def snapshot(self) -> dict[str, np.ndarray]:
        """The served policy's weights as numpy copies (frozen backbone arrays shared, not copied)."""
        out = {}
        for name, value in self.policy.state_dict().items():
            if name in self._frozen_arrays:
                out[name] = self._frozen_arrays[name]
                continue
            value = value.detach().clone()
            array = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
            if name.startswith("backbone.") and self.policy.backbone.frozen:
                self._frozen_arrays[name] = array
            out[name] = array
        return out

    def _evaluate_due(self) -> None:
        """Evaluate at every ``eval_every`` online episodes trained on (the budget's end apart)."""
        cfg, curve = self.cfg, self.state.curve
        done = {int(e["episodes"]) for e in curve}
        through = min(self._trained_through(), self.online_budget - 1)
        due = [k for k in range(cfg.eval_every, through + 1, cfg.eval_every) if k not in done]
        if due:  # only the latest due point: weights already past an earlier one are not its
            self._evaluate(due[-1], videos=0)

    def _evaluate(self, episodes: int, videos: int) -> None:
        self.phase = "evaluating"
        self.write_status(force=True)
        result = asdict(self.evaluate(episodes, self._started, videos=videos))
        curve = self.state.curve
        if curve and curve[-1]["episodes"] == episodes:
            curve[-1] = result
        else:
            curve.append(result)
        log.info(
            "evaluation after %d episodes: success %.0f%%", episodes, 100 * result["success_rate"]
        )
        self.phase = "training"
        self.checkpoint()

    def train(self) -> None:
        """Updates as online data arrives, until the budget is trained on or ``stop``."""
        cfg, agent = self.cfg, self.policy.agent
        self.phase = "training"
        budget = self.online_budget
        while not self.stop.is_set():
            self._check_threads()
            with self.cond:
                owed = self.owed_updates
                done = len(self.online_steps) >= budget and owed == 0
                if owed == 0 and not done:
                    self.cond.wait(0.2)
                batch = self._batch() if owed else None
            if batch is not None:
                agent.update(batch)
                self.state.online_updates += 1
                if self.state.online_updates % cfg.publish_every == 0 and self.sync is not None:
                    self.sync.offer(self.snapshot(), self.state.online_updates)
                if self.state.online_updates % cfg.checkpoint_every == 0:
                    self.checkpoint()
            self._evaluate_due()
            self.write_status()
            if done:
                self.finished = True
                return

    def _check_threads(self) -> None:
        for name, part in (("inbox", self.inbox), ("weights", self.sync)):
            if part is not None and part.error is not None:
                raise RuntimeError(f"the learner's {name} thread died") from part.error

    def run(self) -> LearnResult:
        """Set up, open the endpoint, train to the budget; checkpoint and finalise on the way out."""
        cfg = self.cfg
        storing = None
        try:
            self.setup()
            if self.stop.is_set():
                return self._result()
            if cfg.weights_endpoint:
                self.sync = WeightSync(
                    cfg.weights_endpoint,
                    self.out / "weights.jsonl",
                    first_version=self.state.weights_version + 1,
                    server_public_key=auth.load_public_key(cfg.server_public_key)
                    if cfg.server_public_key
                    else None,
                ).start()
                self.sync.offer(self.snapshot(), self.state.online_updates)
            keys = auth.load_keypair(cfg.curve_secret_key) if cfg.curve_secret_key else None
            self.inbox = EpisodeInbox(
                cfg.endpoint,
                self.check_episode,
                lambda i: i in self.store,
                self.actor_status,
                max_message_bytes=cfg.max_message_bytes,
                curve_keys=keys,
                authorized_clients_dir=cfg.authorized_clients_dir,
            ).start()
            storing = threading.Thread(target=self._storing_loop, name="limbic-store", daemon=True)
            storing.start()
            log.info(
                "learner ready: episodes on %s, weights to %s",
                self.inbox.endpoint,
                cfg.weights_endpoint or "-",
            )
            self.write_status(force=True)
            self.train()
            if self.finished:
                self._evaluate(self.online_budget, videos=cfg.videos)
                self.phase = "finished"
                self.write_status(force=True)
                if self.sync is not None:
                    self.sync.offer(self.snapshot(), self.state.online_updates)
                    self.sync.wait_published(10.0)
                self.stop.wait(cfg.linger_s)
            return self._result()
        except StopRequestedError as e:
            log.info("learner %s", e)
            return self._result()
        finally:
            self.phase = "stopping" if not self.finished else "finished"
            self.stop.set()
            if self.inbox is not None:
                self.inbox.close()
            if storing is not None:
                storing.join(60.0)  # an episode being stored is finished, or re-sent later
            if self.store is not None and (self.out / CHECKPOINT).exists():
                self.checkpoint()  # only once set-up is complete: an earlier stop starts over
            if self.sync is not None:
                self.sync.stop()
            if self.store is not None:
                self.store.close()
            self.write_status(force=True)
            self.close()

    def _result(self) -> LearnResult:
        curve = [EvalResult(**e) for e in self.state.curve]
        result = LearnResult(
            curve,
            curve[-1].success_rate if curve else float("nan"),
            self.out,
            self.policy.agent.updates,
            self.minutes,
            self.finished,
        )
        (self.out / "curve.json").write_text(json.dumps([asdict(e) for e in curve], indent=1))
        if curve:
            plot_curves({self.cfg.mode: curve}, self.out / "curve.png")
        return result


def record_to_upload(ep: EpisodeRecord, episode_id: str, source: str, seed: int) -> EpisodeUpload:
    """An in-process episode (with its observations) as the message an actor would send."""
    obs = ep.observations
    t = len(ep)
    zeros = np.zeros(t, np.int64)
    return EpisodeUpload(
        id=0,
        episode_id=episode_id,
        actor="learner",
        seq=0,
        source=source,
        instruction=ep.instruction,
        seed=seed,
        split="train",
        images={v: np.stack([o.images[v] for o in obs]) for v in obs[0].images},
        state=ep.state,
        capture_ns=np.asarray([o.timestamp_ns for o in obs], np.int64),
        phi=ep.phi,
        done_prob=ep.done_prob,
        action=ep.env_action,
        reward=ep.reward,
        success=ep.reward > 0,
        terminated=ep.terminal,
        intervention=np.full(t, source != "online"),
        policy_version=zeros - 1,
        tick_ns=zeros,
        action_ns=zeros,
    )


def run_learner(cfg: LearnerConfig, stop: threading.Event | None = None) -> LearnResult:
    """Run the learner process's work until it finishes its budget or ``stop`` is set."""
    if cfg.nice:
        log.info("learner priority: %s", lower_priority(cfg.nice))
    learner = AsyncLearner(cfg, stop)
    return learner.run()
