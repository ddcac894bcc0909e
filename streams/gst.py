"""GStreamer initialisation, element lookup and the Debian package that provides each element.

Everything that touches `gi` goes through `init()`, so importing `streams` costs nothing and a
machine without PyGObject gets one clear line instead of an ImportError traceback.
"""

from __future__ import annotations

import logging
import threading

from streams.errors import SourceError

log = logging.getLogger(__name__)

# element -> the Debian/Ubuntu package that ships it (NVIDIA ones come from JetPack / DeepStream).
ELEMENT_PACKAGES = {
    "filesrc": "gstreamer1.0-plugins-base (core)",
    "decodebin": "gstreamer1.0-plugins-base",
    "uridecodebin": "gstreamer1.0-plugins-base",
    "videoconvert": "gstreamer1.0-plugins-base",
    "videoscale": "gstreamer1.0-plugins-base",
    "videorate": "gstreamer1.0-plugins-base",
    "videotestsrc": "gstreamer1.0-plugins-base",
    "appsink": "gstreamer1.0-plugins-base",
    "appsrc": "gstreamer1.0-plugins-base",
    "aspectratiocrop": "gstreamer1.0-plugins-good",
    "rtspsrc": "gstreamer1.0-plugins-good",
    "v4l2src": "gstreamer1.0-plugins-good",
    "avimux": "gstreamer1.0-plugins-good",
    "mp4mux": "gstreamer1.0-plugins-good",
    "matroskamux": "gstreamer1.0-plugins-good",
    "rtph264pay": "gstreamer1.0-plugins-good",
    "x264enc": "gstreamer1.0-plugins-ugly",
    "h264parse": "gstreamer1.0-plugins-bad",
    "avdec_h264": "gstreamer1.0-libav",
    "nvh264dec": "gstreamer1.0-plugins-bad (with the NVIDIA driver)",
    "nvh265dec": "gstreamer1.0-plugins-bad (with the NVIDIA driver)",
    "nvv4l2decoder": "nvidia-l4t-gstreamer (JetPack)",
    "nvarguscamerasrc": "nvidia-l4t-gstreamer (JetPack)",
    "nvvidconv": "nvidia-l4t-gstreamer (JetPack)",
}

_lock = threading.Lock()
_modules: tuple | None = None


def init():
    """Import and initialise GStreamer once; return the (Gst, GstApp, GstVideo) modules."""
    global _modules
    with _lock:
        if _modules is None:
            try:
                import gi

                gi.require_version("Gst", "1.0")
                gi.require_version("GstApp", "1.0")
                gi.require_version("GstVideo", "1.0")
                from gi.repository import Gst, GstApp, GstVideo
            except (ImportError, ValueError) as exc:
                raise SourceError(
                    f"GStreamer Python bindings are unavailable ({exc}); install the Debian packages "
                    "gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 and PyGObject>=3.42,<3.51 "
                    "(`make install` does both)"
                ) from None
            Gst.init(None)
            _modules = (Gst, GstApp, GstVideo)
        return _modules


def has_element(name: str) -> bool:
    Gst = init()[0]
    return Gst.ElementFactory.find(name) is not None


def require_elements(names) -> None:
    """Raise one SourceError naming every missing element and the packages that ship them."""
    missing = [n for n in names if not has_element(n)]
    if missing:
        pkgs = sorted({ELEMENT_PACKAGES.get(n, "a GStreamer plugin package") for n in missing})
        raise SourceError(f"GStreamer element(s) {', '.join(missing)} not found; install {', '.join(pkgs)}")


def parse_pipeline(description: str):
    """Gst.parse_launch with a clear error (and the missing element named) instead of a GLib.Error."""
    Gst = init()[0]
    try:
        return Gst.parse_launch(description)
    except Exception as exc:  # GLib.Error: 'no element "x264enc"' and friends
        msg = str(getattr(exc, "message", exc))
        if "no element" in msg:
            name = msg.split('"')[1] if '"' in msg else msg
            require_elements([name])
        raise SourceError(f"invalid GStreamer pipeline: {msg}") from None
