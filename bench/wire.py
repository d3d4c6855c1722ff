"""``limbic-bench wire``: inference round trips and throughput beside bare pyzmq floors.

One client measures p50/p99 round-trip latency (``InferenceClient.act``: encode, send,
server decode, batch, model, reply, decode) with two 224x224 views, raw and JPEG. Beside it,
on the same machine in the same run, a bare pyzmq DEALER/ROUTER pair carries the very same
frames (our request's frames out, frames of our reply's sizes back): the **echo** answers at
once, the **waiting floor** first waits the model's known cost the way the model does. Then
1, 4 and 8 client processes hammer the server for a fixed time.

The model is :class:`~limbic.runtime.small_models.FixedCostPolicy`, whose forward takes the
known cost exactly (it computes its output, then waits out the rest of the cost). The last
line starts with ``wire_overhead_ratio = (our raw p50 - known cost) / (echo raw p50)``:
everything a round trip spends beyond the model, in units of the bare transport of the same
bytes. The waiting floor's ratio by the same formula is printed beside it: what a server
that does nothing but wait the same cost scores on this machine (its wake-ups after the
wait included), the lowest any server can get here.

Measurements alternate limbic, echo and floor in rounds; each figure is the median of the
rounds' p50s (p99 over all samples), so a load change on a shared machine hits all alike.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np
import zmq

VIEWS = ("front", "wrist")
HW = (224, 224)
STATE_DIM, ACTION_DIM, CHUNK = 6, 7, 4
WARMUP = 50


def scene(seed: int) -> dict[str, np.ndarray]:
    """Two smooth synthetic camera frames with objects and sensor noise (JPEG-realistic)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : HW[0], 0 : HW[1]].astype(np.float32)
    frames = {}
    for k, view in enumerate(VIEWS):
        img = np.stack([x * 0.5 + 40 * k, y * 0.6 + 30, (x + y) * 0.25 + 60], axis=-1)
        for _ in range(4):
            y0, x0 = rng.integers(0, HW[0] - 50, 2)
            img[y0 : y0 + 40, x0 : x0 + 40] = rng.integers(0, 256, 3)
        img += rng.normal(0, 3, img.shape)
        frames[view] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def observation(seed: int, step: int = 0) -> Any:
    """A benchmark observation."""
    from limbic.contracts import Observation

    state = np.random.default_rng(seed).standard_normal(STATE_DIM).astype(np.float32)
    return Observation(
        time.time_ns(), scene(seed), state, "put the red cube in the bowl", f"bench-{seed}", step
    )


def wire_frames(fmt: str) -> tuple[list[bytes], list[bytes]]:
    """The frames of a benchmark request in ``fmt`` and of its reply, as our stack sends them."""
    from limbic.runtime.protocol import ActReply, ActRequest, Timings, encode, encode_timed

    request = encode(ActRequest(1, observation(0), 1000), image_format=fmt)
    reply = encode_timed(ActReply(1, np.zeros((CHUNK, ACTION_DIM), np.float32), 0, Timings()))
    return [bytes(f) for f in request], [bytes(f) for f in reply]


# ---------------------------------------------------------------- processes


def _serve(conn: Any, cost_s: float, per: str, wait: str, max_batch: int, max_wait_us: int) -> None:
    from limbic.runtime.backends import TorchRunner
    from limbic.runtime.servable import CachedInstructionEncoder, HashInstructionEncoder
    from limbic.runtime.server import InferenceServer, ServerConfig
    from limbic.runtime.small_models import FixedCostPolicy

    policy = FixedCostPolicy(
        VIEWS, HW, STATE_DIM, ACTION_DIM, CHUNK, 32, cost_s=cost_s, per=per, wait=wait
    )
    runner = TorchRunner(
        policy, "policy", CachedInstructionEncoder(HashInstructionEncoder(32)), device="cpu"
    )
    cfg = ServerConfig(
        endpoint="tcp://127.0.0.1:*",
        weights_endpoint="",
        max_batch=max_batch,
        max_wait_us=max_wait_us,
    )
    with InferenceServer(cfg, runner) as server:
        conn.send(server.endpoint)
        conn.recv()  # any message: stop


