"""`RtspServer`: a small GstRtspServer on loopback that serves files, test patterns or any launch line.

For tests, the live demo and local experiments. Files are served without re-encoding (parsebin ->
rtph264pay), so a client decodes exactly the frames the file holds. `stop()` drops every client
and closes the port; `start()` again on the same port simulates a camera coming back.
"""

from __future__ import annotations

import socket
import threading

from streams.errors import SourceError
from streams.gst import init
from streams.pipeline import quote


def _rtsp_modules():
    import gi

    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, GstRtspServer

    return GLib, GstRtspServer


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for servers that must know their URL up front)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RtspServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, user: str | None = None, password: str | None = None):
        init()
        try:
            self._GLib, self._R = _rtsp_modules()
        except (ImportError, ValueError):
            raise SourceError("GstRtspServer is unavailable; install gir1.2-gst-rtsp-server-1.0") from None
        self.host = host
        self.port = port or free_port(host)  # fixed up front: URLs are known before start() and survive restarts
        self.user, self.password = user, password
        self._mounts: dict[str, tuple[str, bool]] = {}
        self._server = None
        self._loop = None
        self._thread: threading.Thread | None = None
        self._source = None

    def add_launch(self, path: str, launch: str, shared: bool = False) -> str:
        """Mount a launch line whose payloader is named pay0; returns the mount's URL."""
        self._mounts[path] = (launch, shared)
        return self.url(path)

    def add_file(self, path: str, video: str) -> str:
        """Mount a file; each new connection plays it from the start."""
        return self.add_launch(path, f"( filesrc location={quote(video)} ! parsebin ! rtph264pay name=pay0 pt=96 )")

    def add_test_pattern(
        self, path: str, width: int = 320, height: int = 240, fps: int = 15, pattern: str = "ball"
    ) -> str:
        return self.add_launch(
            path,
            f"( videotestsrc is-live=true pattern={pattern} ! video/x-raw,width={width},height={height},"
            f"framerate={fps}/1 ! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast "
            f"key-int-max={fps} threads=1 ! rtph264pay name=pay0 pt=96 config-interval=1 )",
            shared=True,
        )

    def url(self, path: str, with_credentials: bool = False) -> str:
        auth = f"{self.user}:{self.password}@" if with_credentials and self.user else ""
        return f"rtsp://{auth}{self.host}:{self.port}{path}"

    def start(self) -> RtspServer:
        GLib, R, Gst = self._GLib, self._R, init()[0]
        server = R.RTSPServer()
        server.set_address(self.host)
        server.set_service(str(self.port))
        mounts = server.get_mount_points()
        for path, (launch, shared) in self._mounts.items():
            factory = R.RTSPMediaFactory()
            factory.set_launch(launch)
            factory.set_shared(shared)
            if self.user:
                factory.add_role_from_structure(
                    Gst.Structure.new_from_string(
                        "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
                    )
                )
            mounts.add_factory(path, factory)
        if self.user:
            auth = R.RTSPAuth()
            token = R.RTSPToken()
            token.set_string("media.factory.role", "user")
            auth.add_basic(R.RTSPAuth.make_basic(self.user, self.password or ""), token)
            server.set_auth(auth)
        context = GLib.MainContext.new()
        try:
            source = server.create_source(None)
        except GLib.Error as exc:
            raise SourceError(f"RTSP server cannot listen on {self.host}:{self.port}: {exc.message}") from None
        source.attach(context)
        self.port = server.get_bound_port()
        self._server, self._source = server, source
        self._loop = GLib.MainLoop.new(context, False)
        started = threading.Event()

        def run():
            context.push_thread_default()
            self._loop.run()
            context.pop_thread_default()

        idle = GLib.idle_source_new()  # runs once the loop turns: the server is serving
        idle.set_callback(lambda *_: started.set() or False)
        idle.attach(context)
        self._thread = threading.Thread(target=run, name=f"rtsp-server-{self.port}", daemon=True)
        self._thread.start()
        if not started.wait(5):
            raise SourceError("RTSP server main loop did not start")
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        R = self._R
        self._server.client_filter(lambda *_: R.RTSPFilterResult.REMOVE)
        self._source.destroy()
        self._loop.quit()
        self._thread.join(5)
        self._server = self._source = self._loop = self._thread = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
