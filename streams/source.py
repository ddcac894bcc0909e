"""`Source`: one video input (file, RTSP, V4L2, CSI, test pattern, raw pipeline) as a stream of `Frame`s.

A worker thread owns the GStreamer pipeline: it pulls samples from the appsink, converts them to
numpy (row stride handled), and hands them to the buffer policy (newest-frame for live sources,
lossless for files). It watches the bus and a no-frame watchdog (rtspsrc can stall without an
error), and reconnects live sources with exponential backoff and jitter. Files end at EOS with
every frame delivered; a file that cannot be decoded fails with one clear line.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Iterator

import numpy as np

from streams.buffers import LosslessBuffer, NewestFrameBuffer
from streams.errors import SourceError
from streams.frame import Frame
from streams.gst import init, parse_pipeline
from streams.health import Health, HealthSnapshot, State
from streams.pipeline import Conversion, check_available, describe, prefer_hardware_decoders
from streams.uri import SourceSpec, parse, redact

log = logging.getLogger(__name__)

PULL_TIMEOUT_NS = 50_000_000  # 50 ms: every loop waits with a timeout


class Source:
    def __init__(
        self,
        uri: str | SourceSpec,
        conversion: Conversion | None = None,
        stream_id: str | None = None,
        realtime: bool = False,
        connect_timeout_s: float = 10.0,
        stall_timeout_s: float = 5.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_reconnects: int | None = None,
        lossless_capacity: int = 8,
    ):
        self.spec = uri if isinstance(uri, SourceSpec) else parse(uri)
        self.conversion = conversion or Conversion()
        self.stream_id = stream_id or os.path.basename(self.spec.display()) or self.spec.kind
        self.realtime = realtime
        self.connect_timeout_s = connect_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.max_reconnects = max_reconnects
        self.buffer = NewestFrameBuffer() if self.spec.live else LosslessBuffer(lossless_capacity)
        self.health = Health()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq = 0
        self._rng = random.Random()

    # ---- public API -------------------------------------------------------------------------
    @property
    def description(self) -> str:
        return describe(self.spec, self.conversion, self.realtime)

    @property
    def state(self) -> State:
        return self.health.state

    def stats(self) -> HealthSnapshot:
        return self.health.snapshot(self.buffer.drops)

    def start(self) -> Source:
        """Validate what can be validated up front (raising SourceError), then start the thread."""
        init()
        check_available(self.spec, self.conversion)
        if self.spec.kind == "file":
            if not os.path.isfile(self.spec.location):
                raise SourceError(f"no such video file: {self.spec.location}")
            if not os.access(self.spec.location, os.R_OK):
                raise SourceError(f"video file not readable (permissions): {self.spec.location}")
        parse_pipeline(self.description)  # a bad pipeline:// text or a missing element fails here, not in the thread
        hw = prefer_hardware_decoders()
        log.info(
            "[%s] %s; pipeline: %s",
            self.stream_id,
            f"hardware decoders preferred: {', '.join(hw)}" if hw else "software decoding",
            self.description,
        )
        self._thread = threading.Thread(target=self._run, name=f"source-{self.stream_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.buffer.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> Source:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or None on timeout or once the source has ended and is drained."""
        return self.buffer.get(timeout)

    def frames(self, poll_s: float = 0.1) -> Iterator[Frame]:
        """Every frame until the source stops; raises SourceError (after the frames it produced)
        when it failed."""
        while True:
            frame = self.buffer.get(poll_s)
            if frame is not None:
                yield frame
                continue
            if self.health.state.final and len(self.buffer) == 0:
                break
            if self._thread is not None and not self._thread.is_alive() and len(self.buffer) == 0:
                break
        if self.health.state == State.FAILED:
            raise SourceError(self.health.last_error or f"{self.spec.display()}: source failed")

    # ---- worker thread -----------------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        try:
            while not self._stop.is_set():
                outcome, produced = self._session()
                if self._stop.is_set() or outcome == "stop":
                    break
                if outcome == "eos" and not self.spec.live:
                    break
                if outcome == "eos" and self.max_reconnects == 0:  # ended, and no reconnects were asked for
                    log.info("[%s] the stream ended (EOS); max_reconnects is 0, so it stays ended", self.stream_id)
                    break
                if outcome == "fatal":
                    self.health.to(State.FAILED)
                    return
                if not self.spec.live:  # a file that errors or stalls will not get better
                    self.health.to(State.FAILED)
                    return
                attempt = 0 if produced else attempt + 1
                if self.max_reconnects is not None and self.health.reconnects >= self.max_reconnects:
                    last = self.health.last_error or "no frames"
                    self.health.error(
                        f"{self.spec.display()}: gave up after {self.health.reconnects} reconnects; "
                        f"last error: {last.removeprefix(self.spec.display() + ': ')}"
                    )
                    self.health.to(State.FAILED)
                    return
                self.health.to(State.RECONNECTING)
                delay = min(self.backoff_max_s, self.backoff_initial_s * (2**attempt))
                delay *= 0.5 + self._rng.random()  # jitter: many cameras must not retry in lockstep
                log.warning("[%s] reconnecting in %.1fs (%s)", self.stream_id, delay, self.health.last_error)
                if self._stop.wait(delay):
                    break
                self.health.reconnects += 1
                self.health.to(State.CONNECTING)
            if not self.health.state.final:
                self.health.to(State.STOPPED)
        except Exception as exc:  # never let the thread die silently
            log.exception("[%s] source thread crashed", self.stream_id)
            self.health.error(f"{self.spec.display()}: internal error: {exc}")
            if not self.health.state.final:
                self.health.to(State.FAILED)
        finally:
            self.buffer.close()

    def _clean(self, text: str) -> str:
        if self.spec.password:
            text = text.replace(self.spec.password, "***")
        return redact(text) if "://" in text and "@" in text else text

    def _session(self) -> tuple[str, bool]:
        """Run one pipeline until EOS, error, stall or stop. Returns (outcome, produced frames?)."""
        Gst, GstApp, GstVideo = init()
        try:
            pipeline = parse_pipeline(self.description)
        except SourceError as exc:
            self.health.error(str(exc))
            return "fatal", False
        if self.spec.kind == "rtsp" and self.spec.user:
            src = pipeline.get_by_name("src")
            src.set_property("user-id", self.spec.user)
            src.set_property("user-pw", self.spec.password or "")
        pipeline.connect("deep-element-added", self._on_element_added)
        sink = pipeline.get_by_name("sink")
        bus = pipeline.get_bus()
        produced = False
        info_caps = None
        info = None
        last_frame = time.monotonic()
        try:
            if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
                outcome = self._bus_error(bus) or "error"
                if outcome == "error" and self.health.last_error is None:
                    self.health.error(f"{self.spec.display()}: the pipeline would not start")
                return outcome, False
            while not self._stop.is_set():
                sample = sink.try_pull_sample(PULL_TIMEOUT_NS)
                now = time.monotonic()
                if sample is not None:
                    caps = sample.get_caps()
                    if caps is not info_caps:
                        info = GstVideo.VideoInfo.new_from_caps(caps)
                        info_caps = caps
                    frame = self._to_frame(sample.get_buffer(), info)
                    if not self.buffer.put(frame, self._stop):
                        return "stop", produced
                    self.health.frames += 1
                    if not produced:
                        produced = True
                        self._record_input_caps(pipeline)
                    if self.health.state != State.STREAMING:
                        self.health.to(State.STREAMING)
                    last_frame = now
                outcome = self._bus_error(bus)
                if outcome:
                    return outcome, produced
                if sample is None and sink.is_eos():
                    if self.spec.live:
                        self.health.error(f"{self.spec.display()}: the stream ended (EOS)")
                    return "eos", produced
                limit = self.stall_timeout_s if produced else self.connect_timeout_s
                if sample is None and now - last_frame > limit:
                    self.health.error(
                        f"{self.spec.display()}: no frame for {limit:.1f}s "
                        f"({'stalled' if produced else 'no video arrived'})"
                    )
                    if self.health.state == State.STREAMING:
                        self.health.to(State.STALLED)
                    return "stall", produced
            return "stop", produced
        finally:
            pipeline.set_state(Gst.State.NULL)

    def _bus_error(self, bus) -> str | None:
        """Drain the bus; return 'error' or 'fatal' (missing plugin) after recording it, else None."""
        Gst = init()[0]
        while True:
            msg = bus.pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.ELEMENT)
            if msg is None:
                return None
            if msg.type == Gst.MessageType.ELEMENT:
                s = msg.get_structure()
                if s is not None and s.get_name() == "missing-plugin":
                    what = s.get_string("name") or "a decoder"
                    self.health.error(
                        f"{self.spec.display()}: GStreamer has no plugin for {what}; install "
                        "gstreamer1.0-libav and gstreamer1.0-plugins-{good,bad,ugly}"
                    )
                    return "fatal"
                continue
            err, _debug = msg.parse_error()
            text = err.message.rstrip(".")
            if self.spec.kind == "file" and self.health.frames == 0:
                text = f"cannot decode this file (corrupt or not a video GStreamer supports): {text}"
            self.health.error(self._clean(f"{self.spec.display()}: {text}"))
            return "error"

    def _to_frame(self, buf, info) -> Frame:
        Gst = init()[0]
        w, h, stride = info.width, info.height, info.stride[0]
        data = buf.extract_dup(0, buf.get_size())
        rows = np.frombuffer(data, np.uint8)[: h * stride].reshape(h, stride)
        rgb = rows[:, : w * 3].reshape(h, w, 3)
        if stride != w * 3:
            rgb = np.ascontiguousarray(rgb)
            rgb.flags.writeable = False
        pts = buf.pts if buf.pts != Gst.CLOCK_TIME_NONE else -1
        frame = Frame(self.stream_id, self._seq, int(pts), time.time_ns(), rgb)
        self._seq += 1
        return frame

    def _on_element_added(self, _bin, _sub, element) -> None:
        factory = element.get_factory()
        if factory is not None and "Decoder/Video" in (factory.get_metadata("klass") or ""):
            name = factory.get_name()
            if self.health.decoder != name:
                self.health.decoder = name
                log.info("[%s] decoder: %s", self.stream_id, name)

    def _record_input_caps(self, pipeline) -> None:
        # the first conversion element's sink caps = what the source/decoder delivers
        it = pipeline.iterate_sorted()
        ok, elem = it.next()
        Gst = init()[0]
        while ok == Gst.IteratorResult.OK:
            if elem.get_factory() is not None and elem.get_factory().get_name() == "videorate":
                pad = elem.get_static_pad("sink")
                caps = pad.get_current_caps() if pad is not None else None
                if caps is not None:
                    self.health.input_caps = caps.to_string()
                return
            ok, elem = it.next()
