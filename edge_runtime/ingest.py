"""The ingest service: streams -> frame features (batched across streams) -> a feature ring per
person track (the pose front end: one track per person, `edge_runtime.pose`; the own frame
encoder: one for the whole view) -> TokenEngine every S frames of a track -> TokenWindow on the
bus; results from the LLM workers come back through the hub, are published (topic = stream id)
and go to the sinks, and become action events (`edge_runtime.events`, per person), published and
sunk as well.

A recorded file is analysed whole: its windows are marked lossless (the workers queue every one
instead of keeping the newest) and its reader waits while LOSSLESS_IN_FLIGHT of its windows are
unanswered, so a file read faster than real time never outruns the language model.

Threads: one reader per source (frames into a bounded queue: live sources already keep only
the newest frame, files block here so they lose none, and wait for the workers as above), one engine thread (batches frames, owns
the windows PUSH socket), one collector (owns the collect PULL and results PUB sockets). Every
loop waits with a timeout and checks the stop event.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import zmq

from edge_runtime import messages
from edge_runtime.bus import Hub
from edge_runtime.config import Config
from edge_runtime.engines import Engines
from edge_runtime.events import EventTracker
from edge_runtime.messages import ActionEvent, MessageError, TokenWindow
from edge_runtime.sinks import Sink
from streams.errors import SourceError
from streams.frame import mirrored
from streams.pipeline import Conversion
from streams.source import Source

log = logging.getLogger(__name__)

LOSSLESS_IN_FLIGHT = 4  # a file's windows sent and not yet answered, before its reader waits
LOSSLESS_GIVE_UP_S = 120.0  # an answer this late is lost (a worker that failed the read): stop waiting for it


@dataclass
class TrackState:
    """One person's (or, without the pose front end, the whole view's) last W frame features."""

    id: int | None
    ring: collections.deque
    capture: collections.deque
    pts: collections.deque
    mirror_ring: collections.deque | None = None  # the mirror images' features (engine.mirror)
    frames: int = 0
    windows: int = 0


@dataclass
class StreamState:
    id: str
    source: Source
    frames: int = 0  # frames encoded
    windows: int = 0
    fps: float = 0.0
    last_ns: int = 0
    ended: bool = False
    error: str | None = None
    tracks: dict = field(default_factory=dict)  # track id (None: the whole view) -> TrackState
    in_flight: dict = field(default_factory=dict)  # a file's windows: seq -> time.monotonic() sent
    lost: int = 0  # a file's windows never answered


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def read_window(engines, feats: np.ndarray, mirror_feats: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """The token engine on one window's features [W, F]: its outputs and the head's label
    probabilities; given the mirror image's features, the mean of both (the tokens and count stay
    the window's own)."""
    out = engines.tokenize(feats[None])
    p = softmax(np.asarray(out["logits"][0], np.float64))
    if mirror_feats is not None:
        p = (p + softmax(np.asarray(engines.tokenize(mirror_feats[None])["logits"][0], np.float64))) / 2
    return out, p


def head_mirror(cfg: Config, manifest: dict) -> bool:
    """Whether the ingest reads the VST head from each window and its mirror image: engine.mirror,
    else as the bundle's label pool was fitted. Reading a pool fitted on one reading with the other
    works but is not what was calibrated: say so once."""
    fitted = bool(manifest["lvlm"].get("head_mirror"))
    if cfg.engine.mirror is None:
        return fitted
    if cfg.engine.mirror != fitted and manifest["lvlm"].get("label_pool"):
        log.warning(
            "engine.mirror = %s, but the bundle's label pool was fitted on the head read %s; labels may be "
            "less well calibrated",
            str(cfg.engine.mirror).lower(),
            "with its mirror image" if fitted else "plain",
        )
    return cfg.engine.mirror


