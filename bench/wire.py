"""``limbic-bench wire``: inference round trips and throughput beside a bare pyzmq echo.

One client measures p50/p99 round-trip latency (``InferenceClient.act``: encode, send,
server decode, batch, model, reply, decode) with two 224x224 views, raw and JPEG; a bare
pyzmq DEALER/ROUTER echo of the very same request bytes, on the same machine in the same
run, is the floor. Then 1, 4 and 8 client processes hammer the server for a fixed time.
The model is :class:`~limbic.runtime.small_models.FixedCostPolicy` with a known cost per
batch (or per sample), so its time can be subtracted. The last line is
``wire_overhead_ratio = (our raw p50 - model time) / (echo raw p50)`` where the model time is
the server's own p50 measurement around the model call (the known cost plus torch's call
overhead and the sleep's wake-up on this machine); the ratio against the bare known cost is
printed beside it.
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


# ---------------------------------------------------------------- processes


def _serve(conn: Any, cost_s: float, per: str, max_batch: int, max_wait_us: int) -> None:
    from limbic.runtime.backends import TorchRunner
    from limbic.runtime.servable import CachedInstructionEncoder, HashInstructionEncoder
    from limbic.runtime.server import InferenceServer, ServerConfig
    from limbic.runtime.small_models import FixedCostPolicy

    policy = FixedCostPolicy(VIEWS, HW, STATE_DIM, ACTION_DIM, CHUNK, 32, cost_s=cost_s, per=per)
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


def _echo(conn: Any, wait_s: float = 0.0) -> None:
    """A bare pyzmq ROUTER: echoes each frame, or (``wait_s`` > 0) waits that long and sends 256 bytes."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    conn.send(f"tcp://127.0.0.1:{port}")
    small = b"\0" * 256
    while not conn.poll(0):
        if sock.poll(100):
            frames = sock.recv_multipart(copy=False)
            if wait_s > 0:  # the same sleep-then-spin wait as FixedCostPolicy
                end = time.perf_counter() + wait_s
                time.sleep(max(0.0, wait_s - 2e-4))
                while time.perf_counter() < end:
                    pass
                frames = [frames[0], small]
            sock.send_multipart(frames, copy=False)
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


def _percentiles(samples_s: list[float]) -> tuple[float, float]:
    a = np.asarray(samples_s) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _latency(endpoint: str, fmt: str, n: int) -> tuple[list[float], list[Any]]:
    from limbic.runtime.client import InferenceClient

    obs = observation(0)
    rtts, timings = [], []
    with InferenceClient(
        endpoint, timeout_s=10, image_format=fmt, heartbeat_interval_s=0
    ) as client:
        for i in range(n + 50):
            obs.step = i
            t0 = time.perf_counter()
            reply = client.act(obs)
            rtt = time.perf_counter() - t0
            if i >= 50:  # warm-up: caches, allocator, TCP windows
                rtts.append(rtt)
                timings.append(reply.timings)
    return rtts, timings


def _echo_latency(endpoint: str, payload: bytes, n: int) -> list[float]:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    rtts = []
    try:
        for i in range(n + 50):
            t0 = time.perf_counter()
            sock.send(payload)
            if not sock.poll(10_000):
                raise TimeoutError(f"echo server at {endpoint} did not answer within 10 s")
            sock.recv()
            if i >= 50:
                rtts.append(time.perf_counter() - t0)
    finally:
        sock.close(0)
    return rtts


