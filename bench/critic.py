"""``limbic-bench critic``: what the progress critic costs per control step on this machine.

Measured in one run, median over repeats, at batch 1 (one arm) and batch 32 (32 arms served
together), two views of 128×128 by default:

* ``backbone``: the bare vision backbone on the new observation's views (the baseline: the
  critic can never be cheaper than seeing the frame);
* ``step``: what a control loop pays per tick — encode the new observation once, then the
  incremental (previous → new), forward (first → new) and backward (goal → new) pairs and
  the done head on cached tokens;
* ``forward``: a cold ``ProgressCritic.forward`` that encodes both observations.

The control tick is 100 ms (10 Hz); the policy needs the rest.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from limbic.critic.model import CriticModelConfig, ProgressCritic
from limbic.runtime.distributed import DEVICES, pick_device, synchronize

TICK_MS = 100.0


def _interleaved_median_ms(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 2,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Median ms of each function, timed in turn within every repeat so load drifts hit all alike.

    ``sync`` waits for queued device work (CUDA runs asynchronously) before each clock read.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


@torch.no_grad()
def measure(critic: ProgressCritic, batch: int, repeats: int) -> dict[str, float]:
    """Median milliseconds of the backbone, a streaming step and a cold forward at ``batch``."""
    v = len(critic.views)
    h, w = critic.image_hw
    device = next(critic.parameters()).device
    g = torch.Generator().manual_seed(0)

    def frames() -> torch.Tensor:
        return torch.randint(0, 256, (batch, v, h, w, 3), dtype=torch.uint8, generator=g).to(device)

    new_obs, old_obs = frames(), frames()
    lang = torch.nn.functional.normalize(torch.randn(batch, critic.lang_dim, generator=g), dim=-1)
    lang = lang.to(device)
    cached = {name: critic.encode_frames(frames()) for name in ("previous", "first", "goal")}
    flat = new_obs.reshape(batch * v, h, w, 3)

    def step() -> None:
        tokens = critic.encode_frames(new_obs)
        lang_d = critic.embed_lang(lang)
        z_new = critic.embed_frame(tokens, lang_d)
        for name in ("previous", "first", "goal"):
            critic.pair_head(critic.embed_frame(cached[name], lang_d), z_new, lang_d)
        critic.done_head(z_new, lang_d)

    return _interleaved_median_ms(
        {
            "backbone": lambda: critic.backbone(flat),
            "step": step,
            "forward": lambda: critic(old_obs, new_obs, lang),
        },
        repeats,
        sync=lambda: synchronize(device),
    )


def main(argv: list[str] | None = None) -> int:
    """Print per-step critic cost at batch 1 and 32 beside the bare backbone; last line key=value."""
    parser = argparse.ArgumentParser(
        prog="limbic-bench critic", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--backbone",
        default=CriticModelConfig().backbone,
        help="backbone spec (default: the critic's default)",
    )
    parser.add_argument("--views", type=int, default=2, help="camera views per observation")
    parser.add_argument("--size", type=int, default=128, help="image height and width in pixels")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (the policy shares the CPU)"
    )
    parser.add_argument(
        "--repeats", type=int, default=10, help="timed repeats per figure (median reported)"
    )
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=DEVICES,
        help="where the critic runs (auto: CUDA if there)",
    )
    args = parser.parse_args(argv)
    device = pick_device(args.device)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    views = [f"view{i}" for i in range(args.views)]
    critic = (
        ProgressCritic(
            CriticModelConfig(backbone=args.backbone, views=views, image_hw=[args.size, args.size])
        )
        .eval()
        .to(device)
    )
    print(
        f"critic: backbone={args.backbone} views={args.views} image={args.size}x{args.size} "
        f"threads={args.threads} device={device} tokens={critic.num_tokens}x{critic.backbone.feature_dim}"
    )
    print(
        f"{'batch':>5} {'backbone ms':>12} {'step ms':>9} {'forward ms':>11} {'step ms/arm':>12} {'tick share/arm':>15}"
    )
    figures: dict[str, float] = {}
    for batch in (int(b) for b in args.batches.split(",")):
        m = measure(critic, batch, args.repeats)
        per_arm = m["step"] / batch
        print(
            f"{batch:>5} {m['backbone']:>12.1f} {m['step']:>9.1f} {m['forward']:>11.1f} {per_arm:>12.2f} {per_arm / TICK_MS:>14.1%}"
        )
        for k, v in m.items():
            figures[f"{k}_b{batch}_ms"] = v
    head_b1 = figures.get("step_b1_ms", float("nan")) - figures.get("backbone_b1_ms", float("nan"))
    print(
        f"head on cached tokens (step - backbone, batch 1): {head_b1:.1f} ms; tick budget {TICK_MS:.0f} ms"
    )
    print(" ".join(f"{k}={v:.2f}" for k, v in figures.items()))
    return 0
