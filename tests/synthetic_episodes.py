"""Procedurally rendered push-block episodes for testing the critic without the simulator.

A top-down table with two coloured blocks and two coloured target rings. The instruction
names one block and its target; a round "gripper" approaches the block and pushes it onto
the target at constant speed (successful demos), or pushes it part-way and then away from
the target (failures, which carry their true progress in ``metadata["progress"]``). The
other block never moves, so a mismatched instruction sees no progress. Two views: ``front``
(the whole table) and ``wrist`` (a zoomed window that follows the gripper).
"""

from __future__ import annotations

import numpy as np

from limbic.data.schema import EpisodeArrays

TASKS: tuple[tuple[str, int, int], ...] = (
    ("push the red block onto the green target", 0, 0),
    ("push the blue block onto the yellow target", 1, 1),
    ("push the red block onto the yellow target", 0, 1),
)
"""(instruction, block index, target index). The last is a held-out task variation."""
TRAIN_TASKS = (0, 1)
HELD_OUT_TASK = 2
TRAIN_TASKS = (0, 1)
HELD_OUT_TASK = 2

BLOCK_RGB = np.array([[0.85, 0.15, 0.1], [0.15, 0.3, 0.9]], dtype=np.float32)
TARGET_RGB = np.array([[0.1, 0.75, 0.2], [0.95, 0.85, 0.1]], dtype=np.float32)
GRIPPER_RGB = np.array([0.15, 0.15, 0.15], dtype=np.float32)
BLOCK_HALF = 0.06
TARGET_RADIUS = 0.08
GRIPPER_RADIUS = 0.04


