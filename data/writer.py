"""Write limbic episodes into a LeRobotDataset v3.0 on disk.

``EpisodeWriter`` is the one place that turns observations and actions into dataset frames.
It finalises the dataset however recording ends (normal exit, exception, or Ctrl-C/SIGTERM
turned into a stop request by :func:`stop_on_signals`). With ``durable=True`` (the default) every saved episode is also
complete on disk the moment ``save_episode`` returns, so even a hard kill or power loss
between episodes leaves the saved ones readable: each episode's frames and metadata go to
parquet files of their own, closed right away. A kill *during* a save, which can tear a
metadata file LeRobot then refuses to open, is rolled back when the dataset is resumed
(:func:`recover_cut_save`). Limbic's own per-episode facts (seed, split, expert mode, source) go to ``meta/limbic_episodes.jsonl``
beside LeRobot's metadata, one flushed line per saved episode.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from limbic.contracts import ActionSpec, ContractError, Observation
from limbic.data import schema

LIMBIC_EPISODES = "meta/limbic_episodes.jsonl"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetLayout:
    """What every frame of a dataset holds: views, image size, state and action names."""

    views: tuple[str, ...]
    image_hw: tuple[int, int]
    state_names: tuple[str, ...]
    action_spec: ActionSpec
    fps: int
    robot_type: str
    task_progress: bool = False
    """Every frame also stores the task's true progress (``schema.TASK_PROGRESS``; a simulator
    knows it, a physical arm does not)."""

    def features(self, use_videos: bool) -> dict[str, dict[str, Any]]:
        """The LeRobot feature dict of this layout."""
        return schema.dataset_features(
            self.views,
            self.image_hw,
            self.state_names,
            self.action_spec.names,
            use_videos,
            self.task_progress,
        )


class EpisodeWriter:
    """Append episodes, step by step, to a new LeRobotDataset at ``root``."""

    def __init__(
        self,
        root: str | Path,
        layout: DatasetLayout,
        repo_id: str = "limbic/recording",
        use_videos: bool = True,
        vcodec: str = "libsvtav1",
        overwrite: bool = False,
        durable: bool = True,
        resume: bool = False,
        parallel_encoding: bool = True,
        encoder_threads: int | None = None,
    ):
        """``encoder_threads``: threads of each video encode (``None``: the codec's own choice;
        1 keeps a background writer's encoding on one core)."""
        from lerobot.datasets.lerobot_dataset import LeRobotDataset

        _quiet_encoders()
        self.root = Path(root)
        self.layout = layout
        self.parallel_encoding = parallel_encoding
        if resume:
            recover_cut_save(self.root)
        if resume and _saved_episodes(self.root) > 0:
            # Append to the episodes already there (a restarted learner or recorder).
            self.dataset = LeRobotDataset(
                repo_id, root=self.root, vcodec=vcodec, encoder_threads=encoder_threads
            )
            expected = layout.features(use_videos)
            have = {k: v for k, v in self.dataset.features.items() if k in expected}
            for key, feature in expected.items():
                got = have.get(key)
                if (
                    got is None
                    or got["dtype"] != feature["dtype"]
                    or tuple(got["shape"]) != tuple(feature["shape"])
                ):
                    raise ValueError(
                        f"dataset {self.root} does not match this layout at {key!r}: "
                        f"has {got and (got['dtype'], tuple(got['shape']))}, expected {(feature['dtype'], tuple(feature['shape']))}"
                    )
            self.dataset.meta.metadata_buffer_size = 1
        else:
            if self.root.exists():
                if not overwrite and not resume:
                    raise FileExistsError(
                        f"dataset folder {self.root} already exists; choose another path or pass overwrite=True"
                    )
                shutil.rmtree(self.root)
            self.dataset = LeRobotDataset.create(
                repo_id=repo_id,
                fps=layout.fps,
                features=layout.features(use_videos),
                root=self.root,
                robot_type=layout.robot_type,
                use_videos=use_videos,
                vcodec=vcodec,
                encoder_threads=encoder_threads,
                metadata_buffer_size=1,
            )
        self.durable = durable
        if durable:
            # LeRobot starts a new file once the open one passes this size; at 0 every episode
            # gets data and video files of its own, which save_episode() then closes: a saved
            # episode is never rewritten (no appending to an earlier episode's video).
            self.dataset.meta.info["data_files_size_in_mb"] = 0
            self.dataset.meta.info["video_files_size_in_mb"] = 0
        self._frames = 0
        self.episodes_saved = 0
        self.finalized = False

    @property
    def total_episodes(self) -> int:
        """Episodes in the dataset, including those of earlier runs when resumed."""
        return int(self.dataset.meta.total_episodes)

    def add_step(
        self,
        obs: Observation,
        action: np.ndarray,
        reward: float = 0.0,
        success: bool = False,
        done: bool = False,
        intervention: bool = False,
        policy_version: int = -1,
        task_progress: float | None = None,
    ) -> None:
        """Add one frame: the observation, the action taken from it, and what followed
        (``task_progress``: the observed state's true progress, which a layout with
        ``task_progress`` needs on every frame and any other refuses)."""
        lay = self.layout
        obs.validate(views=lay.views, state_dim=len(lay.state_names), image_hw=lay.image_hw)
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (lay.action_spec.dim,):
            raise ContractError(
                "action", f"expected shape ({lay.action_spec.dim},), got {action.shape}"
            )
        frame: dict[str, Any] = {schema.image_key(v): obs.images[v] for v in lay.views}
        frame[schema.STATE] = obs.state.astype(np.float32)
        frame[schema.ACTION] = action
        frame[schema.REWARD] = np.array([reward], dtype=np.float32)
        frame[schema.SUCCESS] = np.array([success], dtype=bool)
        frame[schema.DONE] = np.array([done], dtype=bool)
        frame[schema.INTERVENTION] = np.array([intervention], dtype=bool)
        frame[schema.POLICY_VERSION] = np.array([policy_version], dtype=np.int64)
        frame[schema.CAPTURE_TIME] = np.array([obs.timestamp_ns], dtype=np.int64)
        if lay.task_progress != (task_progress is not None):
            raise ContractError(
                "task_progress",
                "this dataset stores the task's progress on every frame; none was given"
                if lay.task_progress
                else "this dataset has no task_progress feature",
            )
        if task_progress is not None:
            if not (np.isfinite(task_progress) and 0.0 <= task_progress <= 1.0):
                raise ContractError("task_progress", f"must be in [0, 1], got {task_progress}")
            frame[schema.TASK_PROGRESS] = np.array([task_progress], dtype=np.float32)
        frame["task"] = obs.instruction
        self.dataset.add_frame(frame)
        self._frames += 1

    def save_episode(self, info: dict[str, Any] | None = None) -> int:
        """Write the buffered steps as one episode; return its index."""
        if self._frames == 0:
            raise ValueError("no steps to save: call add_step() first")
        index = self.dataset.meta.total_episodes
        if self.durable:
            _begin_save(self.root)
        with _keep_scheduling():
            self.dataset.save_episode(parallel_encoding=self.parallel_encoding)
        if self.durable:
            self._close_files()
            _end_save(self.root)
        record = {"episode_index": index, "length": self._frames, **(info or {})}
        with open(self.root / LIMBIC_EPISODES, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._frames = 0
        self.episodes_saved += 1
        return index

    def _close_files(self) -> None:
        # The same steps LeRobotDataset takes before reading its own files back (lerobot 0.4.4).
        self.dataset._close_writer()
        self.dataset._writer_closed_for_reading = True
        self.dataset.meta._close_writer()

    def discard_episode(self) -> None:
        """Drop the buffered steps of an unfinished episode."""
        if self._frames:
            self.dataset.clear_episode_buffer()
        self._frames = 0

    def finalize(self) -> None:
        """Drop any unfinished episode and close the dataset's files. Safe to call twice."""
        if self.finalized:
            return
        self.discard_episode()
        self.dataset.finalize()
        self.finalized = True

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finalize()


SAVING = "meta/limbic_saving.json"
"""Marker of a ``save_episode`` in progress: the files there were before it, and backups of the
metadata files LeRobot rewrites in place (kept in :data:`SAVING_BACKUP`)."""
SAVING_BACKUP = "meta/limbic_saving"
CRASHED = "crashed"
"""Folder, beside ``data/`` and ``meta/``, for files a cut-short save left (kept for inspection)."""
_SCRATCH = ("images", CRASHED, SAVING_BACKUP)


def _dataset_files(root: Path) -> list[str]:
    """Files of the dataset (relative paths), leaving out LeRobot's frame scratch folder and
    limbic's own bookkeeping."""
    out = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not any(rel == d or rel.startswith(d + "/") for d in _SCRATCH):
            out.append(rel)
    return sorted(out)


def _saved_episodes(root: Path) -> int:
    """Episodes LeRobot's ``info.json`` counts at ``root`` (0 when there is none)."""
    path = root / "meta" / "info.json"
    if not path.is_file():
        return 0
    try:
        return int(json.loads(path.read_text())["total_episodes"])
    except (ValueError, KeyError) as e:
        raise ValueError(
            f"{path} is not a LeRobot info file ({e}); the dataset needs repair"
        ) from e


def _fsynced_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _begin_save(root: Path) -> None:
    """Before LeRobot saves an episode: note the files there are and back up the metadata it
    rewrites in place, so a save cut short (a hard kill) can be rolled back."""
    backup = root / SAVING_BACKUP
    shutil.rmtree(backup, ignore_errors=True)
    backup.mkdir(parents=True)
    rewritten = []
    for path in sorted((root / "meta").glob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in (LIMBIC_EPISODES, SAVING):
            _fsynced_write(backup / path.name, path.read_bytes())
            rewritten.append(rel)
    record = {"files": _dataset_files(root), "backed_up": rewritten}
    _fsynced_write(root / SAVING, json.dumps(record).encode())


def _end_save(root: Path) -> None:
    (root / SAVING).unlink()
    shutil.rmtree(root / SAVING_BACKUP, ignore_errors=True)


def recover_cut_save(root: str | Path) -> list[str]:
    """Roll back a ``save_episode`` that a crash cut short; return the files set aside.

    A durable writer marks every save before LeRobot starts it. If the mark is still there,
    the save never finished: files it wrote (a data, video or metadata parquet, perhaps
    without its footer) go to ``crashed/``, and the metadata it rewrites (``info.json``,
    ``stats.json``, ``tasks.parquet``) comes back from the backup. The dataset is then as it
    was after its last complete episode, and the episode can be saved again.
    """
    root = Path(root)
    marker = root / SAVING
    if not marker.is_file():
        shutil.rmtree(root / SAVING_BACKUP, ignore_errors=True)  # a crash before the mark
        return []
    record = json.loads(marker.read_text())
    before = set(record["files"])
    backed_up = set(record["backed_up"])
    crashed = root / CRASHED / f"{len(list((root / CRASHED).glob('*'))):04d}"
    moved = []
    for rel in _dataset_files(root):
        if rel not in before and rel != SAVING:
            target = crashed / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(root / rel, target)
            moved.append(rel)
    for rel in backed_up:
        copy = root / SAVING_BACKUP / Path(rel).name
        if copy.is_file():  # gone only if a recovery cut short already put it back
            os.replace(copy, root / rel)
    marker.unlink()
    shutil.rmtree(root / SAVING_BACKUP, ignore_errors=True)
    log.warning(
        "%s: an episode's save was cut short; rolled back to the last complete episode "
        "(files it left are in %s: %s)",
        root,
        crashed,
        ", ".join(moved) or "none",
    )
    return moved


@contextmanager
def _keep_scheduling() -> Iterator[None]:
    """Restore the calling thread's scheduling policy after video encoding.

    The SVT-AV1 encoder (LeRobot's default codec) switches the thread that starts it to
    real-time SCHED_FIFO priority 99 when the process may (as root): a learner or recorder
    would then pre-empt every control loop on the machine. The policy is put back through
    ``pthread_setschedparam`` (not ``os.sched_setscheduler``), so glibc's record of it is
    right too: threads created later (ZeroMQ's, for one) copy that record.
    """
    libc = _libc()
    if libc is None:
        yield
        return
    self_id = libc.pthread_self()
    policy, param = ctypes.c_int(), ctypes.c_int()
    if libc.pthread_getschedparam(self_id, ctypes.byref(policy), ctypes.byref(param)) != 0:
        yield
        return
    try:
        yield
    finally:
        libc.pthread_setschedparam(self_id, policy, ctypes.byref(param))


@functools.cache
def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None
    libc.pthread_self.restype = ctypes.c_ulong
    libc.pthread_getschedparam.argtypes = [ctypes.c_ulong, ctypes.c_void_p, ctypes.c_void_p]
    libc.pthread_setschedparam.argtypes = [ctypes.c_ulong, ctypes.c_int, ctypes.c_void_p]
    return libc


def _quiet_encoders() -> None:
    """Keep per-episode encoder and ``datasets`` chatter out of the recording's progress bar."""
    import av
    import datasets

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only
    av.logging.set_level(av.logging.ERROR)
    av.logging.set_libav_level(av.logging.ERROR)  # FFmpeg's own callback too (x264's statistics)
    datasets.disable_progress_bars()


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def read_limbic_episodes(root: str | Path) -> list[dict[str, Any]]:
    """Limbic's per-episode records of a dataset (empty if it has none)."""
    path = Path(root) / LIMBIC_EPISODES
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class StopRequest:
    """Set by SIGINT/SIGTERM while recording; the loop checks it between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Turn the first Ctrl-C or SIGTERM into a stop request instead of an exception.

    An exception raised at an arbitrary point could land inside LeRobot's episode save and
    leave it half written; a flag lets the loop stop between steps, drop only the unfinished
    episode, and finalise. A second signal aborts at once (KeyboardInterrupt).
    """
    stop = StopRequest()

    def _request(signum: int, frame: Any) -> None:
        if stop:
            raise KeyboardInterrupt
        stop.signal = signum

    if threading.current_thread() is not threading.main_thread():
        yield stop  # only the main thread may install handlers; the caller stops it otherwise
        return
    previous = {sig: signal.signal(sig, _request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