def _bare(conn: Any, reply: list[bytes], cost_s: float, wait: str) -> None:
    """A bare pyzmq ROUTER: answers each request with ``reply``'s frames, after ``cost_s`` if > 0."""
    from limbic.runtime.small_models import wait_until

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    conn.send(f"tcp://127.0.0.1:{port}")
    while not conn.poll(0):
        if sock.poll(100):
            frames = sock.recv_multipart(copy=False)
            if cost_s > 0:
                wait_until(time.perf_counter() + cost_s, wait)
            sock.send_multipart([frames[0], *reply])
    sock.close(0)
    ctx.term()


def _hammer(conn: Any, seed: int) -> None:
    """A client process: on ``(endpoint, fmt, start_at, seconds)`` it acts in a loop and reports its count."""
    from limbic.runtime.client import InferenceClient

    obs = observation(seed)
    while True:
        job = conn.recv()
        if job is None:
            return
        endpoint, fmt, start_at, seconds = job
        with InferenceClient(
            endpoint, timeout_s=10, image_format=fmt, heartbeat_interval_s=0
        ) as client:
            client.act(obs)  # connect and warm up before the clock starts
            time.sleep(max(0.0, start_at - time.time()))
            end, count = time.time() + seconds, 0
            while time.time() < end:
                obs.step += 1
                client.act(obs)
                count += 1
        conn.send(count)


def _start(ctx: Any, target: Any, *args: Any) -> tuple[Any, Any]:
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, *args), daemon=True)
    proc.start()
    return proc, parent


# ---------------------------------------------------------------- measurements


class Client:
    """One limbic client, connected once, measuring round trips."""

    def __init__(self, endpoint: str, fmt: str):
        from limbic.runtime.client import InferenceClient

        self.obs = observation(0)
        self.client = InferenceClient(
            endpoint, timeout_s=10, image_format=fmt, heartbeat_interval_s=0
        )
        self.client.connect()

    def round_trips(self, n: int) -> tuple[list[float], list[Any]]:
        """``n`` round trips after a warm-up (caches, allocator, TCP windows): seconds and timings."""
        rtts, timings = [], []
        for i in range(n + WARMUP):
            self.obs.step += 1
            t0 = time.perf_counter()
            reply = self.client.act(self.obs)
            rtt = time.perf_counter() - t0
            if i >= WARMUP:
                rtts.append(rtt)
                timings.append(reply.timings)
        return rtts, timings

    def close(self) -> None:
        """Close the client."""
        self.client.close()


class BareClient:
    """A bare pyzmq DEALER sending the same frames as our client, frame by frame."""

    def __init__(self, endpoint: str, frames: list[bytes]):
        self.frames = frames
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def round_trips(self, n: int) -> list[float]:
        """``n`` round trips after a warm-up, in seconds."""
        sock, more, last = self.sock, self.frames[:-1], self.frames[-1]
        rtts = []
        for i in range(n + WARMUP):
            t0 = time.perf_counter()
            for frame in more:
                sock.send(frame, zmq.SNDMORE)
            sock.send(last)
            if not sock.poll(10_000):
                raise TimeoutError("the bare pyzmq server did not answer within 10 s")
            sock.recv_multipart()
            if i >= WARMUP:
                rtts.append(time.perf_counter() - t0)
        return rtts

    def close(self) -> None:
        """Close the socket."""
        self.sock.close(0)


def _ms(samples_s: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples_s) * 1e3, q))


class Figure:
    """Round trips gathered over rounds: median of the rounds' p50s, p99 of all samples."""

    def __init__(self) -> None:
        self.p50s: list[float] = []
        self.samples: list[float] = []

    def add(self, rtts: list[float]) -> None:
        """One round's samples."""
        self.p50s.append(_ms(rtts, 50))
        self.samples += rtts

    @property
    def p50(self) -> float:
        """Median over rounds of each round's p50, in ms."""
        return float(np.median(self.p50s))

    @property
    def p99(self) -> float:
        """p99 of all samples, in ms."""
        return _ms(self.samples, 99)


