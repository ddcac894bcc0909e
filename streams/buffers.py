"""The two named buffer policies between a GStreamer thread and its consumer.

- `NewestFrameBuffer` (live sources): holds one frame; a new frame replaces an unread one and the
  replacement is counted as a drop. A slow consumer always sees the present, never a backlog.
- `LosslessBuffer` (files): a bounded queue whose `put` blocks, so decoding waits for the consumer
  and no frame is lost.
Both close with `close()`: waiting readers wake up and get None once the buffer is empty.
"""

from __future__ import annotations

import threading
from collections import deque

from streams.frame import Frame


class _Buffer:
    policy = ""

    def __init__(self):
        self._cond = threading.Condition()
        self._closed = False
        self.drops = 0

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class NewestFrameBuffer(_Buffer):
    policy = "newest"

    def __init__(self):
        super().__init__()
        self._frame: Frame | None = None

    def put(self, frame: Frame, stop: threading.Event | None = None) -> bool:
        with self._cond:
            if self._closed:
                return False
            if self._frame is not None:
                self.drops += 1
            self._frame = frame
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Frame | None:
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._closed, timeout)
            frame, self._frame = self._frame, None
            return frame

    def __len__(self) -> int:
        return int(self._frame is not None)


class LosslessBuffer(_Buffer):
    policy = "lossless"

    def __init__(self, capacity: int = 8):
        super().__init__()
        self._items: deque[Frame] = deque()
        self._capacity = capacity  # drops stays 0

    def put(self, frame: Frame, stop: threading.Event | None = None) -> bool:
        """Block while full; give up (False) only when the buffer closes or `stop` is set."""
        with self._cond:
            while len(self._items) >= self._capacity and not self._closed:
                if stop is not None and stop.is_set():
                    return False
                self._cond.wait(0.05)
            if self._closed:
                return False
            self._items.append(frame)
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Frame | None:
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._closed, timeout)
            if not self._items:
                return None
            frame = self._items.popleft()
            self._cond.notify_all()
            return frame

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
