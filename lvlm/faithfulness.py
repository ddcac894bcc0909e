"""Explanation quality: the faithfulness check against a clip's motion attributes, and ROUGE-L.

Faithfulness, precisely (lower-cased text, phrases matched on word boundaries):
  limb         the clip's limb phrase ("right hand", "both hands", "whole body", "head", ...)
               appears, and no other limb phrase of the action table does;
  motion       the clip's motion phrase from the action table ("to the mouth", "side to side
               above the shoulder", ...) appears;
  repetitions  the count word ("once", "twice", "three times", ...) of the repetitions the window
               holds appears, and no other count word does (`vst.actions.window_attributes`: a
               repetition counts where its defining instant lies inside the window; evaluation
               reports agreement with the whole clip's count beside it).
An explanation is faithful when all three hold. Every reference explanation passes (tested), so
the check measures what the model says, not how the references are phrased.

Beside it, `faithful_near` accepts for the repetitions any count the window holds when moved by
up to `vst.actions.EDGE_FRAMES` frames either way (`repetitions_near`): a repetition whose instant
lies that close to the window's edge is in or out by a frame or two. It is reported, not the
target's definition.
"""

from __future__ import annotations

import re

from vst.actions import ACTIONS, TIMES, times_word

LIMBS = sorted(
    {f"{side} {a.limb}" for a in ACTIONS if a.limb in ("hand", "leg") for side in ("left", "right")}
    | {a.limb for a in ACTIONS if a.limb not in ("hand", "leg")}
)
COUNTS = sorted(TIMES.values())


def _has(text: str, phrase: str) -> bool:
    return re.search(r"\b" + re.escape(phrase.lower()) + r"\b", text) is not None


def _mentions(text: str, phrases: list[str]) -> set[str]:
    """Phrases present, ignoring those only present inside a longer present phrase."""
    found = {p for p in phrases if _has(text, p)}
    return {p for p in found if not any(p != q and _has(q, p) for q in found)}


def check(explanation: str, attributes: dict) -> dict[str, bool]:
    """{limb, motion, repetitions, faithful} for one explanation against its clip's attributes,
    and {repetitions_near, faithful_near} where the attributes list `repetitions_near`."""
    text = " ".join(explanation.lower().split())
    limb = _mentions(text, LIMBS) == {attributes["limb"].lower()}
    motion = _has(text, attributes["motion"])
    accepted = [times_word(int(n)) for n in attributes.get("repetitions_near") or []]
    count = times_word(int(attributes["repetitions"]))
    stated = _mentions(text, sorted(set(COUNTS) | {count} | set(accepted)))
    reps = stated == {count}
    out = {"limb": limb, "motion": motion, "repetitions": reps, "faithful": limb and motion and reps}
    if accepted:
        near = len(stated) == 1 and stated <= set(accepted)
        out.update(repetitions_near=near, faithful_near=limb and motion and near)
    return out


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens (longest common subsequence)."""
    a = re.findall(r"\w+", candidate.lower())
    b = re.findall(r"\w+", reference.lower())
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)
