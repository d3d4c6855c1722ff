"""``limbic-bench <what>``: reproducible speed and learning benchmarks.

Each benchmark is a module under ``limbic.bench`` with ``main(argv) -> int``; it prints its
figures beside a baseline measured in the same run and ends with one ``key=value`` line.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS: dict[str, tuple[str, str]] = {
    "sim": (
        "limbic.bench.sim",
        "env steps/s of every arm beside a bare MuJoCo loop of the same scene",
    ),
    "wire": (
        "limbic.bench.wire",
        "inference round-trip latency and throughput beside a bare pyzmq echo",
    ),
    "critic": ("limbic.bench.critic", "progress-critic cost per control step"),
    "learn": ("limbic.bench.learn", "sample efficiency: BC, sparse RL and shaped RL side by side"),
    "learner": ("limbic.bench.learner", "learner updates/s and batch-assembly share"),
    "ddp": ("limbic.bench.ddp", "data-parallel learner updates/s on N ranks beside one process"),
    "train": ("limbic.bench.train", "the asynchronous limbic-train job end to end"),
    "priority": (
        "limbic.bench.priority",
        "control loops' tick timing beside a busy learner: autogroup-aware priority vs os.nice",
    ),
    "cues": (
        "limbic.bench.cues",
        "what a pick-and-place policy's first chunk follows: the cube or the bowl",
    ),
}


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark by name; ``limbic-bench --help`` lists them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: limbic-bench <benchmark> [options]\n\nbenchmarks:")
        for name, (_, what) in BENCHMARKS.items():
            print(f"  {name:8s} {what}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(
            f"limbic-bench: unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    module_name = BENCHMARKS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            print(
                f"limbic-bench: benchmark {name!r} is not built yet ({module_name})",
                file=sys.stderr,
            )
            return 2
        raise
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
