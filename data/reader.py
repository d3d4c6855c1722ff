"""Read LeRobotDataset v3.0 folders back into whole-episode arrays (:class:`EpisodeArrays`).

The dataset is opened with lerobot's own ``LeRobotDataset`` (``video_backend="pyav"``), so
anything LeRobot can read — limbic's recordings or a dataset made elsewhere with the same
keys — comes back. LeRobot hands frames out as ``float32[3, H, W]`` in ``[0, 1]``; they are
turned back into ``uint8[H, W, 3]`` here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from limbic.data.schema import (
    ACTION,
    CAPTURE_TIME,
    DONE,
    IMAGE_PREFIX,
    INTERVENTION,
    POLICY_VERSION,
    REWARD,
    STATE,
    SUCCESS,
    TASK_PROGRESS,
    EpisodeArrays,
)
from limbic.data.writer import read_limbic_episodes


def parse_split(spec: str) -> list[int]:
    """Episode indices of a LeRobot split string such as ``"0:40"`` or ``"0:40,50:60"``."""
    out: list[int] = []
    for part in spec.split(","):
        start, sep, stop = part.strip().partition(":")
        if not sep or not start.strip().isdigit() or not stop.strip().isdigit():
            raise ValueError(
                f"split {spec!r}: expected 'start:stop' episode ranges separated by commas"
            )
        out.extend(range(int(start), int(stop)))
    return out


def _to_uint8_hwc(frame: torch.Tensor) -> np.ndarray:
    return frame.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _scalars(column, key: str, default: float | bool | int, dtype) -> np.ndarray:
    """A per-frame scalar feature as a 1-D array (``default`` everywhere when the dataset lacks it)."""
    try:
        values = column(key)
    except KeyError:
        values = None
    if values is None:
        return np.full(len(column("frame_index")), default, dtype=dtype)
    return np.array(
        [v.reshape(-1)[0].item() if isinstance(v, torch.Tensor) else v for v in values], dtype=dtype
    )


def load_episodes(
    root: str | Path,
    repo_id: str | None = None,
    episodes: Sequence[int] | None = None,
    split: str | None = None,
    views: Sequence[str] | None = None,
) -> list[EpisodeArrays]:
    """Open the LeRobotDataset at ``root`` and return its episodes as :class:`EpisodeArrays`.

    ``episodes`` selects episode indices; ``split`` selects a named split of
    ``meta/info.json`` (e.g. ``"test"``) instead. ``views`` restricts the camera views
    (default: every image/video feature). ``metadata`` carries ``repo_id``, ``root``,
    ``policy_version`` and ``capture_time_ns`` per frame, ``progress`` when the dataset
    has a :data:`TASK_PROGRESS` feature, and ``task`` (the task's name, e.g. ``pick_place``)
    and ``goal`` (what the episode asked for: object slot -> colour in simulation) when limbic
    recorded the episode.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    root = Path(root).expanduser()
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(
            f"dataset root {root}: no meta/info.json (expected a LeRobotDataset v3.0 folder)"
        )
    repo_id = repo_id or f"local/{root.name}"
    if split is not None:
        if episodes is not None:
            raise ValueError("load_episodes: give either episodes or split, not both")
        splits = LeRobotDatasetMetadata(repo_id, root=root).info.get("splits", {})
        if split not in splits:
            raise ValueError(
                f"split {split!r}: not in {root}/meta/info.json; available: {sorted(splits)}"
            )
        episodes = parse_split(splits[split])
    ds = LeRobotDataset(
        repo_id,
        root=root,
        episodes=list(episodes) if episodes is not None else None,
        video_backend="pyav",
    )
    camera_keys = [k for k in ds.meta.camera_keys if k.startswith(IMAGE_PREFIX)]
    available = [k[len(IMAGE_PREFIX) :] for k in camera_keys]
    chosen = list(views) if views is not None else available
    missing = [v for v in chosen if v not in available]
    if missing:
        raise ValueError(f"views {missing}: not in dataset {root} (has {available})")
    has_progress = TASK_PROGRESS in ds.features

    # Non-video columns in one read; videos decoded once per episode and view (not per frame).
    columns = ds.hf_dataset[:]
    records = {int(r["episode_index"]): r for r in read_limbic_episodes(root)}
    episode_of = np.array([int(x) for x in columns["episode_index"]], dtype=np.int64)
    out = []
    for ep_index in sorted(set(episode_of.tolist())):
        rows = np.flatnonzero(episode_of == ep_index)
        rows = rows[np.argsort([int(columns["frame_index"][r]) for r in rows], kind="stable")]

        def column(key: str, rows=rows) -> list:
            return [columns[key][r] for r in rows]

        tasks = {ds.meta.tasks.iloc[int(t)].name for t in column("task_index")}
        if len(tasks) != 1:
            raise ValueError(
                f"{root} episode {ep_index}: expected one task string, got {sorted(tasks)}"
            )
        images = {}
        for view in chosen:
            key = IMAGE_PREFIX + view
            if key in ds.meta.video_keys:
                frames = _decode_episode_video(
                    ds, ep_index, key, [float(t) for t in column("timestamp")]
                )
            else:
                frames = torch.stack(column(key))
            images[view] = np.stack([_to_uint8_hwc(f) for f in frames])
        metadata: dict = {
            "repo_id": repo_id,
            "root": str(root),
            "policy_version": _scalars(column, POLICY_VERSION, -1, np.int64),
            "capture_time_ns": _scalars(column, CAPTURE_TIME, -1, np.int64),
        }
        if has_progress:
            metadata["progress"] = _scalars(column, TASK_PROGRESS, 0.0, np.float32)
        record = records.get(int(ep_index), {})
        if "task" in record:
            metadata["task"] = str(record["task"])
        if isinstance(record.get("goal"), dict):
            metadata["goal"] = {str(k): str(v) for k, v in record["goal"].items()}
        out.append(
            EpisodeArrays(
                episode_index=ep_index,
                instruction=tasks.pop(),
                images=images,
                state=torch.stack(column(STATE)).numpy().astype(np.float32),
                action=torch.stack(column(ACTION)).numpy().astype(np.float32),
                reward=_scalars(column, REWARD, 0.0, np.float32),
                success=_scalars(column, SUCCESS, False, bool),
                done=_scalars(column, DONE, False, bool),
                intervention=_scalars(column, INTERVENTION, False, bool),
                metadata=metadata,
            )
        )
    return out


def _decode_episode_video(ds, ep_index: int, key: str, timestamps_s: list[float]) -> torch.Tensor:
    """All frames of one episode's video ``key`` as ``float32[T, 3, H, W]`` in [0, 1]."""
    from lerobot.datasets.video_utils import decode_video_frames

    # Episodes share one mp4 per chunk; the episode starts at from_timestamp within it.
    start = float(ds.meta.episodes[ep_index][f"videos/{key}/from_timestamp"])
    path = ds.root / ds.meta.get_video_file_path(ep_index, key)
    return decode_video_frames(path, [start + t for t in timestamps_s], ds.tolerance_s, "pyav")


def load_many(
    roots: Sequence[str | Path], split: str | None = None, views: Sequence[str] | None = None
) -> list[EpisodeArrays]:
    """:func:`load_episodes` over several dataset folders, concatenated in order."""
    episodes: list[EpisodeArrays] = []
    for root in roots:
        episodes.extend(load_episodes(root, split=split, views=views))
    return episodes
