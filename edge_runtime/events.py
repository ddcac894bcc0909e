"""Window results -> action events with a start and an end, per stream and person track.

A label opens an event when it holds, with at least its minimum probability, over `open_windows`
consecutive windows of one person; the event goes on while that label keeps holding and closes
after `close_windows` consecutive windows of anything else (another label, a label too unlikely,
an idle label such as "no action"), when the person's track ends, or when the stream ends. The
hysteresis keeps one stray window from opening or breaking an event.

Times are the stream's own (presentation timestamps), so a late start of a client or a slow
worker does not move them. Each window stands for the stride at its centre (windows overlap: a
window of W frames every S frames), so consecutive windows tile the stream.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_runtime.config import EventsConfig
from edge_runtime.messages import ActionEvent, ActionResult


@dataclass
class _Run:
    """Consecutive windows of one label, not yet an event (or the event they became)."""

    label: str
    start_s: float
    end_s: float
    t_start_ns: int
    t_end_ns: int
    probabilities: list[float] = field(default_factory=list)
    explanation: str | None = None
    event_id: int | None = None  # set once the run is an event
    misses: int = 0  # consecutive windows since it last held (an event only)

    def add(self, r: ActionResult, end_s: float) -> None:
        self.end_s, self.t_end_ns = end_s, r.t_end_ns
        self.probabilities.append(r.probability)
        self.explanation = r.explanation or self.explanation
        self.misses = 0


@dataclass
class _Person:
    event: _Run | None = None
    candidate: _Run | None = None


def window_span(r: ActionResult, stride_s: float) -> tuple[float, float]:
    """The stretch of stream time a window stands for: the stride at its centre (seconds on the
    stream's clock; the wall clock where the stream has none)."""
    if r.pts_start_ns is not None and r.pts_end_ns is not None:
        a, b = r.pts_start_ns / 1e9, r.pts_end_ns / 1e9
    else:
        a, b = r.t_start_ns / 1e9, r.t_end_ns / 1e9
    c = (a + b) / 2
    return c - stride_s / 2, c + stride_s / 2


class EventTracker:
    """Feed it every result (`result`); it calls `emit` with an ActionEvent whenever an event
    starts, goes on or ends. Thread-safe: results and track ends may come from different threads."""

    def __init__(self, cfg: EventsConfig, stride_s: float, bundle: str, emit: Callable[[ActionEvent], None]):
        self.cfg, self.stride_s, self.bundle, self.emit = cfg, stride_s, bundle, emit
        self.people: dict[tuple[str, int | None], _Person] = {}
        self.ids = itertools.count()
        self.counts = {"started": 0, "ended": 0}
        self._lock = threading.Lock()

    def _rule(self, label: str) -> tuple[float, int]:
        rule = self.cfg.labels.get(label)
        p = rule.min_probability if rule is not None and rule.min_probability is not None else self.cfg.min_probability
        k = rule.open_windows if rule is not None and rule.open_windows is not None else self.cfg.open_windows
        return p, k

    def _send(self, key: tuple[str, int | None], run: _Run, state: str) -> None:
        self.emit(
            ActionEvent(
                stream=key[0],
                track=key[1],
                event_id=run.event_id,
                state=state,
                label=run.label,
                probability=sum(run.probabilities) / len(run.probabilities),
                explanation=run.explanation,
                start_s=run.start_s,
                end_s=run.end_s,
                windows=len(run.probabilities),
                t_start_ns=run.t_start_ns,
                t_end_ns=run.t_end_ns,
                bundle=self.bundle,
            )
        )

    def result(self, r: ActionResult) -> None:
        key = (r.stream, r.track)
        start_s, end_s = window_span(r, self.stride_s)
        min_p, open_k = self._rule(r.label)
        holds = r.label not in self.cfg.idle_labels and r.probability >= min_p
        with self._lock:
            person = self.people.setdefault(key, _Person())
            ev = person.event
            if ev is not None and holds and r.label == ev.label:
                ev.add(r, end_s)
                person.candidate = None
                self._send(key, ev, "update")
                return
            if not holds:
                person.candidate = None
            elif person.candidate is not None and person.candidate.label == r.label:
                person.candidate.add(r, end_s)
            else:
                person.candidate = _Run(r.label, start_s, end_s, r.t_start_ns, r.t_end_ns)
                person.candidate.add(r, end_s)
            if ev is not None:
                ev.misses += 1
                if ev.misses < self.cfg.close_windows:
                    return
                self._close(key, person)
            c = person.candidate
            if c is not None and len(c.probabilities) >= open_k:
                c.event_id = next(self.ids)
                person.event, person.candidate = c, None
                self.counts["started"] += 1
                self._send(key, c, "start")

    def _close(self, key, person: _Person) -> None:
        if person.event is not None:
            self.counts["ended"] += 1
            self._send(key, person.event, "end")
            person.event = None

    def end(self, stream: str, track: int | None = None, whole_stream: bool = False) -> None:
        """A person's track ended (or, with whole_stream, the stream): their open event ends where
        it was last seen."""
        with self._lock:
            for key in [k for k in self.people if k[0] == stream and (whole_stream or k[1] == track)]:
                self._close(key, self.people.pop(key))

    def close_all(self) -> None:
        with self._lock:
            for key in list(self.people):
                self._close(key, self.people.pop(key))
