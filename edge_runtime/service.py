"""Running the services: bundle verification, signals, sd_notify and the supervision loop shared by
`lvlm-var run` (ingest + workers in one process over inproc://), `ingest` and `llm-worker`.

One stop event, set by SIGTERM/SIGINT; everything stops within 5 s. With NOTIFY_SOCKET set
(systemd Type=notify) the service reports READY=1 once serving, STATUS= lines, WATCHDOG=1 only
while frames flow (ingest) or the model thread is alive (worker), and STOPPING=1.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

import zmq

from edge_runtime.config import Config

log = logging.getLogger(__name__)
HEALTH_EVERY_S = 5.0  # Health messages on the results PUB (topic "_health")


class Notifier:
    """sd_notify without libsystemd: datagrams to $NOTIFY_SOCKET (a no-op when it is unset)."""

    def __init__(self, path: str | None = None):
        self.path = path if path is not None else os.environ.get("NOTIFY_SOCKET")
        usec = os.environ.get("WATCHDOG_USEC")
        self.watchdog_s = int(usec) / 1e6 if usec and usec.isdigit() else None
        self.sock = None
        self._status, self._status_t, self._watchdog_t = None, 0.0, 0.0
        if self.path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.setblocking(False)  # a receiver that does not read must never stall the service
            self.addr = "\0" + self.path[1:] if self.path.startswith("@") else self.path

    def send(self, text: str) -> None:
        if self.sock is not None:
            try:
                self.sock.sendto(text.encode(), self.addr)
            except OSError as exc:  # includes a full receive queue (EAGAIN)
                log.debug("sd_notify: %s", exc)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        """Sent when it changes (at most every 2 s), and at least every 30 s."""
        age = time.monotonic() - self._status_t
        if (status != self._status and age >= 2) or age > 30:
            self._status, self._status_t = status, time.monotonic()
            self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        """Pinged at half the watchdog interval (only when systemd asked for one)."""
        if self.watchdog_s is not None and time.monotonic() - self._watchdog_t >= self.watchdog_s / 2:
            self._watchdog_t = time.monotonic()
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")


def open_bundle(path: str) -> tuple[dict, str]:
    """(manifest, bundle id) of a bundle that verifies; BundleError otherwise."""
    from export.bundle import bundle_id, check_bundle, read_manifest

    check_bundle(path)
    m = read_manifest(path)
    return m, bundle_id(m)


def install_signals(stop: threading.Event) -> dict:
    """SIGTERM and SIGINT set `stop` (from the main thread only); returns the handlers they
    replace, for `serve` to put back when it returns (so that a caller running several services
    in turn, as `bench` does, can still be interrupted between them)."""

    def handler(signum, _frame):
        log.info("signal %d: stopping", signum)
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in old:
        signal.signal(s, handler)
    return old


def serve(
    cfg: Config,
    ingest: bool = True,
    workers: int | None = None,
    until_done: bool = False,
    duration_s: float | None = None,
    stop: threading.Event | None = None,
    notifier: Notifier | None = None,
    on_tick=None,
    extra_sinks: list | None = None,
) -> dict:
    """Run the ingest and/or LLM workers until stopped (or, with until_done, until every source has
    ended and the last results are in). Returns final counters."""
    from edge_runtime.sinks import build_sinks

    stop = stop or threading.Event()
    notifier = notifier or Notifier()
    manifest, bid = open_bundle(cfg.bundle)
    context = zmq.Context()
    replaced = install_signals(stop)
    n_workers = cfg.llm.workers if workers is None else workers
    hub = sink = metrics = None
    pool = []
    try:
        if ingest:
            from edge_runtime.ingest import Ingest

            holder: dict = {}
            sink, metrics = build_sinks(
                cfg.sinks,
                health=lambda: holder["ingest"].healthy() if "ingest" in holder else (True, "starting"),
                fps=lambda sid: holder["ingest"].streams[sid].fps if "ingest" in holder else None,
                extra=extra_sinks,
                name=cfg.name,
            )
            hub = holder["ingest"] = Ingest(cfg, cfg.bundle, manifest, bid, sink, stop, context)
        if n_workers:
            from edge_runtime.worker import LLMWorker

            pool = [
                LLMWorker(cfg, cfg.bundle, manifest, bid, stop, context, name=f"{cfg.name}-llm{i}")
                for i in range(n_workers)
            ]
            for w in pool:
                w.start()
            for w in pool:  # the ingest starts once the model is loaded, so the first windows are read
                while not w.ready.is_set() and not stop.is_set():
                    w.ready.wait(0.1)
            errors = [w.error for w in pool if w.error]
            if errors:
                raise RuntimeError(errors[0])
        if hub is not None:
            hub.start()
        what = " + ".join(
            x
            for x in (
                f"ingest of {len(cfg.streams)} stream(s)" if ingest else "",
                f"{n_workers} LLM worker(s)" if n_workers else "",
            )
            if x
        )
        notifier.ready(f"{what}, bundle {bid}")
        log.info("serving: %s (bundle %s)", what, bid)
        t0 = time.monotonic()
        last_results, quiet_since, last_health = -1, time.monotonic(), 0.0
        while not stop.wait(0.25):
            alive = (
                hub.frames_flowing.is_set() if hub is not None else all(t.is_alive() for w in pool for t in w.threads)
            )
            if alive:
                notifier.watchdog()
            if hub is not None:
                stats = hub.stats()
                if metrics is not None:
                    for sid, s in stats.items():
                        metrics.stream(
                            sid, s["fps"], s["frames"], s["drops"], s["reconnects"], s if "people" in s else None
                        )
                    metrics.llm_dropped.labels("no_worker").set(hub.hub.counters["windows_dropped_no_worker"])
                    metrics.bad_messages.set(hub.counters["bad_messages"])
                notifier.status(", ".join(f"{sid} {s['state']} {s['fps']:.1f} fps" for sid, s in stats.items()))
                if time.monotonic() - last_health >= HEALTH_EVERY_S:
                    last_health = time.monotonic()
                    hub.publish_health(cfg.name, stats)
            if metrics is not None and pool:
                metrics.llm_dropped.labels("stale").set(sum(w.counters["stale"] for w in pool))
                metrics.llm_dropped.labels("superseded").set(sum(w.counters["superseded"] for w in pool))
                for w in pool:
                    metrics.llm_queue.labels(w.name).set(w.queue_depth)
            if on_tick is not None:
                on_tick(hub, pool)
            if any(w.error for w in pool):
                break
            if duration_s is not None and time.monotonic() - t0 >= duration_s:
                break
            if until_done and hub is not None and hub.done:
                # the sources have ended: wait until the workers have answered the last windows
                results = hub.counters["results"]
                busy = any(w.queue_depth for w in pool)
                if results != last_results or busy:
                    last_results, quiet_since = results, time.monotonic()
                elif time.monotonic() - quiet_since > (cfg.llm.deadline_s if pool else 0.5):
                    break
    finally:
        notifier.stopping()
        stop.set()
        for w in pool:
            w.close(timeout=2.0)
        if hub is not None:
            hub.close(timeout=2.0)
        if sink is not None:
            sink.close()
        context.destroy(linger=0)
        for s, h in replaced.items():
            signal.signal(s, h)
    out = {"bundle": bid}
    if hub is not None:
        out.update(streams=hub.stats(), bus=dict(hub.hub.counters), ingest=dict(hub.counters))
    if pool:
        out["workers"] = {w.name: dict(w.counters) for w in pool}
        errors = [w.error for w in pool if w.error]
        if errors:
            out["error"] = errors[0]
    return out
