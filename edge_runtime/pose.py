"""The pose front end: BlazePose on each frame, one track per person, the VST's pose feature per
track. MediaPipe's pose graph, in numpy around two ONNX engines:

1. detector (224 x 224, the whole frame letterboxed, not cropped) -> person boxes with four
   keypoints (hip centre, a point setting the body's size and rotation, shoulder centre, ...);
   SSD anchors, weighted non-maximum suppression;
2. each person's region of interest: a square around the hip centre, rotated so the body is
   upright, 2 x the hip-to-keypoint-1 distance x 1.25;
3. landmark model on that region warped to 256 x 256 -> 33 landmarks (+ 6 auxiliary) with
   visibility, and a presence score; the auxiliary landmarks 33/34 give the next frame's region,
   so a person is tracked without the detector until the presence drops (the track ends) or the
   detector runs again (every `detect_every` frames, and whenever a stream has nobody) to find
   people who came in.

Each track's landmarks can pass a One-Euro filter (as in MediaPipe's pose graph; `smoothing`):
still joints are held steadier, fast ones follow with little lag.

A person's feature is the NTU 25-joint layout (`vst.joints`): (x, y) in units of the frame
height and a visibility, which the token engine normalises to the person itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vst.joints import BLAZEPOSE_TO_NTU

DETECTOR_SIZE = 224
LANDMARK_SIZE = 256
LANDMARKS = 33  # the body's; the model gives 39, the last six for regions of interest
FACE = 11  # landmarks 0-10: nose, eyes, ears, mouth


def ssd_anchors() -> np.ndarray:
    """The detector's 2254 anchor centres [n, 2] (x, y in [0, 1]): strides 8, 16, 32 on 224 px,
    2, 2 and 6 anchors per cell (MediaPipe's SsdAnchorsCalculator for pose_detection, fixed
    anchor size 1)."""
    out = []
    for stride, per_cell in ((8, 2), (16, 2), (32, 6)):
        g = DETECTOR_SIZE // stride
        ys, xs = np.meshgrid((np.arange(g) + 0.5) / g, (np.arange(g) + 0.5) / g, indexing="ij")
        cells = np.stack([xs.ravel(), ys.ravel()], 1)
        out.append(np.repeat(cells, per_cell, axis=0))
    return np.concatenate(out).astype(np.float32)


ANCHORS = ssd_anchors()


@dataclass
class Region:
    """A rotated square in pixels: centre, side, rotation (radians; MediaPipe's sense)."""

    cx: float
    cy: float
    size: float
    angle: float

    def box(self) -> tuple[float, float, float, float]:
        h = self.size / 2
        return self.cx - h, self.cy - h, self.cx + h, self.cy + h


def iou(a: tuple, b: tuple) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def aligned_region(start: np.ndarray, end: np.ndarray, scale: float = 1.25) -> Region:
    """The region MediaPipe builds from two keypoints (pixels): centred on `start`, side twice
    their distance times `scale`, rotated so that `end` is straight above `start`."""
    dx, dy = float(end[0] - start[0]), float(end[1] - start[1])
    angle = math.pi / 2 - math.atan2(-dy, dx)
    angle = (angle + math.pi) % (2 * math.pi) - math.pi
    return Region(float(start[0]), float(start[1]), 2 * math.hypot(dx, dy) * scale, angle)


def warp(rgb: np.ndarray, region: Region, size: int) -> np.ndarray:
    """The region of an RGB frame [H, W, 3] resampled (bilinear) to float32 [size, size, 3] in
    [0, 1]; outside the frame is black."""
    h, w = rgb.shape[:2]
    padded = np.zeros((h + 2, w + 2, 3), np.uint8)  # a black border: points outside sample it
    padded[1:-1, 1:-1] = rgb
    t = ((np.arange(size, dtype=np.float32) + 0.5) / size - 0.5) * region.size
    c, s = math.cos(region.angle), math.sin(region.angle)
    x = np.clip(region.cx + 0.5 + t[None, :] * c - t[:, None] * s, 0, w + 0.999)
    y = np.clip(region.cy + 0.5 + t[None, :] * s + t[:, None] * c, 0, h + 0.999)
    x0, y0 = x.astype(np.int32), y.astype(np.int32)
    fx, fy = (x - x0.astype(np.float32))[..., None], (y - y0.astype(np.float32))[..., None]
    flat = padded.reshape(-1, 3)
    i = y0 * (w + 2) + x0
    top = flat[i] * (1 - fx) + flat[i + 1] * fx
    bottom = flat[i + w + 2] * (1 - fx) + flat[i + w + 3] * fx
    return (top + (bottom - top) * fy) * np.float32(1 / 255)


def unproject(points: np.ndarray, region: Region, size: int) -> np.ndarray:
    """Points [n, 2] in a warped crop's pixels -> the frame's pixels."""
    u = points / size - 0.5
    c, s = math.cos(region.angle), math.sin(region.angle)
    x = region.cx + (u[:, 0] * c - u[:, 1] * s) * region.size
    y = region.cy + (u[:, 0] * s + u[:, 1] * c) * region.size
    return np.stack([x, y], 1)


def letterbox_region(h: int, w: int) -> Region:
    """The whole frame as the detector sees it: a square around it, the frame centred."""
    return Region(w / 2, h / 2, float(max(h, w)), 0.0)


def decode_detections(boxes: np.ndarray, scores: np.ndarray, min_score: float, nms: float) -> list[dict]:
    """The detector's raw outputs for one frame ([2254, 12], [2254, 1]) -> people (score,
    box and keypoints in the 224 px input, normalised to [0, 1]) after weighted NMS."""
    s = 1 / (1 + np.exp(-np.clip(scores[:, 0], -80, 80)))  # exp(80) still fits a float32
    keep = np.nonzero(s >= min_score)[0]
    if not len(keep):
        return []
    raw, anchors, s = boxes[keep] / DETECTOR_SIZE, ANCHORS[keep], s[keep]
    centre = raw[:, :2] + anchors
    half = raw[:, 2:4] / 2
    box = np.concatenate([centre - half, centre + half], 1)
    kps = raw[:, 4:12].reshape(-1, 4, 2) + anchors[:, None]
    order = np.argsort(-s)
    out, used = [], np.zeros(len(s), bool)
    for i in order:
        if used[i]:
            continue
        members = [j for j in order if not used[j] and iou(tuple(box[i]), tuple(box[j])) > nms]
        used[members] = True
        wts = s[members][:, None]
        out.append(
            {
                "score": float(s[i]),
                "box": (box[members] * wts).sum(0) / wts.sum(),
                "keypoints": (kps[members] * wts[:, :, None]).sum(0) / wts.sum(),
            }
        )
    return out


def ntu_joints(landmarks: np.ndarray, visibility: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BlazePose landmarks [33, 2] and visibility [33] -> the NTU 25 joints [25, 2] and theirs
    (a joint made of several landmarks is seen as well as the least visible of them)."""
    joints = np.zeros((len(BLAZEPOSE_TO_NTU), 2), np.float32)
    vis = np.zeros(len(BLAZEPOSE_TO_NTU), np.float32)
    for j, parts in enumerate(BLAZEPOSE_TO_NTU):
        joints[j] = sum(w * landmarks[k] for k, w in parts)
        vis[j] = min(visibility[k] for k, _ in parts)
    return joints, vis


def _alpha(cutoff, dt: float):
    return 1 / (1 + 1 / (2 * math.pi * cutoff * dt))


class OneEuro:
    """The One-Euro filter (Casiez et al. 2012) over an array of points, as MediaPipe's
    LandmarksSmoothingCalculator runs it: the speed is measured in object sizes per second
    (`scale` = 1 / the object's size), the cutoff grows with it. A time that does not move forward
    (a restarted stream clock) starts the filter afresh."""

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.t: float | None = None
        self.raw = self.value = self.speed = None

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if self.t is None or t <= self.t or self.raw is None or self.raw.shape != x.shape:
            self.t, self.raw, self.value, self.speed = t, x, x, np.zeros_like(x)
            return x
        dt = t - self.t
        speed = (x - self.raw) * (scale / dt)
        self.speed = self.speed + _alpha(self.d_cutoff, dt) * (speed - self.speed)
        a = _alpha(self.min_cutoff + self.beta * np.abs(self.speed), dt)
        self.value = (self.value + a * (x - self.value)).astype(np.float32)
        self.t, self.raw = t, x
        return self.value


@dataclass
class Person:
    """One tracked person in one frame."""

    track: int
    landmarks: np.ndarray  # [33, 2] pixels
    visibility: np.ndarray  # [33]
    feature: np.ndarray  # [25 * 3]: the VST's frame feature
    presence: float


@dataclass
class Track:
    id: int
    region: Region
    face: tuple[float, float, float, float]  # the face's box in pixels: the detector's, then the landmarks'
    body: tuple[float, float, float, float] | None = None  # the landmarks' box, once tracked
    age: int = 0  # frames tracked
    smooth: OneEuro | None = None  # the landmarks' filter
    smooth_roi: OneEuro | None = None  # the region's two keypoints'
    visibility: np.ndarray | None = None  # low-passed


def _same_face(a: tuple, b: tuple) -> bool:
    """Two face boxes of one person: centres closer than half the larger face. (The crop regions
    are no test: two people shoulder to shoulder have regions that overlap by half.)"""
    size = max(a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1])
    return math.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2) < size / 2


def _inside(point: tuple[float, float], box: tuple[float, float, float, float], margin: float = 0.25) -> bool:
    """The point lies in the box grown by `margin` of its larger side on every edge."""
    m = margin * max(box[2] - box[0], box[3] - box[1])
    return box[0] - m <= point[0] <= box[2] + m and box[1] - m <= point[1] <= box[3] + m


def _box(points: np.ndarray) -> tuple[float, float, float, float]:
    lo, hi = points.min(0), points.max(0)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


@dataclass
class StreamTracks:
    """The tracks of one stream, and its counters."""

    tracks: list[Track] = field(default_factory=list)
    lost: list[tuple[Track, int]] = field(default_factory=list)  # tracks out of sight, and for how many frames
    next_id: int = 0
    since_detect: int = 0
    started: int = 0
    ended: int = 0
    frames_without_person: int = 0
    frames: int = 0


@dataclass(frozen=True)
class PoseSettings:
    detect_every: int = 15  # frames between detector runs while people are tracked
    max_people: int = 4  # tracks per stream
    min_detection: float = 0.5  # detector score
    min_presence: float = 0.5  # landmark model's presence score: below it the track ends
    nms: float = 0.3
    same_person: float = 0.6  # IoU of two tracks' bodies above which they converged on one person
    keep_lost: int = 15  # frames a track out of sight is kept: a person found again where it was lost is that track
    # The One-Euro filter on each track's landmarks: off by default, as on the real clips it read
    # no better (head 9 of 17 with it, 10 without; pooled 8 of 17 both) with a VST trained on
    # unfiltered noise.
    smoothing: bool = False
    # Its cutoff (Hz) for a still joint and its growth per body size a second of speed. MediaPipe's
    # (0.05, 80), made for 30 frames/s, takes off a fifth of BlazePose's jitter at 15 frames/s; these
    # halve it and lag a joint moving 0.75 body sizes a second by 1.5 % of the body.
    min_cutoff: float = 0.5
    beta: float = 10.0
    fps: float = 15.0  # the frame rate assumed when frames come without times


class PoseFrontEnd:
    """frames of several streams -> the people in each, tracked. `detector` and `landmarks` are
    engines with `.run({input: array}) -> {output: array}` (ONNX Runtime or TensorRT), batch
    dynamic; each call batches every frame (detector) or every person (landmarks) it was given."""

    def __init__(self, detector, landmarks, settings: PoseSettings = PoseSettings()):
        self.detector, self.landmarks, self.settings = detector, landmarks, settings
        self.streams: dict[str, StreamTracks] = {}

    def stream(self, stream_id: str) -> StreamTracks:
        return self.streams.setdefault(stream_id, StreamTracks())

    def end_stream(self, stream_id: str) -> None:
        st = self.streams.pop(stream_id, None)
        if st is not None:
            st.ended += len(st.tracks) + len(st.lost)

    def alive(self, stream_id: str) -> set[int]:
        """The ids of a stream's tracks, those in sight and those lost a moment ago (their windows
        go on when they are found again)."""
        st = self.stream(stream_id)
        return {t.id for t in st.tracks} | {t.id for t, _ in st.lost}

    def process(self, frames: list[tuple[str, np.ndarray]], times: list[float] | None = None) -> list[list[Person]]:
        """(stream id, RGB uint8 [H, W, 3]) per frame, each stream at most once (a stream's next
        frame depends on this one's landmarks), and each frame's time in seconds on its stream's
        clock (without them, frames are taken `settings.fps` apart) -> the people of each frame."""
        if len({sid for sid, _ in frames}) != len(frames):
            raise ValueError("PoseFrontEnd.process: one frame per stream per call")
        cfg = self.settings
        states = [self.stream(sid) for sid, _ in frames]
        if times is None:
            times = [st.frames / cfg.fps for st in states]
        for st in states:
            st.frames += 1
        for st in states:  # a track lost for longer than keep_lost has ended
            kept = [(t, n + 1) for t, n in st.lost if n < cfg.keep_lost]
            st.ended += len(st.lost) - len(kept)
            st.lost = kept
        detect = [i for i, st in enumerate(states) if not st.tracks or st.since_detect >= cfg.detect_every]
        if detect:
            batch = (
                np.stack([warp(frames[i][1], letterbox_region(*frames[i][1].shape[:2]), DETECTOR_SIZE) for i in detect])
                * 2
                - 1
            )
            out = self.detector.run({"input_1": batch})
            for k, i in enumerate(detect):
                self._add_detections(states[i], frames[i][1].shape[:2], out["Identity"][k], out["Identity_1"][k])
                states[i].since_detect = 0
        crops, owners = [], []
        for i, st in enumerate(states):
            st.since_detect += 1
            for t in st.tracks:
                crops.append(warp(frames[i][1], t.region, LANDMARK_SIZE))
                owners.append((i, t))
        people: list[list[Person]] = [[] for _ in frames]
        if crops:
            out = self.landmarks.run({"input_1": np.stack(crops)})
            for k, (i, track) in enumerate(owners):
                person = self._landmarks(
                    track,
                    out["Identity"][k],
                    float(np.asarray(out["Identity_1"][k]).ravel()[0]),
                    frames[i][1].shape[0],
                    times[i],
                )
                if person is None:
                    states[i].tracks.remove(track)
                    states[i].lost.append((track, 0))
                else:
                    people[i].append(person)
        for i, st in enumerate(states):
            self._merge(st, people[i])
            if not people[i]:
                st.frames_without_person += 1
        return people

    def _add_detections(self, st: StreamTracks, hw: tuple[int, int], boxes: np.ndarray, scores: np.ndarray) -> None:
        cfg = self.settings
        h, w = hw
        side = max(h, w)
        pad = np.array([(side - w) / 2, (side - h) / 2])
        for det in decode_detections(boxes, scores, cfg.min_detection, cfg.nms):
            kp = det["keypoints"] * side - pad  # the letterboxed input's units -> the frame's pixels
            face = tuple(float(x) for x in (det["box"].reshape(2, 2) * side - pad).reshape(-1))
            if len(st.tracks) >= cfg.max_people or any(_same_face(face, t.face) for t in st.tracks):
                continue
            centre = ((face[0] + face[2]) / 2, (face[1] + face[3]) / 2)
            found = next((t for t, _ in st.lost if t.body and _inside(centre, t.body)), None)
            if found is not None:  # the same person, back where they were lost (a fall, a turn, a moment hidden)
                st.lost = [(t, n) for t, n in st.lost if t is not found]
                found.region, found.face = aligned_region(kp[0], kp[1]), face
                found.smooth = found.smooth_roi = found.visibility = None  # after a gap the filter starts afresh
                st.tracks.append(found)
                continue
            st.tracks.append(Track(st.next_id, aligned_region(kp[0], kp[1]), face))
            st.next_id += 1
            st.started += 1

    def _landmarks(self, track: Track, raw: np.ndarray, presence: float, frame_height: int, t: float) -> Person | None:
        if presence < self.settings.min_presence:
            return None
        lm = np.asarray(raw, np.float32).reshape(-1, 5)
        pts = unproject(lm[:, :2], track.region, LANDMARK_SIZE)
        vis = 1 / (1 + np.exp(-lm[:LANDMARKS, 3]))
        if self.settings.smoothing:
            if track.smooth is None:  # the region's keypoints as MediaPipe's pose graph smooths them
                track.smooth, track.smooth_roi = (
                    OneEuro(self.settings.min_cutoff, self.settings.beta),
                    OneEuro(0.01, 10.0),
                )
            body = pts[:LANDMARKS]
            lo, hi = body.min(0), body.max(0)
            scale = 2 / max(float((hi - lo).sum()), 1.0)  # 1 / the mean of the body box's width and height
            pts = np.concatenate([track.smooth(body, t, scale), track.smooth_roi(pts[LANDMARKS:], t, scale)])
            track.visibility = vis = (
                vis if track.visibility is None else track.visibility + 0.1 * (vis - track.visibility)
            )
        track.region = aligned_region(pts[33], pts[34])
        track.face, track.body = (
            _box(pts[:FACE]),
            _box(pts[:LANDMARKS][vis > 0.5] if (vis > 0.5).sum() > 1 else pts[:LANDMARKS]),
        )
        track.age += 1
        joints, jvis = ntu_joints(pts[:LANDMARKS], vis)
        feature = np.concatenate([joints / frame_height, jvis[:, None]], 1).reshape(-1).astype(np.float32)
        return Person(track.id, pts[:LANDMARKS], vis, feature, presence)

    def _merge(self, st: StreamTracks, people: list[Person]) -> None:
        """Two tracks that converged on one person: the younger one ends."""
        for a in sorted(st.tracks, key=lambda t: t.id):
            for b in [t for t in st.tracks if t.id > a.id]:
                if (
                    a in st.tracks
                    and b in st.tracks
                    and a.body
                    and b.body
                    and iou(a.body, b.body) > self.settings.same_person
                ):
                    st.tracks.remove(b)
                    st.ended += 1
                    people[:] = [p for p in people if p.track != b.id]


def clip_features(front: PoseFrontEnd, frames, stream: str = "clip") -> np.ndarray | None:
    """A recorded clip's RGB frames through the front end, offline: the VST features [n, 75] of
    its main person (the track seen in most frames); where they are not seen a frame holds their
    last feature (before they are first seen, their first). None when nobody is seen."""
    seen: list[dict[int, np.ndarray]] = []
    for rgb in frames:
        seen.append({p.track: p.feature for p in front.process([(stream, rgb)])[0]})
    front.end_stream(stream)
    counts: dict[int, int] = {}
    for people in seen:
        for t in people:
            counts[t] = counts.get(t, 0) + 1
    if not counts:
        return None
    main = max(counts, key=counts.get)
    feats = [people.get(main) for people in seen]
    last = next(f for f in feats if f is not None)
    for i, f in enumerate(feats):
        feats[i] = last = f if f is not None else last
    return np.stack(feats)
