"""`lvlm-var demo`: the whole pipeline on a live RTSP stream, scored against ground truth.

A synthetic video of several consecutive actions (performers held out of X-Sub training, all
three cameras) is served by a local RTSP server; `serve` runs RTSP -> GStreamer -> VST -> ZeroMQ
-> llama.cpp -> sinks in one process and the live table shows provisional (VST) and final (LLM)
labels with explanations. At the end: accuracy of both against the video's ground truth and the
latency figures, and the action events scored on the stream's own clock (`edge_runtime.scoring`:
frame accuracy, segmental F1 at IoU 0.10/0.25/0.50, false events per idle minute), printed and
written to OUT/report.json with a timeline PNG (results and events in OUT/results.jsonl).

Ground truth of a window: the action whose span overlaps the window most on the stream's clock,
if it covers at least a third of the window; windows mostly between actions are not scored.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading

import numpy as np

from edge_runtime.sinks import Sink

TEST_PERFORMERS = (3, 6, 7, 10, 11, 12)  # not in the X-Sub training list


def render_video(path: str, actions: int, seed: int, fps: int = 15, size: int = 112) -> list[dict]:
    """Write an H.264 video of `actions` consecutive clips (the order and performers drawn from
    `seed`); returns the ground-truth segments."""
    from streams.writer import VideoWriter
    from vst.actions import ACTIONS
    from vst.ntu import ClipName
    from vst.synth import SynthConfig, render_clip

    rng = np.random.default_rng(seed)
    cfg = SynthConfig(size=size, fps=fps)  # the default dataset's rooms and cameras; its test performers

    order = rng.permutation(len(ACTIONS))[:actions]
    segments, offset = [], 0
    with VideoWriter(path + ".part.mp4", size, size, fps) as w:
        for k, idx in enumerate(order):
            a = ACTIONS[int(idx)]
            name = ClipName(
                setup=1,
                camera=k % 3 + 1,
                performer=int(rng.choice(TEST_PERFORMERS)),
                replication=int(rng.integers(1, 3)),
                action=a.ntu_id,
            )
            clip = render_clip(cfg, name)
            for frame in clip.frames:
                w.write(frame)
            at = clip.attributes
            segments.append(
                {
                    "label": a.name,
                    "clip": name.stem,
                    "start": offset + at["action_start_frame"],
                    "end": offset + at["action_end_frame"],
                    "explanation": at["explanation"],
                }
            )
            offset += len(clip.frames)
    os.replace(path + ".part.mp4", path)
    return segments


def truth(segments: list[dict], first: int, last: int) -> str | None:
    width = last - first + 1
    best, overlap = None, 0
    for s in segments:
        o = min(last + 1, s["end"]) - max(first, s["start"])
        if o > overlap:
            best, overlap = s["label"], o
    return best if overlap >= width / 3 else None


class Recorder(Sink):
    def __init__(self):
        self.windows, self.results, self.events = [], [], []
        self.lock = threading.Lock()

    def event(self, e) -> None:
        with self.lock:
            self.events.append(e)

    def window(self, w) -> None:
        with self.lock:
            self.windows.append(w)

    def result(self, r) -> None:
        with self.lock:
            self.results.append(r)


def score(rec: Recorder, segments: list[dict], fps: int) -> dict:
    if not rec.windows:
        return {"windows": 0}
    t0 = min(w.t_start_ns for w in rec.windows)

    def frames(w):
        """The window's frames of the video: its stream timestamps (the RTSP server plays the file
        from its start for the client), the wall clock from the first window where it has none."""
        if w.pts_start_ns is not None:
            return round(w.pts_start_ns / 1e9 * fps), round(w.pts_end_ns / 1e9 * fps)
        return round((w.t_start_ns - t0) / 1e9 * fps), round((w.t_end_ns - t0) / 1e9 * fps)

    prov = [(w.provisional_label, truth(segments, *frames(w))) for w in rec.windows]
    final = [(r.label, truth(segments, *frames(r))) for r in rec.results]
    prov = [(p, t) for p, t in prov if t is not None]
    final = [(p, t) for p, t in final if t is not None]

    def pct(xs, q):
        return float(np.percentile(xs, q)) if xs else None

    tok = [w.capture_to_tokens_ms for w in rec.windows]
    lab = [r.capture_to_tokens_ms + r.tokens_to_label_ms for r in rec.results]
    expl = [r.tokens_to_explanation_ms for r in rec.results if r.tokens_to_explanation_ms is not None]
    return {
        "windows": len(rec.windows),
        "results": len(rec.results),
        "scored_windows": len(prov),
        "scored_results": len(final),
        "provisional_accuracy": float(np.mean([p == t for p, t in prov])) if prov else None,
        "final_accuracy": float(np.mean([p == t for p, t in final])) if final else None,
        "capture_to_provisional_ms": {"p50": pct(tok, 50), "p99": pct(tok, 99)},
        "capture_to_label_ms": {"p50": pct(lab, 50), "p99": pct(lab, 99)},
        "tokens_to_explanation_ms": {"p50": pct(expl, 50), "p99": pct(expl, 99)},
        "explanations": [
            {"label": r.label, "probability": round(r.probability, 3), "explanation": r.explanation}
            for r in rec.results
            if r.explanation
        ][:5],
        "median_probability": statistics.median([r.probability for r in rec.results]) if rec.results else None,
    }


def score_demo_events(rec: Recorder, segments: list[dict], fps: int, seconds: float, plot: str | None) -> dict:
    """The run's ended events against the video's true segments, on the stream's clock (the RTSP
    server plays the file from its start for the client, so stream time is video time)."""
    from edge_runtime.scoring import plot_timeline, score_events

    truth = [(s["label"], s["start"] / fps, s["end"] / fps) for s in segments]
    events = [(e.label, e.start_s, e.end_s) for e in rec.events if e.state == "end"]
    if plot:
        plot_timeline(truth, events, seconds, plot, "truth (above) and the events the demo raised (below)")
    return score_events(truth, events, seconds, fps)


def run_demo(bundle: str, actions: int, seed: int, out: str | None, console: bool = True) -> int:
    from edge_runtime.config import load
    from edge_runtime.service import open_bundle, serve
    from streams.rtsp_server import RtspServer

    manifest, _ = open_bundle(bundle)
    fps = manifest["vst"]["fps"]
    out = out or os.path.join(os.path.dirname(os.path.abspath(bundle)), "demo")
    os.makedirs(out, exist_ok=True)
    # the pose front end reads the whole view, larger than the own encoder's R x R frames
    size = 256 if manifest["vst"].get("frontend") == "pose" else 112
    video = os.path.join(out, f"actions-{actions}-{seed}-{size}px.mp4")
    truth_path = video + ".json"
    if not (os.path.exists(video) and os.path.exists(truth_path)):
        print(f"[demo] rendering {actions} actions by held-out performers ...", flush=True)
        segments = render_video(video, actions, seed, fps=fps, size=size)
        with open(truth_path, "w") as f:
            json.dump(segments, f, indent=1)
    with open(truth_path) as f:
        segments = json.load(f)
    server = RtspServer(host="127.0.0.1", port=0)
    url = server.add_file("/demo", video)
    server.start()
    seconds = (max(s["end"] for s in segments) + 2 * fps) / fps
    print(f"[demo] streaming {video} ({seconds:.0f} s) at {url}", flush=True)
    rec = Recorder()
    results_path = os.path.join(out, "results.jsonl")
    if os.path.exists(results_path):
        os.remove(results_path)
    cfg = load(
        None,
        {
            "bundle": bundle,
            "name": "demo",
            "streams": [{"id": "demo", "uri": url, "max_reconnects": 0}],
            "bus": {"windows": "inproc://windows", "collect": "inproc://collect", "results": "inproc://results"},
            "llm": {
                "workers": 1,
                "threads": max(1, (os.cpu_count() or 2) - 1),
                "explain_interval_s": 1.0,
                "deadline_s": 3.0,
            },
            "sinks": {"console": console, "jsonl": results_path},
        },
    )
    try:
        stats = serve(cfg, until_done=True, duration_s=seconds + 15, extra_sinks=[rec])
    finally:
        server.stop()
    report = score(rec, segments, fps)
    report.update({"video": video, "truth": truth_path, "stats": stats})
    report["events"] = score_demo_events(rec, segments, fps, seconds, os.path.join(out, "timeline.png"))
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    if not rec.windows:
        print("lvlm-var demo: error: no frames reached the VST (see the log above)", file=sys.stderr)
        return 1
    pa, fa = report["provisional_accuracy"], report["final_accuracy"]
    print(
        f"[demo] {report['windows']} windows, {report['results']} LLM results "
        f"({report['scored_windows']}/{report['scored_results']} inside an action)"
    )
    print(
        f"[demo] accuracy: provisional (VST head) {pa:.1%}, final (LLM worker) {fa:.1%}"
        if pa is not None and fa is not None
        else "[demo] too few scored windows for an accuracy"
    )
    print(
        f"[demo] latency p50/p99: capture->provisional {report['capture_to_provisional_ms']['p50']:.0f}/"
        f"{report['capture_to_provisional_ms']['p99']:.0f} ms, capture->label "
        f"{(report['capture_to_label_ms']['p50'] or 0):.0f}/{(report['capture_to_label_ms']['p99'] or 0):.0f} ms"
    )
    ev = report["events"]
    print(
        f"[demo] events on stream time: {ev['events']} for {ev['true_segments']} actions, frame accuracy "
        f"{ev['frame_accuracy']:.1%}, segment F1@0.10/0.25/0.50 "
        + "/".join(f"{v:.2f}" for v in ev["segment_f1"].values())
        + f"; timeline: {out}/timeline.png"
    )
    for e in report["explanations"][:3]:
        print(f"[demo]   {e['label']} ({e['probability']:.2f}): {e['explanation']}")
    print(f"[demo] report: {out}/report.json, results: {results_path}")
    return 0