def _render(
    hw: int,
    center: np.ndarray,
    half_extent: float,
    blocks: np.ndarray,
    targets: np.ndarray,
    gripper: np.ndarray,
    tint: np.ndarray,
) -> np.ndarray:
    """Render the window ``center ± half_extent`` of the table to ``uint8[hw, hw, 3]``."""
    coords = (
        center[None, None, :]
        + (np.stack(np.meshgrid(np.arange(hw), np.arange(hw), indexing="xy"), -1) + 0.5)
        / hw
        * 2
        * half_extent
        - half_extent
    )
    img = np.empty((hw, hw, 3), dtype=np.float32)
    img[:] = 0.55 + tint
    checker = ((np.floor(coords[..., 0] * 6) + np.floor(coords[..., 1] * 6)) % 2)[..., None]
    img -= 0.05 * checker
    for k in range(2):
        d = np.linalg.norm(coords - targets[k], axis=-1)
        ring = (d < TARGET_RADIUS) & (d > TARGET_RADIUS * 0.6)
        img[ring] = TARGET_RGB[k]
    for k in range(2):
        inside = np.all(np.abs(coords - blocks[k]) < BLOCK_HALF, axis=-1)
        img[inside] = BLOCK_RGB[k]
    inside = np.linalg.norm(coords - gripper, axis=-1) < GRIPPER_RADIUS
    img[inside] = GRIPPER_RGB
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _random_layout(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    while True:
        pts = rng.uniform(0.15, 0.85, size=(5, 2))
        blocks, targets, gripper = pts[:2], pts[2:4], pts[4]
        dists = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(5)
        if dists.min() > 0.2 and np.linalg.norm(blocks - targets, axis=-1).min() > 0.35:
            return blocks, targets, gripper


def make_episode(
    index: int,
    rng: np.random.Generator,
    hw: int = 64,
    task: int | None = None,
    fail: bool = False,
    length: int | None = None,
) -> EpisodeArrays:
    """One toy episode; ``fail`` pushes the block part-way and then away from the target."""
    task = int(rng.choice(TRAIN_TASKS)) if task is None else task
    instruction, b, g = TASKS[task]
    blocks, targets, gripper = _random_layout(rng)
    length = int(rng.integers(24, 37)) if length is None else length
    still = int(rng.integers(0, 3))
    direction = (targets[g] - blocks[b]) / np.linalg.norm(targets[g] - blocks[b])
    behind = blocks[b] - direction * (BLOCK_HALF + GRIPPER_RADIUS)
    approach = np.linalg.norm(behind - gripper)
    push = np.linalg.norm(targets[g] - blocks[b])
    total = approach + push
    moving = length - still
    deviate_at = rng.uniform(0.35, 0.7) if fail else 2.0
    away = rng.normal(size=2)
    away -= direction * (away @ direction) + direction * 1.0  # away from the target
    away /= np.linalg.norm(away)
    tint = rng.uniform(-0.08, 0.08, size=3).astype(np.float32)
    frames: dict[str, list[np.ndarray]] = {"front": [], "wrist": []}
    progress = np.zeros(length, dtype=np.float32)
    state = np.zeros((length, 4), dtype=np.float32)
    cur_blocks = blocks.copy()
    pos = gripper.copy()
    s_dev: float | None = None
    dev_block = None
    for t in range(length):
        s = max(0, t - still) / max(moving - 1, 1)
        if s <= deviate_at:
            arc = s * total
            if arc <= approach:
                pos = gripper + (behind - gripper) * (arc / max(approach, 1e-9))
            else:
                pushed = arc - approach
                cur_blocks[b] = blocks[b] + direction * pushed
                pos = cur_blocks[b] - direction * (BLOCK_HALF + GRIPPER_RADIUS)
            progress[t] = s
        else:
            if s_dev is None:
                s_dev, dev_block = progress[t - 1], cur_blocks[b].copy()
            step = (s - deviate_at) * total * 0.6
            cur_blocks[b] = np.clip(dev_block + away * step, 0.05, 0.95)
            pos = cur_blocks[b] - away * (BLOCK_HALF + GRIPPER_RADIUS)
            d_dev = np.linalg.norm(dev_block - targets[g])
            d_now = np.linalg.norm(cur_blocks[b] - targets[g])
            progress[t] = s_dev * d_dev / max(d_now, d_dev)
        state[t] = [*pos, *cur_blocks[b]]
        frames["front"].append(
            _render(hw, np.array([0.5, 0.5]), 0.5, cur_blocks, targets, pos, tint)
        )
        frames["wrist"].append(_render(hw, pos, 0.2, cur_blocks, targets, pos, tint))
    success = np.zeros(length, dtype=bool)
    if not fail:
        success[-1] = True
    done = np.zeros(length, dtype=bool)
    done[-1] = True
    metadata: dict = {"task_index": task}
    if fail:
        metadata["progress"] = progress
    return EpisodeArrays(
        episode_index=index,
        instruction=instruction,
        images={v: np.stack(f) for v, f in frames.items()},
        state=state,
        action=np.zeros((length, 3), dtype=np.float32),
        reward=success.astype(np.float32),
        success=success,
        done=done,
        intervention=np.zeros(length, dtype=bool),
        metadata=metadata,
    )


def make_episodes(
    n: int,
    seed: int,
    hw: int = 64,
    fail_fraction: float = 0.0,
    start_index: int = 0,
    tasks: tuple[int, ...] = TRAIN_TASKS,
) -> list[EpisodeArrays]:
    """``n`` toy episodes from ``seed``, ``tasks`` alternating, the last ``fail_fraction`` of them failures."""
    rng = np.random.default_rng(seed)
    n_fail = int(round(n * fail_fraction))
    return [
        make_episode(start_index + i, rng, hw=hw, task=tasks[i % len(tasks)], fail=i >= n - n_fail)
        for i in range(n)
    ]


def write_dataset(
    episodes: list[EpisodeArrays],
    root,
    use_videos: bool = False,
    repo_id: str = "limbic/toy",
    splits: dict[str, str] | None = None,
    with_progress: bool = False,
) -> None:
    """Record toy episodes as a LeRobotDataset v3.0 with limbic's schema (what the recorder writes).

    ``with_progress`` adds the optional ``task_progress`` feature (true progress, or the
    time-based one for successes). ``splits`` replaces ``meta/info.json``'s split table.
    """
    import json
    from pathlib import Path

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from limbic.data import schema
    from limbic.data.reader import TASK_PROGRESS

    first = episodes[0]
    views = sorted(first.images)
    hw = first.images[views[0]].shape[1:3]
    features = schema.dataset_features(
        views,
        hw,
        [f"s{i}" for i in range(first.state.shape[1])],
        [f"a{i}" for i in range(first.action.shape[1])],
        use_videos=use_videos,
    )
    if with_progress:
        features[TASK_PROGRESS] = {"dtype": "float32", "shape": (1,), "names": None}
    ds = LeRobotDataset.create(
        repo_id, fps=10, features=features, root=root, use_videos=use_videos, robot_type="toy"
    )
    for ep in episodes:
        n = len(ep)
        progress = ep.metadata.get("progress", np.arange(n, dtype=np.float32) / max(n - 1, 1))
        for t in range(n):
            frame = {schema.image_key(v): ep.images[v][t] for v in views}
            frame.update(
                {
                    schema.STATE: ep.state[t],
                    schema.ACTION: ep.action[t],
                    schema.REWARD: np.array([ep.reward[t]], np.float32),
                    schema.SUCCESS: np.array([ep.success[t]]),
                    schema.DONE: np.array([ep.done[t]]),
                    schema.INTERVENTION: np.array([ep.intervention[t]]),
                    schema.POLICY_VERSION: np.array([3], np.int64),
                    schema.CAPTURE_TIME: np.array([10**9 + t * 10**8], np.int64),
                    "task": ep.instruction,
                }
            )
            if with_progress:
                frame[TASK_PROGRESS] = np.array([progress[t]], np.float32)
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()
    if splits is not None:
        info_path = Path(root) / "meta" / "info.json"
        info = json.loads(info_path.read_text())
        info["splits"] = splits
        info_path.write_text(json.dumps(info, indent=4))
