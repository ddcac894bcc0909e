"""The GStreamer pipeline text for every source kind, ending in the one frame conversion.

`conversion()` is the single definition of frame preprocessing: dataset preparation and the
live runtime both decode through it, so a training frame and a live frame of the same video
are bit-identical. Change it and every prepared cache must be rebuilt (`CONVERSION_VERSION`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from streams.errors import SourceError
from streams.gst import has_element, init, require_elements
from streams.uri import SourceSpec

log = logging.getLogger(__name__)

CONVERSION_VERSION = 1
HW_DECODERS = ("nvv4l2decoder", "nvh264dec", "nvh265dec")


@dataclass(frozen=True)
class Conversion:
    """What every source delivers: RGB at width x height and fps (centre-cropped to that aspect)."""

    width: int = 112
    height: int = 112
    fps: int = 15
    crop: bool = True  # centre-crop to the output aspect ratio instead of stretching

    def __post_init__(self):
        if not (8 <= self.width <= 4096 and 8 <= self.height <= 4096):
            raise SourceError(f"output size {self.width}x{self.height} out of range 8..4096")
        if not 1 <= self.fps <= 240:
            raise SourceError(f"fps {self.fps} out of range 1..240")

    def caps(self) -> str:
        return (
            f"video/x-raw,format=RGB,width={self.width},height={self.height},"
            f"framerate={self.fps}/1,pixel-aspect-ratio=1/1"
        )

    def text(self) -> str:
        crop = f"aspectratiocrop aspect-ratio={self.width}/{self.height} ! " if self.crop else ""
        return f"videorate ! {crop}videoscale method=bilinear ! videoconvert dither=none ! {self.caps()}"


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def prefer_hardware_decoders() -> list[str]:
    """Raise the rank of the NVIDIA decoders present so decodebin picks them; return their names."""
    Gst = init()[0]
    present = []
    for name in HW_DECODERS:
        factory = Gst.ElementFactory.find(name)
        if factory is not None:
            factory.set_rank(Gst.Rank.PRIMARY + 100)
            present.append(name)
    return present


def source_text(spec: SourceSpec) -> str:
    """The part of the pipeline before the conversion: source and decoder."""
    if spec.kind == "file":
        return f"filesrc location={quote(spec.location)} ! decodebin"
    if spec.kind == "rtsp":
        transport = (spec.option("transport") or "tcp").lower()
        if transport not in ("tcp", "udp"):
            raise SourceError(f"bad RTSP transport {transport!r}: use ?transport=tcp or ?transport=udp")
        latency = spec.option("latency") or "200"
        if not latency.isdigit():
            raise SourceError(f"bad RTSP latency {latency!r}: milliseconds, e.g. ?latency=200")
        return (
            f"rtspsrc name=src location={quote(spec.location)} protocols={transport} latency={latency} "
            "drop-on-latency=true ! decodebin"
        )
    if spec.kind == "v4l2":
        return f"v4l2src device={quote(spec.location)} ! decodebin"
    if spec.kind == "csi":
        return (
            f"nvarguscamerasrc sensor-id={spec.location} ! "
            "video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! nvvidconv ! video/x-raw,format=BGRx"
        )
    if spec.kind == "test":
        w = spec.option("width", "320")
        h = spec.option("height", "240")
        fps = spec.option("fps", "30")
        for key, val in (("width", w), ("height", h), ("fps", fps)):
            if not val.isdigit():
                raise SourceError(f"bad test:// option {key}={val!r}: a whole number")
        return f"videotestsrc is-live=true pattern={spec.location} ! video/x-raw,width={w},height={h},framerate={fps}/1"
    if spec.kind == "pipeline":
        return spec.location
    raise SourceError(f"unknown source kind {spec.kind!r}")


def appsink_text(live: bool, realtime: bool) -> str:
    # Live: never block the network or camera (sync=false, tiny queue); the Python side keeps the
    # newest frame and counts drops. Files: block upstream (lossless); sync=true paces at real time.
    if live:
        return "appsink name=sink emit-signals=false sync=false max-buffers=2 drop=true"
    return f"appsink name=sink emit-signals=false sync={'true' if realtime else 'false'} max-buffers=4 drop=false"


def describe(spec: SourceSpec, conv: Conversion, realtime: bool = False) -> str:
    """The full gst-launch-1.0 description for a source (credentials are set as properties, not here)."""
    return f"{source_text(spec)} ! {conv.text()} ! {appsink_text(spec.live, realtime)}"


def required_elements(spec: SourceSpec, conv: Conversion) -> list[str]:
    names = ["videorate", "videoscale", "videoconvert", "appsink"]
    if conv.crop:
        names.append("aspectratiocrop")
    names += {
        "file": ["filesrc", "decodebin"],
        "rtsp": ["rtspsrc", "decodebin"],
        "v4l2": ["v4l2src", "decodebin"],
        "csi": ["nvarguscamerasrc", "nvvidconv"],
        "test": ["videotestsrc"],
        "pipeline": [],
    }[spec.kind]
    return names


def check_available(spec: SourceSpec, conv: Conversion) -> None:
    require_elements(required_elements(spec, conv))


def decoder_note() -> str:
    hw = [n for n in HW_DECODERS if has_element(n)]
    return (
        f"hardware decoders preferred: {', '.join(hw)}"
        if hw
        else "software decoding (no NVIDIA decoder element present)"
    )
