"""Reading LeRobotDataset v3.0 folders back into EpisodeArrays, with real datasets written to disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic_episodes import make_episodes, write_dataset

from limbic.data.reader import load_episodes, load_many, parse_split


@pytest.fixture(scope="module")
def toy() -> list:
    return make_episodes(3, seed=0, hw=32, fail_fraction=0.34)


def test_image_dataset_round_trips_exactly(toy: list, tmp_path: Path) -> None:
    write_dataset(toy, tmp_path / "ds", use_videos=False)
    episodes = load_episodes(tmp_path / "ds")
    assert [e.episode_index for e in episodes] == [0, 1, 2]
    for got, want in zip(episodes, toy, strict=True):
        assert got.instruction == want.instruction
        assert sorted(got.images) == ["front", "wrist"]
        for view in got.images:
            assert got.images[view].dtype == np.uint8
            np.testing.assert_array_equal(got.images[view], want.images[view])
        np.testing.assert_allclose(got.state, want.state)
        np.testing.assert_array_equal(got.success, want.success)
        np.testing.assert_array_equal(got.done, want.done)
        assert got.succeeded == want.succeeded
        np.testing.assert_array_equal(got.metadata["policy_version"], 3)
        assert got.metadata["capture_time_ns"][1] - got.metadata["capture_time_ns"][0] == 10**8
        assert "progress" not in got.metadata


def test_video_dataset_decodes_close_to_the_frames(toy: list, tmp_path: Path) -> None:
    write_dataset(toy[:1], tmp_path / "ds", use_videos=True)
    (episode,) = load_episodes(tmp_path / "ds", views=["front"])
    assert list(episode.images) == ["front"]
    frames = episode.images["front"]
    assert frames.shape == toy[0].images["front"].shape and frames.dtype == np.uint8
    assert np.abs(frames.astype(int) - toy[0].images["front"]).mean() < 12  # lossy codec


def test_splits_progress_and_errors(toy: list, tmp_path: Path) -> None:
    write_dataset(toy, tmp_path / "ds", splits={"train": "0:2", "test": "2:3"}, with_progress=True)
    (held_out,) = load_episodes(tmp_path / "ds", split="test")
    assert held_out.episode_index == 2 and not held_out.succeeded
    np.testing.assert_allclose(
        held_out.metadata["progress"], toy[2].metadata["progress"], atol=1e-6
    )
    assert [e.episode_index for e in load_episodes(tmp_path / "ds", episodes=[1])] == [1]
    assert len(load_many([tmp_path / "ds", tmp_path / "ds"], split="train")) == 4
    with pytest.raises(ValueError, match=r"split 'val': not in .* available: \['test', 'train'\]"):
        load_episodes(tmp_path / "ds", split="val")
    with pytest.raises(ValueError, match=r"views \['top'\]"):
        load_episodes(tmp_path / "ds", views=["top"])
    with pytest.raises(FileNotFoundError, match="meta/info.json"):
        load_episodes(tmp_path / "nothing")
    assert parse_split("0:2,5:7") == [0, 1, 5, 6]
    with pytest.raises(ValueError, match="start:stop"):
        parse_split("0-2")
