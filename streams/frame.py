"""`Frame`: one decoded, converted RGB frame of one stream."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    stream_id: str
    seq: int  # 0, 1, 2 ... per source, across reconnects (gaps mean frames were dropped)
    pts_ns: int  # presentation time in the stream's own clock (restarts after a reconnect)
    capture_wall_ns: int  # time.time_ns() when the frame left GStreamer: start of latency figures
    rgb: np.ndarray  # uint8 [H, W, 3], C-contiguous, read-only

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.rgb.shape


def mirrored(frames: np.ndarray) -> np.ndarray:
    """Frames [N, H, W, 3] flipped left to right, C-contiguous (the mirror reading's input:
    `engine.mirror`, `eval vst --mirror`)."""
    return np.ascontiguousarray(frames[:, :, ::-1])
