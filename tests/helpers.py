"""Helpers the tests share."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The installed command, as a user runs it."""
    exe = os.path.join(os.path.dirname(sys.executable), "lvlm-var")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)


def action_event(eid=0, state="update", label="falling", start=1.0, end=2.0, p=0.9, stream="cam1", track=None):
    """An ActionEvent as the ingest's event tracker sends it."""
    from edge_runtime.messages import ActionEvent

    return ActionEvent(
        stream=stream,
        event_id=eid,
        state=state,
        label=label,
        probability=p,
        explanation="The person falls.",
        start_s=start,
        end_s=end,
        windows=2,
        t_start_ns=0,
        t_end_ns=0,
        bundle="b",
        track=track,
    )
