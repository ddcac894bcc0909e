"""RTSP soak: one `streams.Source` reads a test-pattern RTSP stream whose server (a separate
process) is stopped and restarted every minute. Reports the client's RSS over time, reconnect
times (server back -> first frame) and the frames lost during each outage; writes JSON and a PNG.

    python -m benchmarks.soak_rtsp --minutes 10 --restart-every 60 --down 2 --out bench/soak
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import threading
import time


def _serve(conn, port: int, fps: int) -> None:
    from streams.rtsp_server import RtspServer

    server = RtspServer(port=port)
    server.add_test_pattern("/soak", 320, 240, fps=fps)
    server.start()
    conn.send("up")
    while True:
        cmd = conn.recv()
        if cmd == "stop":
            server.stop()
        elif cmd == "start":
            server.start()
        elif cmd == "quit":
            server.stop()
            return
        conn.send(cmd)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def soak(minutes: float, restart_every: float, down: float, fps: int = 15) -> dict:
    from streams.pipeline import Conversion
    from streams.rtsp_server import free_port
    from streams.source import Source

    port = free_port()
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=_serve, args=(child, port, fps), daemon=True)
    proc.start()
    assert parent.recv() == "up"
    src = Source(
        f"rtsp://127.0.0.1:{port}/soak",
        Conversion(112, 112, fps),
        stall_timeout_s=1.0,
        connect_timeout_s=3.0,
        backoff_initial_s=0.25,
        backoff_max_s=2.0,
    )
    arrivals: list[float] = []
    stop = threading.Event()

    def consume():
        while not stop.is_set():
            f = src.read(0.1)
            if f is not None:
                arrivals.append(time.monotonic())

    src.start()
    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    t0 = time.monotonic()
    rss = []
    outages = []  # (stopped_at, restarted_at)
    next_restart = t0 + restart_every
    while time.monotonic() - t0 < minutes * 60:
        now = time.monotonic()
        rss.append((now - t0, rss_mib()))
        if now >= next_restart:
            parent.send("stop")
            parent.recv()
            stopped = time.monotonic()
            time.sleep(down)
            parent.send("start")
            parent.recv()
            outages.append((stopped, time.monotonic()))
            next_restart = stopped + restart_every
        time.sleep(1.0)
    stop.set()
    reader.join(2)
    stats = src.stats()
    src.stop()
    parent.send("quit")
    proc.join(5)
    reconnect_s, lost = [], []
    for stopped, restarted in outages:
        after = [t for t in arrivals if t > restarted]
        before = [t for t in arrivals if t <= stopped]
        if not after or not before:
            continue
        reconnect_s.append(after[0] - restarted)
        gap = after[0] - before[-1]
        lost.append(max(0, round(gap * fps) - 1))
    return {
        "minutes": minutes,
        "restart_every_s": restart_every,
        "server_down_s": down,
        "fps": fps,
        "frames": len(arrivals),
        "restarts": len(outages),
        "reconnects_counted": stats.reconnects,
        "rss_start_mib": round(rss[min(5, len(rss) - 1)][1], 1),
        "rss_end_mib": round(rss[-1][1], 1),
        "reconnect_s_median": round(statistics.median(reconnect_s), 2) if reconnect_s else None,
        "reconnect_s_max": round(max(reconnect_s), 2) if reconnect_s else None,
        "frames_lost_per_outage_median": statistics.median(lost) if lost else None,
        "frames_lost_per_outage_max": max(lost) if lost else None,
        "frames_lost_beyond_downtime_median": (statistics.median(lost) - round(down * fps)) if lost else None,
        "rss_series": rss,
        "reconnect_s": reconnect_s,
        "frames_lost": lost,
    }


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    t, r = zip(*result["rss_series"])
    a.plot([x / 60 for x in t], r)
    a.set_xlabel("minutes")
    a.set_ylabel("client RSS (MiB)")
    a.set_title("RSS during the soak")
    b.bar(range(1, len(result["reconnect_s"]) + 1), result["reconnect_s"])
    b.set_xlabel("restart")
    b.set_ylabel("seconds from server back to first frame")
    b.set_title("reconnect times")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--restart-every", type=float, default=60)
    p.add_argument("--down", type=float, default=2.0, help="seconds the server stays down at each restart")
    p.add_argument("--out", default="bench/soak")
    args = p.parse_args(argv)
    result = soak(args.minutes, args.restart_every, args.down)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "soak_rtsp.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot(result, os.path.join(args.out, "soak_rtsp.png"))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