class Ingest:
    def __init__(
        self,
        cfg: Config,
        bundle: str,
        manifest: dict,
        bundle_id: str,
        sink: Sink,
        stop: threading.Event,
        context: zmq.Context | None = None,
    ):
        self.cfg, self.manifest, self.bundle_id, self.sink, self.stop = cfg, manifest, bundle_id, sink, stop
        v = manifest["vst"]
        self.W, self.S, self.R, self.fps = v["W"], v["S"], v["resolution"], v["fps"]
        self.labels = manifest["labels"]
        self.mirror = head_mirror(cfg, manifest)
        self.engines = Engines(bundle, manifest, cfg.engine.backend, cfg.engine.threads)
        self.hub = Hub(cfg.bus, context)
        self.frames: queue.Queue = queue.Queue(maxsize=max(cfg.engine.max_batch * 2, 8))
        self.outbox: queue.Queue = queue.Queue()  # (topic, message) for the PUB socket, from other threads
        self.streams: dict[str, StreamState] = {}
        self.counters = {"bad_messages": 0, "results": 0, "events": 0}
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.frames_flowing = threading.Event()  # set whenever frames arrive: the watchdog pings only then
        self.pose = None
        if self.engines.pose:  # the whole view, letterboxed, at the size the bundle names
            from edge_runtime.pose import PoseSettings

            p = cfg.pose
            self.pose = self.engines.pose_front_end(
                PoseSettings(
                    detect_every=p.detect_every,
                    max_people=p.max_people,
                    min_detection=p.min_detection,
                    min_presence=p.min_presence,
                    smoothing=p.smoothing,
                    min_cutoff=p.min_cutoff,
                    beta=p.beta,
                    fps=self.fps,
                )
            )
            width, height = manifest["pose"]["frame"]
            conversion = Conversion(width=width, height=height, fps=self.fps, crop=False)
        else:
            conversion = Conversion(width=self.R, height=self.R, fps=self.fps)
        for s in cfg.streams:
            src = Source(s.uri, conversion, stream_id=s.id, realtime=s.realtime, max_reconnects=s.max_reconnects)
            self.streams[s.id] = StreamState(s.id, src)
        self.events = EventTracker(cfg.events, self.S / self.fps, bundle_id, self._event)

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> Ingest:
        for st in self.streams.values():
            try:
                st.source.start()
            except SourceError as exc:  # one bad source does not stop the others
                st.ended, st.error = True, str(exc)
                log.error("[%s] %s", st.id, exc)
                continue
            self._thread(self._read, f"read-{st.id}", st)
        self._thread(self._engine_loop, "engine")
        self._thread(self._collect_loop, "collect")
        return self

    def _thread(self, fn, name, *args) -> None:
        t = threading.Thread(target=fn, args=args, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def close(self, timeout: float = 3.0) -> None:
        self.stop.set()
        for st in self.streams.values():
            st.source.stop(timeout=1.0)
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.events.close_all()  # events still open end where they were last seen
        self.hub.close()

    @property
    def done(self) -> bool:
        """Every source has ended (files at EOS, live sources that gave up) and its frames are in."""
        return all(st.ended for st in self.streams.values()) and self.frames.empty()

    # ---- threads ------------------------------------------------------------------------------
    def _read(self, st: StreamState) -> None:
        try:
            for frame in st.source.frames(poll_s=0.1):
                if not st.source.spec.live:
                    self._wait_for_workers(st)
                while not self.stop.is_set():
                    try:
                        self.frames.put(frame, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    return
        except SourceError as exc:
            st.error = str(exc)
            log.error("[%s] %s", st.id, exc)
        finally:
            st.ended = True

    def _wait_for_workers(self, st: StreamState) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            with self.lock:
                for seq in [q for q, t in st.in_flight.items() if now - t > LOSSLESS_GIVE_UP_S]:
                    del st.in_flight[seq]
                    st.lost += 1
                if len(st.in_flight) < LOSSLESS_IN_FLIGHT:
                    return
            self.stop.wait(0.01)

    def _engine_loop(self) -> None:
        max_batch, max_wait = self.cfg.engine.max_batch, self.cfg.engine.max_wait_ms / 1000
        while not self.stop.is_set():
            try:
                first = self.frames.get(timeout=0.1)
            except queue.Empty:
                self.frames_flowing.clear()
                continue
            batch = [first]
            deadline = time.monotonic() + max_wait
            while len(batch) < max_batch:
                left = deadline - time.monotonic()
                try:
                    batch.append(self.frames.get(timeout=left) if left > 0 else self.frames.get_nowait())
                except queue.Empty:
                    break
            self.frames_flowing.set()
            if self.pose is not None:
                self._pose_batch(batch)
                continue
            try:
                rgb = np.stack([f.rgb for f in batch])
                feats = self.engines.encode(rgb)
                mirror = self.engines.encode(mirrored(rgb)) if self.mirror else [None] * len(batch)
            except Exception as exc:  # noqa: BLE001 - an engine failure on one batch must not end the service
                log.error("frame encoder failed on a batch of %d: %s", len(batch), exc)
                continue
            for frame, feat, mirror_feat in zip(batch, feats, mirror):
                st = self.streams[frame.stream_id]
                self._frame(st, frame)
                self._add(st, self._track(st, None), frame, feat, mirror_feat)

    def _pose_batch(self, batch: list) -> None:
        """Frames through the pose front end, one frame per stream per call (a stream's next frame
        is tracked from this one's landmarks); each person's feature goes to their track."""
        from vst.joints import mirror_pose

        rounds: list[list] = []
        for frame in batch:
            slot = next((r for r in rounds if all(f.stream_id != frame.stream_id for f in r)), None)
            if slot is None:
                rounds.append(slot := [])
            slot.append(frame)
        for frames in rounds:
            try:
                people = self.pose.process([(f.stream_id, f.rgb) for f in frames], [f.pts_ns / 1e9 for f in frames])
            except Exception as exc:  # noqa: BLE001 - an engine failure on one batch must not end the service
                log.error("pose front end failed on a batch of %d: %s", len(frames), exc)
                continue
            for frame, persons in zip(frames, people):
                st = self.streams[frame.stream_id]
                self._frame(st, frame)
                alive = self.pose.alive(frame.stream_id)
                for gone in [t for t in st.tracks if t not in alive]:  # a person who left ends their track
                    del st.tracks[gone]
                    self.events.end(st.id, gone)
                for p in persons:
                    self._add(
                        st, self._track(st, p.track), frame, p.feature, mirror_pose(p.feature) if self.mirror else None
                    )

    def _track(self, st: StreamState, track: int | None) -> TrackState:
        if track not in st.tracks:
            st.tracks[track] = TrackState(
                track,
                collections.deque(maxlen=self.W),
                collections.deque(maxlen=self.W),
                collections.deque(maxlen=self.W),
                collections.deque(maxlen=self.W) if self.mirror else None,
            )
        return st.tracks[track]

    def _frame(self, st: StreamState, frame) -> None:
        st.frames += 1
        if st.last_ns:
            dt = (frame.capture_wall_ns - st.last_ns) / 1e9
            if dt > 0:
                st.fps = 0.9 * st.fps + 0.1 / dt if st.fps else 1 / dt
        st.last_ns = frame.capture_wall_ns

    def _add(
        self, st: StreamState, tr: TrackState, frame, feat: np.ndarray, mirror_feat: np.ndarray | None = None
    ) -> None:
        tr.ring.append(feat)
        if tr.mirror_ring is not None:
            tr.mirror_ring.append(mirror_feat)
        tr.capture.append(frame.capture_wall_ns)
        tr.pts.append(frame.pts_ns)
        tr.frames += 1
        if tr.frames >= self.W and (tr.frames - self.W) % self.S == 0:
            self._window(st, tr)

    def _window(self, st: StreamState, tr: TrackState) -> None:
        out, p = read_window(
            self.engines, np.stack(tr.ring), None if tr.mirror_ring is None else np.stack(tr.mirror_ring)
        )
        head = int(p.argmax())
        now = time.time_ns()
        w = TokenWindow(
            stream=st.id,
            window_seq=st.windows,
            t_start_ns=tr.capture[0],
            t_end_ns=tr.capture[-1],
            tokens=tuple(int(x) for x in out["ids"][0]),
            distances=tuple(float(x) for x in out["distances"][0]),
            count=int(out["count"][0]) if "count" in out else None,
            provisional_label=self.labels[head],
            provisional_score=float(p[head]),
            provisional_probs=tuple(float(x) for x in p),
            capture_to_tokens_ms=(now - tr.capture[-1]) / 1e6,
            sent_ns=now,
            bundle=self.bundle_id,
            track=tr.id,
            pts_start_ns=tr.pts[0],
            pts_end_ns=tr.pts[-1],
            lossless=not st.source.spec.live,
        )
        st.windows += 1
        tr.windows += 1
        if self.hub.send_window(messages.encode(w)) and w.lossless:
            with self.lock:
                st.in_flight[w.window_seq] = time.monotonic()
        self.sink.window(w)

    def _collect_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.hub.collect, zmq.POLLIN)
        while not self.stop.is_set():
            while not self.outbox.empty():  # the PUB socket belongs to this thread
                self.hub.publish(*self.outbox.get_nowait())
            if not dict(poller.poll(100)):
                continue
            data = self.hub.collect.recv()
            try:
                r = messages.decode(data)
                if not isinstance(r, messages.ActionResult):
                    raise MessageError(f"expected a result, got {type(r).__name__}")
            except MessageError as exc:
                self.counters["bad_messages"] += 1
                log.warning("rejected a message on %s: %s", self.cfg.bus.collect, exc)
                continue
            self.counters["results"] += 1
            st = self.streams.get(r.stream)
            if st is not None:
                with self.lock:
                    st.in_flight.pop(r.window_seq, None)
            self.hub.publish(r.stream, data)
            self.sink.result(r)
            self.events.result(r)

    def _event(self, ev: ActionEvent) -> None:
        """An event from the tracker: on the results PUB (through the collector thread, which owns
        the socket) and to the sinks."""
        self.counters["events"] += 1
        self.outbox.put((ev.stream, messages.encode(ev)))
        self.sink.event(ev)

    def publish_health(self, name: str, stats: dict) -> None:
        """A Health message on the results PUB (topic "_health"), from the collector's socket owner:
        called by the supervision loop, so it goes through the collector thread's queue."""
        ok, text = self.healthy()
        h = messages.Health(
            service="ingest",
            name=name,
            state="ok" if ok else text,
            counters={"streams": stats, **self.hub.counters, **self.counters},
            sent_ns=time.time_ns(),
        )
        self.outbox.put(("_health", messages.encode(h)))

    # ---- status -------------------------------------------------------------------------------
    def stats(self) -> dict:
        out = {}
        for sid, st in self.streams.items():
            snap = st.source.stats()
            out[sid] = {
                "state": snap.state.value,
                "frames": st.frames,
                "windows": st.windows,
                "fps": round(st.fps, 2),
                "drops": snap.drops,
                "reconnects": snap.reconnects,
                "windows_unanswered": st.lost,
                "error": st.error or snap.last_error,
            }
            if self.pose is not None:
                tracks = self.pose.stream(sid)
                out[sid].update(
                    people=len(tracks.tracks),
                    tracks_started=tracks.started,
                    tracks_ended=tracks.ended,
                    frames_without_person=tracks.frames_without_person,
                )
        return out

    def healthy(self) -> tuple[bool, str]:
        bad = [
            f"{sid}: {s['state']}"
            for sid, s in self.stats().items()
            if s["state"] not in ("connecting", "streaming", "stopped")
        ]
        return (not bad, "; ".join(bad) or "ok")
