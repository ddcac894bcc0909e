"""Action events scored against the true segments of a video, on the stream's own clock: the
temporal action segmentation metrics (MS-TCN and its successors).

- frame accuracy: each frame's label (the event covering it, else the idle label) against the
  truth (the segment covering it, else idle), over the whole video;
- segmental F1 at IoU thresholds: an event is a true positive when its IoU with a true segment
  of the same label, not matched before, reaches the threshold; idle stretches are no segments;
- false events per minute of idle video: events that overlap no true segment at all.

Segments and events are (label, start_s, end_s). The demo, its test and the bench use this.
"""

from __future__ import annotations

IDLE = "no action"


def _label_at(segments: list[tuple[str, float, float]], t: float, idle: str) -> str:
    for label, a, b in segments:
        if a <= t < b:
            return label
    return idle


def frame_accuracy(truth: list, events: list, duration_s: float, fps: float, idle: str = IDLE) -> float:
    n = max(1, int(round(duration_s * fps)))
    ts = [(k + 0.5) / fps for k in range(n)]
    return sum(_label_at(truth, t, idle) == _label_at(events, t, idle) for t in ts) / n


def _iou(a: tuple, b: tuple) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[1], b[1]))
    union = max(a[2], b[2]) - min(a[1], b[1])
    return inter / union if union > 0 else 0.0


def segment_f1(truth: list, events: list, threshold: float) -> float:
    matched = [False] * len(truth)
    tp = 0
    for e in sorted(events, key=lambda x: x[1]):
        best, k = 0.0, -1
        for i, t in enumerate(truth):
            if t[0] == e[0] and not matched[i]:
                iou = _iou(e, t)
                if iou > best:
                    best, k = iou, i
        if k >= 0 and best >= threshold:
            matched[k] = True
            tp += 1
    fp, fn = len(events) - tp, len(truth) - tp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def false_events_per_minute(truth: list, events: list, duration_s: float) -> float | None:
    """Events touching no true segment, per minute of idle time (None: the video has none)."""
    idle_s = duration_s - sum(b - a for _, a, b in truth)
    false = sum(all(min(e[2], t[2]) <= max(e[1], t[1]) for t in truth) for e in events)
    return false / (idle_s / 60) if idle_s > 1e-6 else None


def score_events(truth: list, events: list, duration_s: float, fps: float, idle: str = IDLE) -> dict:
    return {
        "frame_accuracy": frame_accuracy(truth, events, duration_s, fps, idle),
        "segment_f1": {f"{q:.2f}": segment_f1(truth, events, q) for q in (0.10, 0.25, 0.50)},
        "events": len(events),
        "true_segments": len(truth),
        "false_events_per_idle_minute": false_events_per_minute(truth, events, duration_s),
    }


def plot_timeline(truth: list, events: list, duration_s: float, path: str, title: str = "") -> None:
    """Truth above, events below, one colour per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({s[0] for s in truth} | {e[0] for e in events})
    cmap = plt.get_cmap("tab20")
    colour = {lab: cmap(i % 20) for i, lab in enumerate(labels)}
    fig, ax = plt.subplots(figsize=(max(8, duration_s / 6), 2.4))
    for row, spans in ((1, truth), (0, events)):
        for label, a, b in spans:
            ax.broken_barh([(a, b - a)], (row - 0.4, 0.8), color=colour[label])
    ax.set_yticks([0, 1], ["events", "truth"])
    ax.set_xlim(0, duration_s)
    ax.set_xlabel("stream time (s)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[lab]) for lab in labels]
    ax.legend(handles, labels, fontsize=6, ncol=min(6, len(labels)), loc="upper center", bbox_to_anchor=(0.5, -0.5))
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
