"""The joint layout every skeleton feature uses: the 25 NTU RGB+D joints, their mirror images,
and how BlazePose's 33 landmarks make them. Standard library only, so the runtime's pose front
end (`edge_runtime.pose`) and the training side share this one table.

A frame's pose feature is, per NTU joint, (x, y, visibility): x and y in units of the frame's
height (so distances mean the same along both axes), visibility in [0, 1]. The TokenEngine
normalises each window to its person itself (`vst.model.person_normalise`), so where the person
stands and how large they appear do not matter.
"""

from __future__ import annotations

JOINT_NAMES = (
    "spine_base",
    "spine_mid",
    "neck",
    "head",
    "shoulder_left",
    "elbow_left",
    "wrist_left",
    "hand_left",
    "shoulder_right",
    "elbow_right",
    "wrist_right",
    "hand_right",
    "hip_left",
    "knee_left",
    "ankle_left",
    "foot_left",
    "hip_right",
    "knee_right",
    "ankle_right",
    "foot_right",
    "spine_shoulder",
    "handtip_left",
    "thumb_left",
    "handtip_right",
    "thumb_right",
)
J = {name: i for i, name in enumerate(JOINT_NAMES)}
# joint index of each joint's mirror image (left <-> right)
MIRROR = [J[n.replace("left", "@").replace("right", "left").replace("@", "right")] for n in JOINT_NAMES]
POSE_CHANNELS = 3  # x, y, visibility

# BlazePose landmark indices (MediaPipe's order): 0 nose, 7/8 ears, 11/12 shoulders, 13/14 elbows,
# 15/16 wrists, 17/18 pinkies, 19/20 index fingers, 21/22 thumbs, 23/24 hips, 25/26 knees,
# 27/28 ankles, 31/32 foot tips; left is the person's own left, as in NTU.
_MID_HIP = ((23, 0.5), (24, 0.5))
_MID_SHOULDER = ((11, 0.5), (12, 0.5))
_HEAD = ((7, 0.5), (8, 0.5))  # between the ears: the head's centre, where NTU's head joint is
# NTU joint -> weights over BlazePose landmarks. The spine's middle is halfway from the hips'
# midpoint to the shoulders' and the neck 0.42 of the way from the shoulders to the head, the
# proportions of the synthetic figures (`vst.skeleton`); the hand is halfway from the wrist to
# the knuckles' midpoint.
BLAZEPOSE_TO_NTU: tuple[tuple[tuple[int, float], ...], ...] = (
    _MID_HIP,
    ((23, 0.25), (24, 0.25), (11, 0.25), (12, 0.25)),
    ((11, 0.29), (12, 0.29), (7, 0.21), (8, 0.21)),
    _HEAD,
    ((11, 1.0),),
    ((13, 1.0),),
    ((15, 1.0),),
    ((15, 0.5), (17, 0.25), (19, 0.25)),
    ((12, 1.0),),
    ((14, 1.0),),
    ((16, 1.0),),
    ((16, 0.5), (18, 0.25), (20, 0.25)),
    ((23, 1.0),),
    ((25, 1.0),),
    ((27, 1.0),),
    ((31, 1.0),),
    ((24, 1.0),),
    ((26, 1.0),),
    ((28, 1.0),),
    ((32, 1.0),),
    _MID_SHOULDER,
    ((19, 1.0),),
    ((21, 1.0),),
    ((20, 1.0),),
    ((22, 1.0),),
)


def mirror_pose(feats):
    """Pose features [..., 25 * 3] (a numpy array or a torch tensor) seen in a mirror: x negated,
    left and right joints swapped. The token engine centres each window on the person, so -x is
    the mirror image whatever the frame's width."""
    x = feats.reshape(*feats.shape[:-1], len(MIRROR), POSE_CHANNELS)[..., MIRROR, :]  # indexing copies
    x[..., 0] = -x[..., 0]
    return x.reshape(feats.shape)
