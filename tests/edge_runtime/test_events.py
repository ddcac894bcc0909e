"""Window results -> action events: hysteresis, idle labels, per-label rules, track ends, times on
the stream's own clock."""

from edge_runtime.config import EventRule, EventsConfig
from edge_runtime.events import EventTracker
from edge_runtime.messages import ActionResult, decode, encode

STRIDE = 0.5  # seconds between windows


def result(k: int, label: str, p: float = 0.9, track=None, wall_offset_s: float = 0.0, explanation=None):
    """The k-th window of a stream: 1 s long, one every STRIDE seconds of stream time."""
    a = k * STRIDE
    ns = lambda s: int(s * 1e9)  # noqa: E731
    return ActionResult(
        stream="cam",
        window_seq=k,
        t_start_ns=ns(a + 1000 + wall_offset_s),
        t_end_ns=ns(a + 1 + 1000 + wall_offset_s),
        tokens=(1, 2),
        provisional_label=label,
        provisional_score=p,
        label=label,
        probability=p,
        explanation=explanation,
        capture_to_tokens_ms=1.0,
        tokens_to_label_ms=1.0,
        tokens_to_explanation_ms=None,
        bundle="b",
        track=track,
        pts_start_ns=ns(a),
        pts_end_ns=ns(a + 1),
    )


def track(labels, cfg=EventsConfig(), **kw):
    out = []
    t = EventTracker(cfg, STRIDE, "b", out.append)
    for k, item in enumerate(labels):
        label, p = item if isinstance(item, tuple) else (item, 0.9)
        t.result(result(k, label, p, **kw))
    t.close_all()
    return out, t


def spans(events):
    return [(e.label, round(e.start_s, 2), round(e.end_s, 2)) for e in events if e.state == "end"]


def test_an_action_between_idle_stretches_is_one_event_with_its_times():
    idle = ["no action"] * 4
    events, t = track(idle + ["falling"] * 5 + idle)
    # windows 4..8 hold; each stands for the stride at its centre (window k: centre k/2 + 0.5)
    assert spans(events) == [("falling", 2.25, 4.75)]
    assert [e.state for e in events] == ["start", "update", "update", "update", "end"]
    assert t.counts == {"started": 1, "ended": 1}
    start = events[0]
    assert start.windows == 2 and start.start_s == 2.25  # opened by its second window, dated from its first


def test_one_stray_window_neither_opens_nor_breaks_an_event():
    events, _ = track(["no action", "clapping", "no action", "no action"])
    assert not events  # a single window is not an event
    events, _ = track(["walking", "walking", "walking", "sitting down", "walking", "walking", "no action", "no action"])
    assert spans(events) == [("walking", 0.25, 3.25)]


def test_idle_labels_unlikely_windows_and_label_changes():
    events, _ = track(["no action"] * 6)
    assert not events
    events, _ = track([("falling", 0.3)] * 6)  # below min_probability: no event
    assert not events
    events, _ = track(["clapping"] * 3 + ["hand waving"] * 3)
    assert spans(events) == [("clapping", 0.25, 1.75), ("hand waving", 1.75, 3.25)]


def test_per_label_rules():
    cfg = EventsConfig(labels={"falling": EventRule(open_windows=1, min_probability=0.3)})
    events, _ = track(["no action", ("falling", 0.4), "no action", "no action"], cfg)
    assert spans(events) == [("falling", 0.75, 1.25)]
    assert track(["no action", ("clapping", 0.4), "no action"], cfg)[0] == []


def test_people_have_their_own_events_and_a_track_end_closes_theirs():
    out = []
    t = EventTracker(EventsConfig(), STRIDE, "b", out.append)
    for k in range(3):
        t.result(result(k, "falling", track=0))
        t.result(result(k, "clapping", track=1))
    t.end("cam", 0)
    assert [(e.track, e.label) for e in out if e.state == "end"] == [(0, "falling")]
    t.close_all()
    assert sorted((e.track, e.label) for e in out if e.state == "end") == [(0, "falling"), (1, "clapping")]
    assert len({e.event_id for e in out}) == 2


def test_events_do_not_move_with_the_wall_clock():
    """A client that starts late or a slow worker shifts the wall clock, not the stream's."""
    labels = ["no action"] * 3 + ["squat down"] * 4 + ["no action"] * 3
    assert spans(track(labels)[0]) == spans(track(labels, wall_offset_s=3.0)[0])


def test_an_event_goes_over_the_wire():
    events, _ = track(["falling"] * 3, explanation=None)
    e = events[-1]
    assert decode(encode(e)) == e and e.explanation is None
