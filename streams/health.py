"""The per-source state machine and its counters.

    connecting -> streaming -> stalled -> reconnecting -> connecting -> ...
    any non-final state -> stopped (stop requested, or a file's end) | failed (cannot recover)

Transitions outside `TRANSITIONS` raise: a bug, never a silent state change.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import Enum


class State(str, Enum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (State.STOPPED, State.FAILED)


TRANSITIONS = {
    State.CONNECTING: {State.STREAMING, State.STALLED, State.RECONNECTING, State.STOPPED, State.FAILED},
    State.STREAMING: {State.STALLED, State.RECONNECTING, State.STOPPED, State.FAILED},
    State.STALLED: {State.STREAMING, State.RECONNECTING, State.STOPPED, State.FAILED},
    State.RECONNECTING: {State.CONNECTING, State.STOPPED, State.FAILED},
    State.STOPPED: set(),
    State.FAILED: set(),
}


@dataclass
class HealthSnapshot:
    state: State
    frames: int
    drops: int
    reconnects: int
    errors: int
    last_error: str | None
    state_since_s: float  # seconds in the current state
    decoder: str | None
    input_caps: str | None


@dataclass
class Health:
    state: State = State.CONNECTING
    frames: int = 0
    reconnects: int = 0
    errors: int = 0
    last_error: str | None = None
    decoder: str | None = None
    input_caps: str | None = None
    history: list = field(default_factory=list)  # (monotonic time, State)
    _since: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        self.history.append((self._since, self.state))

    def to(self, new: State) -> None:
        with self._lock:
            if new == self.state:
                return
            if new not in TRANSITIONS[self.state]:
                raise RuntimeError(f"illegal source state transition {self.state.value} -> {new.value}")
            self.state = new
            self._since = time.monotonic()
            self.history.append((self._since, new))

    def error(self, message: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = message

    def snapshot(self, drops: int) -> HealthSnapshot:
        with self._lock:
            return HealthSnapshot(
                self.state,
                self.frames,
                drops,
                self.reconnects,
                self.errors,
                self.last_error,
                time.monotonic() - self._since,
                self.decoder,
                self.input_caps,
            )