def _throughput(workers: list[Any], endpoint: str, fmt: str, clients: int, seconds: float) -> float:
    start_at = time.time() + 1.0
    for conn in workers[:clients]:
        conn.send((endpoint, fmt, start_at, seconds))
    total = 0
    for conn in workers[:clients]:
        if not conn.poll(seconds + 60):
            raise TimeoutError("a benchmark client did not report within its deadline")
        total += conn.recv()
    return total / seconds


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures; the last line is ``wire_overhead_ratio=...``."""
    from limbic.runtime.protocol import ActRequest, encode

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
        "--requests", type=int, default=400, help="round trips per latency measurement"
    )
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="duration of each throughput run"
    )
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-us", type=int, default=500)
    args = parser.parse_args(argv)

    ctx = mp.get_context("spawn")  # children must not inherit this process's ZeroMQ state
    load = os.getloadavg()[0]
    procs, conns = [], []
    try:
        server, server_conn = _start(
            ctx, _serve, args.model_ms / 1e3, args.per, args.max_batch, args.max_wait_us
        )
        echo, echo_conn = _start(ctx, _echo)
        waiter, waiter_conn = _start(ctx, _echo, args.model_ms / 1e3)
        procs += [server, echo, waiter]
        conns += [server_conn, echo_conn, waiter_conn]
        for conn, what in (
            (server_conn, "server"),
            (echo_conn, "echo"),
            (waiter_conn, "waiting echo"),
        ):
            if not conn.poll(120):
                raise TimeoutError(f"the {what} process did not start within 120 s")
        endpoint, echo_endpoint, waiter_endpoint = (
            server_conn.recv(),
            echo_conn.recv(),
            waiter_conn.recv(),
        )
        workers = []
        for k in range(8):
            proc, conn = _start(ctx, _hammer, k + 1)
            procs.append(proc)
            workers.append(conn)

        print(
            f"limbic-bench wire: 2 views {HW[0]}x{HW[1]}, state {STATE_DIM}, chunk {CHUNK}x{ACTION_DIM}; "
            f"model FixedCostPolicy {args.model_ms:g} ms per {args.per} (torch, CPU); "
            f"max_batch {args.max_batch}, max_wait_us {args.max_wait_us}; tcp loopback"
        )
        print(f"machine: {os.cpu_count()} CPUs, load average {load:.2f} at start")
        print(
            f"\nround trip, one client, {args.requests} requests      p50 ms   p99 ms   request bytes"
        )
        ratios, results = {}, {}
        for fmt in ("raw", "jpeg"):
            payload = encode(ActRequest(1, observation(0), 1000), image_format=fmt)
            rtts, timings = _latency(endpoint, fmt, args.requests)
            echo_rtts = _echo_latency(echo_endpoint, payload, args.requests)
            (p50, p99), (e50, e99) = _percentiles(rtts), _percentiles(echo_rtts)
            print(
                f"  limbic {fmt:4s}                              {p50:7.3f}  {p99:7.3f}   {len(payload):9d}"
            )
            print(
                f"  bare pyzmq echo, same bytes ({fmt:4s})      {e50:7.3f}  {e99:7.3f}   {len(payload):9d}"
            )
            med = {
                k: float(np.median([getattr(t, k) for t in timings]))
                for k in ("queue_us", "decode_us", "assemble_us", "infer_us", "encode_us")
            }
            print(
                "    server p50 us: "
                + ", ".join(f"{k.removesuffix('_us')} {v:.0f}" for k, v in med.items())
            )
            if fmt == "raw":
                w50, w99 = _percentiles(_echo_latency(waiter_endpoint, payload, args.requests))
                print(
                    f"  bare pyzmq, waits {args.model_ms:g} ms, small reply  {w50:7.3f}  {w99:7.3f}   {len(payload):9d}"
                )
                waiting_overhead_ms = w50 - args.model_ms
            ratios[fmt] = (p50 - med["infer_us"] / 1e3) / e50
            ratios[fmt + "_known"] = (p50 - args.model_ms) / e50
            results[fmt] = (p50, e50, med["infer_us"])

        print(
            f"\nthroughput, requests/s ({args.seconds:g} s each)   1 client  4 clients  8 clients   8 vs 1"
        )
        gains = {}
        for fmt in ("raw", "jpeg"):
            rates = [_throughput(workers, endpoint, fmt, n, args.seconds) for n in (1, 4, 8)]
            gains[fmt] = rates[2] / rates[0]
            print(
                f"  {fmt:4s}                                  {rates[0]:8.0f}  {rates[1]:9.0f}  {rates[2]:9.0f}   {gains[fmt]:5.2f}x"
            )
        for conn in workers:
            conn.send(None)

        infer_ms = results["raw"][2] / 1e3
        print(
            f"\nmodel time: known {args.model_ms:g} ms; measured by the server (infer p50) {infer_ms:.3f} ms"
        )
        beyond = (results["raw"][0] - args.model_ms - waiting_overhead_ms) * 1e3
        print(
            f"a bare pyzmq server that only waits {args.model_ms:g} ms pays {waiting_overhead_ms * 1e3:.0f} us over "
            f"it here (OS wake-ups); limbic raw pays {beyond:.0f} us more than that"
        )
        print(f"machine: load average {os.getloadavg()[0]:.2f} at end")
        p50_raw, echo_raw, _ = results["raw"]
        print(
            "(ratio jpeg includes JPEG encode on the client and decode on the server; "
            "ratio_vs_known_cost counts torch call overhead and the sleep's wake-up as wire)"
        )
        print(
            f"wire_overhead_ratio={ratios['raw']:.2f} "
            f"wire_overhead_ratio_jpeg={ratios['jpeg']:.2f} "
            f"wire_overhead_ratio_vs_known_cost={ratios['raw_known']:.2f} "
            f"p50_ms={p50_raw:.3f} echo_p50_ms={echo_raw:.3f} "
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
