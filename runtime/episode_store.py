"""The learner's durable episode store: each episode on disk exactly once, before it is acknowledged.

An episode is stored in three steps, the last of which commits it::

    1. datasets/<partition>/   LeRobotDataset v3.0 (online, demo, intervention), one episode
                               appended; its id goes to meta/limbic_episodes.jsonl
    2. replay/<partition>/<episode_id>.npz   what the replay holds of it: compact vision
                               tokens, state, normalised action, reward, terminal, potential
    3. replay/index.jsonl      one fsynced line per committed episode (the replay index)

The learner acknowledges an episode only after step 3. After a crash, the index says which
episodes are in; an actor re-sends every episode it has no acknowledgement for; one that
reached its dataset but not the index (a crash between 1 and 3) is not appended to the
dataset again (step 1 is skipped when its id is already there), and one already in the index
is acknowledged as a duplicate. A crash *inside* LeRobot's ``save_episode`` is reconciled with
the intent line written to ``replay/journal.jsonl`` before it: if LeRobot counted the
episode, it is taken as in the dataset. So the replay, and the datasets, hold every
acknowledged episode exactly once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from limbic.contracts import Observation
from limbic.data.writer import DatasetLayout, EpisodeWriter, read_limbic_episodes
from limbic.runtime.protocol import SOURCES, EpisodeUpload

log = logging.getLogger(__name__)

REPLAY_KEYS = ("tokens", "state", "action", "reward", "terminal", "phi")
"""Arrays each replay file holds (plus the instruction)."""
OPTIONAL_REPLAY_KEYS = ("intervention",)
"""Arrays a replay file holds when the episode had them (bool[T]: the steps a human took)."""


def _append_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """JSON lines of ``path``; a torn last line (a crash mid-write) is ignored."""
    if not path.exists():
        return []
    out = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ValueError(
                    f"{path}: line {i + 1} is not JSON (only a last line can be torn)"
                ) from None
            log.warning("%s: ignoring a torn last line", path)
    return out


class EpisodeStore:
    """Datasets, replay files and the replay index under ``root``; one writer thread at a time."""

    def __init__(
        self,
        root: str | Path,
        layout: DatasetLayout,
        use_videos: bool = True,
        repo_prefix: str = "limbic/learner",
        vcodec: str = "h264",
    ):
        self.root = Path(root)
        self.layout, self.use_videos, self.repo_prefix = layout, use_videos, repo_prefix
        self.vcodec = vcodec
        (self.root / "replay").mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "replay" / "index.jsonl"
        self.journal_path = self.root / "replay" / "journal.jsonl"
        self.records = _read_lines(self.index_path)
        self.ids = {r["episode_id"] for r in self.records}
        if len(self.ids) != len(self.records):
            raise ValueError(f"{self.index_path} lists an episode twice")
        self._writers: dict[str, EpisodeWriter] = {}
        self._in_dataset: dict[str, dict[str, int]] = {}

    def __contains__(self, episode_id: str) -> bool:
        return episode_id in self.ids

    def __len__(self) -> int:
        return len(self.records)

    def count(self, source: str) -> int:
        """Committed episodes of one partition."""
        return sum(r["source"] == source for r in self.records)

    # ------------------------------------------------------------ datasets

    def dataset_root(self, source: str) -> Path:
        """Folder of the LeRobotDataset of partition ``source``."""
        return self.root / "datasets" / source

    def _writer(self, source: str) -> EpisodeWriter:
        if source not in self._writers:
            root = self.dataset_root(source)
            writer = EpisodeWriter(
                root,
                self.layout,
                repo_id=f"{self.repo_prefix}_{source}",
                use_videos=self.use_videos,
                vcodec=self.vcodec,
                encoder_threads=1,  # one core at the learner's niceness, whatever the codec
                resume=True,
                parallel_encoding=False,
            )
            ids = {
                r["episode_id"]: r["episode_index"]
                for r in read_limbic_episodes(root)
                if "episode_id" in r
            }
            self._reconcile(source, writer, ids)
            self._writers[source], self._in_dataset[source] = writer, ids
        return self._writers[source]

    def _reconcile(self, source: str, writer: EpisodeWriter, ids: dict[str, int]) -> None:
        """An episode LeRobot counted but whose id line is missing (crash inside save_episode)."""
        if writer.total_episodes == len(ids):
            return
        intents = [j for j in _read_lines(self.journal_path) if j["source"] == source]
        last = intents[-1] if intents else None
        if writer.total_episodes == len(ids) + 1 and last and last["dataset_index"] == len(ids):
            ids[last["episode_id"]] = last["dataset_index"]
            _append_line(
                writer.root / "meta" / "limbic_episodes.jsonl",
                {
                    "episode_index": last["dataset_index"],
                    "episode_id": last["episode_id"],
                    "recovered": True,
                },
            )
            log.warning(
                "%s: episode %s was saved before a crash; recorded its id",
                writer.root,
                last["episode_id"],
            )
            return
        raise RuntimeError(
            f"{writer.root}: LeRobot holds {writer.total_episodes} episodes but limbic recorded "
            f"{len(ids)}; the dataset was changed outside the learner"
        )

    def _write_dataset(self, ep: EpisodeUpload, info: dict[str, Any]) -> int:
        writer = self._writer(ep.source)
        done = self._in_dataset[ep.source]
        if ep.episode_id in done:
            return done[ep.episode_id]  # saved before a crash, never indexed: do not save twice
        index = writer.total_episodes
        _append_line(
            self.journal_path,
            {"episode_id": ep.episode_id, "source": ep.source, "dataset_index": index},
        )
        views = self.layout.views
        for t in range(len(ep)):
            obs = Observation(
                timestamp_ns=int(ep.capture_ns[t]),
                images={v: ep.images[v][t] for v in views},
                state=ep.state[t],
                instruction=ep.instruction,
                episode_id=ep.episode_id,
                step=t,
            )
            last = t == len(ep) - 1
            writer.add_step(
                obs,
                ep.action[t],
                reward=float(ep.reward[t]),
                success=bool(ep.success[t]),
                done=last,
                intervention=bool(ep.intervention[t]),
                policy_version=int(ep.policy_version[t]),
            )
        writer.save_episode({"episode_id": ep.episode_id, **info})
        done[ep.episode_id] = index
        return index

    # ------------------------------------------------------------ store / load

    def add(
        self, ep: EpisodeUpload, replay: dict[str, np.ndarray], info: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Store ``ep`` (dataset, replay file, index line) unless already stored; return its record.

        ``replay`` holds the :data:`REPLAY_KEYS` arrays. Raises on a duplicate id: check
        ``episode_id in store`` first.
        """
        if ep.source not in SOURCES:
            raise ValueError(f"unknown partition {ep.source!r}; expected one of {SOURCES}")
        if ep.episode_id in self.ids:
            raise ValueError(f"episode {ep.episode_id!r} is already stored")
        info = {
            "actor": ep.actor,
            "seq": ep.seq,
            "seed": ep.seed,
            "split": ep.split,
            "success": bool(ep.success.any()),
            **(info or {}),
        }
        dataset_index = self._write_dataset(ep, info)
        folder = self.root / "replay" / ep.source
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{len(self.records):07d}.npz"
        tmp = folder / (name + ".tmp")
        with open(tmp, "wb") as f:
            keys = [*REPLAY_KEYS, *(k for k in OPTIONAL_REPLAY_KEYS if k in replay)]
            np.savez(f, instruction=np.array(ep.instruction), **{k: replay[k] for k in keys})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
        record = {
            "episode_id": ep.episode_id,
            "source": ep.source,
            "file": f"{ep.source}/{name}",
            "length": len(ep),
            "dataset_index": dataset_index,
            **info,
        }
        _append_line(self.index_path, record)
        self.records.append(record)
        self.ids.add(ep.episode_id)
        return record

    def replay_arrays(self, record: dict[str, Any]) -> dict[str, Any]:
        """The replay arrays of a committed episode (``instruction`` as a str)."""
        with np.load(self.root / "replay" / record["file"], allow_pickle=False) as z:
            out = {k: z[k] for k in REPLAY_KEYS}
            out.update({k: z[k] for k in OPTIONAL_REPLAY_KEYS if k in z.files})
            out["instruction"] = str(z["instruction"])
        return out

    def __iter__(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Committed episodes in the order they were stored, with their replay arrays."""
        for record in list(self.records):
            yield record, self.replay_arrays(record)

    def close(self) -> None:
        """Finalise every open dataset."""
        for writer in self._writers.values():
            writer.finalize()
        self._writers.clear()

    @staticmethod
    def wipe(root: str | Path) -> None:
        """Remove a store (a learner that never finished its set-up starts over)."""
        import shutil

        root = Path(root)
        for sub in ("replay", "datasets"):
            shutil.rmtree(root / sub, ignore_errors=True)
