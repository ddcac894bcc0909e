"""`VideoWriter`: RGB frames -> H.264 in AVI/MP4/MKV through GStreamer (appsrc ... filesink).

Used by the synthetic dataset generator, so generated clips are encoded by the same stack the
runtime decodes with. One x264 thread per writer: deterministic output, and N writers in N
processes use N cores.
"""

from __future__ import annotations

import os

import numpy as np

from streams.errors import SourceError
from streams.gst import init, parse_pipeline

MUXERS = {".avi": "avimux", ".mp4": "mp4mux", ".mkv": "matroskamux"}


class VideoWriter:
    def __init__(self, path: str, width: int, height: int, fps: int, quantizer: int = 18):
        Gst = init()[0]
        ext = os.path.splitext(path)[1].lower()
        if ext not in MUXERS:
            raise SourceError(f"cannot write {path!r}: use one of {', '.join(MUXERS)}")
        self.path, self.width, self.height, self.fps = path, width, height, fps
        self._frame_ns = Gst.SECOND // fps
        self._count = 0
        loc = path.replace("\\", "\\\\").replace('"', '\\"')
        self._pipeline = parse_pipeline(
            f"appsrc name=src format=time block=true max-bytes={width * height * 3 * 4} "
            f"caps=video/x-raw,format=RGB,width={width},height={height},framerate={fps}/1 ! "
            "videoconvert dither=none ! video/x-raw,format=I420 ! "
            f"x264enc pass=quant quantizer={quantizer} speed-preset=veryfast bframes=0 "
            f'key-int-max={fps} threads=1 ! h264parse ! {MUXERS[ext]} ! filesink location="{loc}"'
        )
        self._src = self._pipeline.get_by_name("src")
        self._bus = self._pipeline.get_bus()
        self._pipeline.set_state(Gst.State.PLAYING)

    def write(self, rgb: np.ndarray) -> None:
        Gst = init()[0]
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 {(self.height, self.width, 3)}, got {rgb.dtype} {rgb.shape}")
        buf = Gst.Buffer.new_wrapped(np.ascontiguousarray(rgb).tobytes())
        buf.pts = self._count * self._frame_ns
        buf.duration = self._frame_ns
        self._count += 1
        if self._src.emit("push-buffer", buf) != Gst.FlowReturn.OK:
            self._fail("encoder refused a frame")

    def close(self, timeout_s: float = 30.0) -> int:
        """Finish the file; returns the number of frames written."""
        Gst = init()[0]
        self._src.emit("end-of-stream")
        msg = self._bus.timed_pop_filtered(int(timeout_s * Gst.SECOND), Gst.MessageType.EOS | Gst.MessageType.ERROR)
        self._pipeline.set_state(Gst.State.NULL)
        if msg is None:
            raise SourceError(f"writing {self.path}: the encoder did not finish within {timeout_s:.0f}s")
        if msg.type == Gst.MessageType.ERROR:
            self._fail(msg.parse_error()[0].message)
        return self._count

    def _fail(self, why: str):
        Gst = init()[0]
        self._pipeline.set_state(Gst.State.NULL)
        raise SourceError(f"writing {self.path}: {why}")

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self._pipeline.set_state(init()[0].State.NULL)
