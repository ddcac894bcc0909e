"""The LLM worker: windows from the bus -> llama.cpp -> ActionResults back to the ingest.

One `Llama` per worker, created and used by one thread only (the LLM thread). A receiver thread
drains the windows socket into one slot per stream holding only the newest window (an older one
still waiting is superseded: dropped and counted). The LLM thread serves streams round-robin, so
a busy stream cannot starve the others; a window older than `deadline_s` when its turn comes is
dropped as stale (counted). Reading is `lvlm.reader.Reader`: the instruction prefix's KV cache is
evaluated once and reused, action tokens are fed as ids, the label comes from the trie-constrained
decoding with its probability (pooled with the VST head's label probabilities where the bundle
has a pool), then the explanation (optional, rate-limited per stream).
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time

import zmq

from edge_runtime import messages
from edge_runtime.bus import client_socket
from edge_runtime.config import Config
from edge_runtime.messages import ActionResult, MessageError, TokenWindow

log = logging.getLogger(__name__)


def check_window(manifest: dict, w) -> TokenWindow:
    """A decoded message the bundle's language model can read, or MessageError: a window of T
    tokens inside the codebook, for a model with count tokens a count among them, and head
    probabilities (optional: without them the language model labels alone) one per label."""
    if not isinstance(w, TokenWindow):
        raise MessageError(f"expected a window, got {type(w).__name__}")
    if len(w.tokens) != manifest["vst"]["T"] or not all(0 <= t < manifest["vst"]["K"] for t in w.tokens):
        raise MessageError(f"window of {len(w.tokens)} tokens outside the bundle's T/K")
    counts = manifest["lvlm"].get("counts", 0)
    if counts and not (w.count is not None and 1 <= w.count <= counts):
        raise MessageError(f"window count {w.count} outside the bundle's count tokens 1..{counts}")
    if w.provisional_probs is not None and (
        len(w.provisional_probs) != len(manifest["labels"]) or not all(0.0 <= p <= 1.0 for p in w.provisional_probs)
    ):
        raise MessageError(
            f"window of {len(w.provisional_probs)} head probabilities, not one in [0, 1] per bundle label"
        )
    return w


class LLMWorker:
    def __init__(
        self,
        cfg: Config,
        bundle: str,
        manifest: dict,
        bundle_id: str,
        stop: threading.Event,
        context: zmq.Context | None = None,
        name: str | None = None,
    ):
        self.cfg, self.bundle, self.manifest, self.bundle_id, self.stop = cfg, bundle, manifest, bundle_id, stop
        self.context = context or zmq.Context.instance()
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        # (stream, track) -> its windows waiting: a live stream's newest only, a file's every one
        self.slots: dict[tuple, collections.deque] = {}
        self.order: list[tuple] = []  # round-robin order of the (stream, track) pairs seen
        self.turn = 0
        self.cond = threading.Condition()
        self.counters = {"received": 0, "read": 0, "stale": 0, "superseded": 0, "bad_messages": 0, "failed": 0}
        self.ready = threading.Event()
        self.error: str | None = None
        self.last_explained: dict[str, float] = {}
        self.stream_cfg = {s.id: s for s in cfg.streams}
        self.threads: list[threading.Thread] = []

    def start(self) -> LLMWorker:
        for fn, name in ((self._receive_loop, "recv"), (self._llm_loop, "llm")):
            t = threading.Thread(target=fn, name=f"worker-{name}", daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def close(self, timeout: float = 3.0) -> None:
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    @property
    def queue_depth(self) -> int:
        with self.cond:
            return sum(len(q) for q in self.slots.values())

    # ---- receiver -----------------------------------------------------------------------------
    def _receive_loop(self) -> None:
        s = client_socket(self.context, zmq.PULL, self.cfg.bus.windows, self.cfg.bus, rcvhwm=self.cfg.bus.window_hwm)
        poller = zmq.Poller()
        poller.register(s, zmq.POLLIN)
        try:
            while not self.stop.is_set():
                if not dict(poller.poll(100)):
                    continue
                data = s.recv()
                try:
                    w = check_window(self.manifest, messages.decode(data))
                except MessageError as exc:
                    self.counters["bad_messages"] += 1
                    log.warning("rejected a message: %s", exc)
                    continue
                with self.cond:
                    self.counters["received"] += 1
                    key = (w.stream, w.track)
                    waiting = self.slots.get(key)
                    if waiting is None:
                        waiting = self.slots[key] = collections.deque()
                        if key not in self.order:
                            self.order.append(key)
                    elif waiting and not w.lossless:
                        self.counters["superseded"] += len(waiting)
                        waiting.clear()
                    waiting.append(w)
                    self.cond.notify()
        finally:
            s.close(0)

    def _next(self) -> TokenWindow | None:
        with self.cond:
            while not self.slots and not self.stop.is_set():
                self.cond.wait(0.1)
            if self.stop.is_set():
                return None
            if len(self.order) > 256:  # tracks come and go: forget those without a window waiting
                self.order, self.turn = [k for k in self.order if k in self.slots], 0
            for i in range(len(self.order)):
                key = self.order[(self.turn + i) % len(self.order)]
                if key in self.slots:
                    self.turn = (self.turn + i + 1) % len(self.order)
                    waiting = self.slots[key]
                    w = waiting.popleft()
                    if not waiting:
                        del self.slots[key]
                    return w
        return None

    def _explain_now(self, stream: str) -> bool:
        """The stream's own explain settings (from the same config the ingest reads), else the worker's."""
        sc = self.stream_cfg.get(stream)
        on = sc.explain if sc is not None and sc.explain is not None else self.cfg.llm.explain
        every = (
            sc.explain_interval_s
            if sc is not None and sc.explain_interval_s is not None
            else self.cfg.llm.explain_interval_s
        )
        return on and time.monotonic() - self.last_explained.get(stream, -1e18) >= every

    # ---- the model's thread -------------------------------------------------------------------
    def _open(self):
        from lvlm.reader import LlamaCppBackend, Reader

        lv, llm = self.manifest["lvlm"], self.cfg.llm
        backend = LlamaCppBackend.open(
            os.path.join(self.bundle, lv["file"]), threads=llm.threads, n_ctx=llm.n_ctx, n_gpu_layers=llm.n_gpu_layers
        )
        reader = Reader.for_bundle(backend, self.manifest, llm.explanation_tokens)
        reader.read([0] * self.manifest["vst"]["T"], explain=False, count=1)  # evaluates the instruction prefix once
        return reader

    def _llm_loop(self) -> None:
        try:
            reader = self._open()
        except Exception as exc:  # noqa: BLE001 - reported once, the service exits non-zero
            self.error = f"cannot load the language model: {exc}"
            log.error(self.error)
            self.stop.set()
            return
        out = client_socket(self.context, zmq.PUSH, self.cfg.bus.collect, self.cfg.bus, sndhwm=1000)
        self.ready.set()
        llm = self.cfg.llm
        try:
            while not self.stop.is_set():
                w = self._next()
                if w is None:
                    continue
                if not w.lossless and (time.time_ns() - w.sent_ns) / 1e9 > llm.deadline_s:
                    self.counters["stale"] += 1
                    continue
                explain = self._explain_now(w.stream)
                try:
                    r = reader.read(
                        w.tokens, explain=explain, exhaustive=False, count=w.count, head=w.provisional_probs
                    )
                except Exception as exc:  # noqa: BLE001 - one bad read must not end the worker
                    self.counters["failed"] += 1
                    log.error("[%s] window %d: %s", w.stream, w.window_seq, exc)
                    continue
                if r.explanation is not None:
                    self.last_explained[w.stream] = time.monotonic()
                since_tokens_ms = (time.time_ns() - w.sent_ns) / 1e6
                res = ActionResult(
                    stream=w.stream,
                    window_seq=w.window_seq,
                    t_start_ns=w.t_start_ns,
                    t_end_ns=w.t_end_ns,
                    tokens=w.tokens,
                    provisional_label=w.provisional_label,
                    provisional_score=w.provisional_score,
                    label=r.label,
                    probability=r.probability,
                    explanation=r.explanation,
                    capture_to_tokens_ms=w.capture_to_tokens_ms,
                    tokens_to_label_ms=since_tokens_ms - (r.explanation_s or 0) * 1000,
                    tokens_to_explanation_ms=since_tokens_ms if r.explanation_s is not None else None,
                    bundle=self.bundle_id,
                    worker=self.name,
                    count=w.count if reader.counts else None,
                    track=w.track,
                    pts_start_ns=w.pts_start_ns,
                    pts_end_ns=w.pts_end_ns,
                )
                self.counters["read"] += 1
                try:
                    out.send(messages.encode(res), zmq.NOBLOCK)
                except zmq.Again:
                    self.counters["failed"] += 1
        finally:
            out.close(0)
            reader.backend.llm.close()
