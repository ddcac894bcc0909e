"""The ZeroMQ bus. The ingest is the hub and binds all three endpoints:

    windows   PUSH  -> LLM workers connect PULL: ZeroMQ load-balances windows across them;
                       a bounded queue (HWM) per worker, a full or absent pool drops windows (counted)
    collect   PULL  <- LLM workers connect PUSH with their ActionResults
    results   PUB   -> monitors and remote sinks connect SUB; topic = stream id

Endpoints are inproc:// (one process: pass the same zmq.Context), ipc:// or tcp://. On tcp://
CURVE is mandatory: the ingest has a server key pair and an allow-list folder of client public
keys (ZAP authenticator thread); workers and monitors have their own key pair and the server's
public key. A client that is not on the list never completes the handshake, gets nothing, and
the server keeps serving everybody else. Every socket has linger 0.
"""

from __future__ import annotations

import logging
import os

import zmq

from edge_runtime.config import BusConfig

log = logging.getLogger(__name__)


class BusError(RuntimeError):
    """A bus that cannot be set up (missing keys, endpoint in use): one line."""


def needs_curve(endpoint: str) -> bool:
    return endpoint.startswith("tcp://")


def generate_keys(folder: str, name: str) -> tuple[str, str]:
    """(public key file, secret key file) for `name` in `folder` (lvlm-var keys generate)."""
    import zmq.auth

    os.makedirs(folder, exist_ok=True)
    public, secret = zmq.auth.create_certificates(folder, name)
    os.chmod(secret, 0o600)
    return public, secret


def _load(path: str | None, what: str, secret: bool):
    import zmq.auth

    if not path:
        raise BusError(f"a tcp:// endpoint needs bus.curve.{what}")
    if not os.path.exists(path):
        raise BusError(f"bus.curve.{what}: no such key file {path} (create keys with `lvlm-var keys generate`)")
    try:
        public, private = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise BusError(f"bus.curve.{what}: {path} is not a ZeroMQ certificate ({exc})") from None
    if secret and private is None:
        raise BusError(f"bus.curve.{what}: {path} holds no secret key (use the .key_secret file)")
    return public, private


class Hub:
    """The ingest side: windows PUSH, collect PULL, results PUB (all bound)."""

    def __init__(self, cfg: BusConfig, context: zmq.Context | None = None):
        self.cfg = cfg
        self.context = context or zmq.Context.instance()
        self.auth = None
        self.counters = {"windows_sent": 0, "windows_dropped_no_worker": 0, "results_published": 0}
        try:
            self.windows = self._bind(zmq.PUSH, cfg.windows, sndhwm=cfg.window_hwm)
            self.collect = self._bind(zmq.PULL, cfg.collect)
            self.results = self._bind(zmq.PUB, cfg.results)
        except zmq.ZMQError as exc:
            self.close()
            raise BusError(f"cannot bind the bus: {exc}") from None

    def _bind(self, kind: int, endpoint: str, sndhwm: int | None = None) -> zmq.Socket:
        s = self.context.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        if sndhwm is not None:
            s.setsockopt(zmq.SNDHWM, sndhwm)
        if needs_curve(endpoint):
            self._server_curve(s)
        s.bind(endpoint)
        return s

    def _server_curve(self, s: zmq.Socket) -> None:
        curve = self.cfg.curve
        _, secret = _load(curve.server_secret_key if curve else None, "server_secret_key", secret=True)
        if not curve.authorized_keys or not os.path.isdir(curve.authorized_keys):
            raise BusError("a tcp:// endpoint needs bus.curve.authorized_keys: a folder of client public keys")
        if self.auth is None:
            from zmq.auth.thread import ThreadAuthenticator

            self.auth = ThreadAuthenticator(self.context, log=logging.getLogger("lvlm-var.zap"))
            self.auth.start()
            self.auth.configure_curve(domain="*", location=curve.authorized_keys)
        s.curve_secretkey = secret
        s.curve_publickey = zmq.curve_public(secret)
        s.curve_server = True

    def send_window(self, data: bytes) -> bool:
        try:
            self.windows.send(data, zmq.NOBLOCK)
        except zmq.Again:  # no worker connected, or every worker's queue is full
            self.counters["windows_dropped_no_worker"] += 1
            return False
        self.counters["windows_sent"] += 1
        return True

    def publish(self, topic: str, data: bytes) -> None:
        """A message on the results PUB: topic = stream id, or "_health" for Health messages."""
        self.results.send_multipart([topic.encode(), data])
        if not topic.startswith("_"):
            self.counters["results_published"] += 1

    def close(self) -> None:
        for name in ("windows", "collect", "results"):
            s = getattr(self, name, None)
            if s is not None:
                s.close(0)
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


def client_socket(context: zmq.Context, kind: int, endpoint: str, cfg: BusConfig, **opts) -> zmq.Socket:
    """A connected socket of a worker or monitor (CURVE client on tcp://)."""
    s = context.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    for k, v in opts.items():
        s.setsockopt(getattr(zmq, k.upper()), v)
    if needs_curve(endpoint):
        curve = cfg.curve
        public, secret = _load(curve.client_secret_key if curve else None, "client_secret_key", secret=True)
        server, _ = _load(curve.server_public_key if curve else None, "server_public_key", secret=False)
        s.curve_secretkey, s.curve_publickey, s.curve_serverkey = secret, public, server
    s.connect(endpoint)
    return s
