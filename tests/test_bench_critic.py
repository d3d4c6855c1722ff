"""limbic-bench critic runs and ends with its key=value line (figures are not checked: no wall-clock tests)."""

from __future__ import annotations

import pytest

from limbic.launch.bench import main as bench_main


def test_bench_critic_prints_figures_for_each_batch(capsys: pytest.CaptureFixture[str]) -> None:
    rc = bench_main(
        ["critic", "--backbone", "small_cnn", "--size", "32", "--repeats", "1", "--batches", "1,2"]
    )
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    keys = [kv.split("=")[0] for kv in last.split()]
    assert keys == [f"{m}_b{b}_ms" for b in (1, 2) for m in ("backbone", "step", "forward")]
    assert all(float(kv.split("=")[1]) > 0 for kv in last.split())
