"""What a VST run folder records of itself (RUN/train_config.json): the cache it was trained on
and the performers it was not, for the steps that come after training (fine-tune, export, bench)."""

from __future__ import annotations

import json
import os


def training_record(run: str) -> dict:
    """RUN/train_config.json, what `train vst` recorded of a run ({} when it is missing or unreadable)."""
    try:
        with open(os.path.join(run, "train_config.json")) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def training_cache(run: str) -> str | None:
    """The prepared cache a VST run was trained on (recorded in RUN/train_config.json), if it is
    still there; None otherwise."""
    cache = training_record(run).get("cache")
    return cache if isinstance(cache, str) and os.path.exists(os.path.join(cache, "index.json")) else None


def held_out(run: str) -> set[str]:
    """The training performers ('P004') a VST run was not trained on (`train vst --hold-out`)."""
    return set(training_record(run).get("held_out") or [])