def _throughput(workers: list[Any], endpoint: str, fmt: str, clients: int, seconds: float) -> float:
    start_at = time.time() + 0.5
    for conn in workers[:clients]:
        conn.send((endpoint, fmt, start_at, seconds))
    total = 0
    for conn in workers[:clients]:
        if not conn.poll(seconds + 60):
            raise TimeoutError("a benchmark client did not report within its deadline")
        total += conn.recv()
    return total / seconds


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures; the last line starts with ``wire_overhead_ratio=``."""
    parser = argparse.ArgumentParser(prog="limbic-bench wire", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-ms", type=float, default=5.0, help="known model cost in ms (default 5)"
    )
    parser.add_argument(
        "--per",
        choices=("batch", "sample"),
        default="batch",
        help="model cost per batch or per sample",
    )
    parser.add_argument(
        "--wait",
        choices=("sleep", "spin"),  # small_models.WAITS; not imported: this process needs no torch
        default="sleep",
        help="how the model (and the waiting floor) spends its cost: sleep leaves the core idle "
        "but for its last millisecond (a GPU model with a blocking sync); spin keeps it busy",
    )
    parser.add_argument(
        "--requests", type=int, default=200, help="round trips per round and measurement"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of each latency and throughput measurement"
    )
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="duration of each throughput run"
    )
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-us", type=int, default=500)
    args = parser.parse_args(argv)
    cost_s = args.model_ms / 1e3

    ctx = mp.get_context("spawn")  # children must not inherit this process's ZeroMQ state
    load = os.getloadavg()[0]
    procs, conns = [], []
    frames = {fmt: wire_frames(fmt) for fmt in ("raw", "jpeg")}
    reply = frames["raw"][1]
    try:
        starts = {
            "server": (_serve, cost_s, args.per, args.wait, args.max_batch, args.max_wait_us),
            "echo": (_bare, reply, 0.0, args.wait),
            "waiting floor": (_bare, reply, cost_s, args.wait),
        }
        endpoints = {}
        for target, *rest in starts.values():
            proc, conn = _start(ctx, target, *rest)
            procs.append(proc)
            conns.append(conn)
        for what, conn in zip(starts, conns, strict=True):
            if not conn.poll(120):
                raise TimeoutError(f"the {what} process did not start within 120 s")
            endpoints[what] = conn.recv()
        workers = []
        for k in range(8):
            proc, conn = _start(ctx, _hammer, k + 1)
            procs.append(proc)
            workers.append(conn)

        print(
            f"limbic-bench wire: 2 views {HW[0]}x{HW[1]}, state {STATE_DIM}, chunk {CHUNK}x{ACTION_DIM}; "
            f"model FixedCostPolicy {args.model_ms:g} ms per {args.per}, waiting by {args.wait} "
            f"(torch, CPU); max_batch {args.max_batch}, max_wait_us {args.max_wait_us}; tcp loopback"
        )
        print(f"machine: {os.cpu_count()} CPUs, load average {load:.2f} at start")
        print(
            f"\nround trip, one client: median of {args.rounds} rounds' p50 "
            f"({args.requests} requests each), p99 of all   p50 ms   p99 ms   frames: bytes"
        )
        results = {}
        for fmt in ("raw", "jpeg"):
            request, reply = frames[fmt]
            sizes = (
                "+".join(str(len(f)) for f in request) + " / " + "+".join(map(str, map(len, reply)))
            )
            ours = Client(endpoints["server"], fmt)
            echo = BareClient(endpoints["echo"], request)
            floor = BareClient(endpoints["waiting floor"], request) if fmt == "raw" else None
            figures = {"ours": Figure(), "echo": Figure(), "floor": Figure()}
            timings = []
            try:
                for _ in range(args.rounds):
                    rtts, round_timings = ours.round_trips(args.requests)
                    figures["ours"].add(rtts)
                    timings += round_timings
                    figures["echo"].add(echo.round_trips(args.requests))
                    if floor is not None:
                        figures["floor"].add(floor.round_trips(args.requests))
            finally:
                for c in (ours, echo, floor):
                    if c is not None:
                        c.close()
            rows = [
                ("limbic " + fmt, figures["ours"]),
                (f"bare pyzmq echo ({fmt})", figures["echo"]),
            ]
            if floor is not None:
                rows.append(
                    (f"bare pyzmq, waits {args.model_ms:g} ms first ({fmt})", figures["floor"])
                )
            for name, fig in rows:
                print(f"  {name:44s} {fig.p50:8.3f} {fig.p99:8.3f}   {sizes}")
            med = {
                k: float(np.median([getattr(t, k) for t in timings]))
                for k in ("queue_us", "decode_us", "assemble_us", "infer_us", "encode_us")
            }
            print(
                "    server p50 us: "
                + ", ".join(f"{k.removesuffix('_us')} {v:.0f}" for k, v in med.items())
            )
            results[fmt] = (figures, med)

        print(
            f"\nthroughput, requests/s, median of {args.rounds} rounds of {args.seconds:g} s"
            "   1 client  4 clients  8 clients   8 vs 1"
        )
        gains = {}
        for fmt in ("raw", "jpeg"):
            runs = [
                [_throughput(workers, endpoints["server"], fmt, n, args.seconds) for n in (1, 4, 8)]
                for _ in range(args.rounds)
            ]
            rates = [float(np.median(column)) for column in zip(*runs, strict=True)]
            gains[fmt] = rates[2] / rates[0]
            print(
                f"  {fmt:4s}                                                   {rates[0]:8.0f}  {rates[1]:9.0f}  {rates[2]:9.0f}   {gains[fmt]:5.2f}x"
            )
        for conn in workers:
            conn.send(None)

        figures, med = results["raw"]
        p50, e50, f50 = figures["ours"].p50, figures["echo"].p50, figures["floor"].p50
        infer_ms = med["infer_us"] / 1e3
        ratio = (p50 - args.model_ms) / e50
        ratio_jpeg = (results["jpeg"][0]["ours"].p50 - args.model_ms) / results["jpeg"][0][
            "echo"
        ].p50
        floor_ratio = (f50 - args.model_ms) / e50
        print(
            f"\nmodel time subtracted: the known cost, {args.model_ms:g} ms (the forward returns once "
            f"that long has passed since it began; the server's infer p50 around the whole runner "
            f"call, torch and a late wake-up included, is {infer_ms:.3f} ms)"
        )
        print(
            f"a bare pyzmq server that waits {args.model_ms:g} ms pays {(f50 - args.model_ms - e50) * 1e3:.0f} us "
            f"over echo + cost here (wake-ups after the wait); limbic raw pays {(p50 - f50) * 1e3:.0f} us "
            "more than that bare server"
        )
        print(f"machine: load average {os.getloadavg()[0]:.2f} at end")
        print(
            "(ratio = (p50 - known cost) / echo p50; floor_ratio: the same for the bare waiting "
            "server; jpeg includes JPEG encode on the client and decode on the server)"
        )
        print(
            f"wire_overhead_ratio={ratio:.2f} wire_overhead_ratio_jpeg={ratio_jpeg:.2f} "
            f"floor_ratio={floor_ratio:.2f} p50_ms={p50:.3f} echo_p50_ms={e50:.3f} "
            f"floor_p50_ms={f50:.3f} infer_p50_ms={infer_ms:.3f} "
            f"batching_gain_8v1={gains['raw']:.2f} batching_gain_8v1_jpeg={gains['jpeg']:.2f}"
        )
        return 0
    finally:
        for conn in conns:
            conn.send("stop")
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


if __name__ == "__main__":
    raise SystemExit(main())
