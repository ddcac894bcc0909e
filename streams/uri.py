"""Source URIs: what the user types, parsed into a `SourceSpec`, and redacted for logs.

Accepted forms:
  /path/clip.avi, file:///path/clip.mp4        a file (any container GStreamer decodes)
  rtsp://[user:pass@]host[:port]/path          RTSP; query options ?transport=tcp|udp&latency=MS
  rtsps://...                                  RTSP over TLS
  /dev/video0, v4l2:///dev/video0              a V4L2 (USB) camera
  csi://0                                      a Jetson CSI camera (nvarguscamerasrc sensor-id)
  test://[pattern]                             a live GStreamer test pattern (videotestsrc)
  pipeline://<gst-launch description>          anything else; it must output raw video
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from streams.errors import SourceError

KINDS = ("file", "rtsp", "v4l2", "csi", "test", "pipeline")
LIVE_KINDS = ("rtsp", "v4l2", "csi", "test")


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    location: str  # path, URI without credentials, device, sensor id, pattern, or pipeline text
    user: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    options: tuple[tuple[str, str], ...] = ()

    @property
    def live(self) -> bool:
        return self.kind in LIVE_KINDS

    def option(self, key: str, default: str | None = None) -> str | None:
        return dict(self.options).get(key, default)

    def display(self) -> str:
        """The URI as it may appear in logs and errors: never with credentials."""
        return self.location if self.kind != "pipeline" else f"pipeline://{self.location}"


def redact(uri: str) -> str:
    """Remove user:password from any URI-like string."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable uri>"
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))
    return uri


def parse(uri: str) -> SourceSpec:
    uri = uri.strip()
    if not uri:
        raise SourceError("empty source URI; give a file path, rtsp://, /dev/videoN, csi://N, test:// or pipeline://")
    if uri.startswith("pipeline://"):
        text = uri[len("pipeline://") :].strip()
        if not text:
            raise SourceError("pipeline:// needs a GStreamer description, e.g. pipeline://videotestsrc is-live=true")
        return SourceSpec("pipeline", text)
    if uri.startswith("/dev/video"):
        return SourceSpec("v4l2", uri)
    if "://" not in uri:
        return SourceSpec("file", os.path.abspath(uri))
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    options = tuple(parse_qsl(parts.query))
    if scheme == "file":
        return SourceSpec("file", unquote(parts.path))
    if scheme in ("rtsp", "rtsps", "rtspt"):
        if not parts.hostname:
            raise SourceError(f"bad RTSP URI {redact(uri)!r}: no host; expected rtsp://host[:port]/path")
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        keep = [(k, v) for k, v in options if k not in ("transport", "latency")]
        clean = urlunsplit((scheme, host, parts.path, "&".join(f"{k}={v}" for k, v in keep), ""))
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        return SourceSpec("rtsp", clean, user, password, options)
    if scheme == "v4l2":
        return SourceSpec("v4l2", parts.path or "/dev/video0", options=options)
    if scheme == "csi":
        sensor = parts.netloc or parts.path.strip("/") or "0"
        if not sensor.isdigit():
            raise SourceError(f"bad CSI URI {uri!r}: expected csi://<sensor-id>, e.g. csi://0")
        return SourceSpec("csi", sensor, options=options)
    if scheme == "test":
        return SourceSpec("test", parts.netloc or parts.path.strip("/") or "smpte", options=options)
    raise SourceError(
        f"unsupported source {redact(uri)!r}; use a file path, rtsp://, /dev/videoN, csi://N, test:// or pipeline://"
    )
