"""Events scored on stream time: frame accuracy, segmental F1 at IoU thresholds, false events."""

import pytest

from edge_runtime.scoring import frame_accuracy, plot_timeline, score_events, segment_f1

TRUTH = [("falling", 2.0, 4.0), ("clapping", 6.0, 8.0)]


def test_perfect_events_score_one():
    s = score_events(TRUTH, list(TRUTH), duration_s=10.0, fps=10)
    assert s["frame_accuracy"] == 1.0 and set(s["segment_f1"].values()) == {1.0}
    assert s["false_events_per_idle_minute"] == 0.0


def test_shifted_wrong_and_false_events():
    events = [("falling", 3.0, 5.0), ("hand waving", 6.0, 8.0), ("clapping", 8.5, 9.0)]
    # falling overlaps 1 s of a 3 s union: IoU 1/3; the other two match no true segment's label
    assert segment_f1(TRUTH, events, 0.10) == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert segment_f1(TRUTH, events, 0.50) == 0.0
    # frames: 100 at 10/s; wrong are 2.0-3.0 (10), 4.0-5.0 (10), 6.0-8.0 (20), 8.5-9.0 (5)
    assert frame_accuracy(TRUTH, events, 10.0, 10) == pytest.approx(55 / 100)
    # one event (8.5-9.0) touches no true segment; 6 s of the video are idle
    assert score_events(TRUTH, events, 10.0, 10)["false_events_per_idle_minute"] == pytest.approx(10.0)


def test_one_true_segment_matches_one_event_only():
    events = [("falling", 2.0, 3.0), ("falling", 3.0, 4.0)]  # split in two: each IoU 0.5
    assert segment_f1([TRUTH[0]], events, 0.50) == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_timeline_png(tmp_path):
    path = tmp_path / "t.png"
    plot_timeline(TRUTH, [("falling", 2.5, 4.0)], 10.0, str(path), "demo")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
