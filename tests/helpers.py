"""Helpers the tests share."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The installed command, as a user runs it."""
    exe = os.path.join(os.path.dirname(sys.executable), "lvlm-var")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
