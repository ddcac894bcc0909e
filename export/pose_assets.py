"""The pretrained person-pose models: MediaPipe BlazePose GHUM (Apache-2.0), as shipped in the npm
package `@mediapipe/pose`, fetched once from the npm registry as a tarball (no npm needed),
checked against pinned sha256 values, extracted into the model cache and converted to ONNX
(`export.tflite_onnx`).

    pose_detection.tflite        the person detector (224 x 224; in the package it is
                                 `pose_solution_packed_assets.data`, bytes 0..2962288)
    pose_landmark_{lite,full,heavy}.tflite   33 landmarks (+ 6 auxiliary) on a 256 x 256 person crop

Nothing is fetched at run time: the bundle carries the ONNX files.
"""

from __future__ import annotations

import io
import os
import tarfile
import urllib.request
from dataclasses import dataclass

import numpy as np

from lvlm.base import BaseModelError, cache_dir, sha256_file

PACKAGE = "@mediapipe/pose"
VERSION = "0.5.1675469404"
TARBALL_SHA256 = "8bb349a7b3a3ba699df23be804ddd3b3eab810b50b15406894be257859388a84"
REGISTRY = "https://registry.npmjs.org"
DETECTOR_BYTES = 2962288  # pose_solution_packed_assets.data holds the detector alone


@dataclass(frozen=True)
class Asset:
    name: str  # file in the cache
    member: str  # file in the tarball
    sha256: str


ASSETS = {
    "detector": Asset(
        "pose_detection.tflite",
        "package/pose_solution_packed_assets.data",
        "a63c614bef30d35947f13be361820b1e4e3bec9cfeebf4d11216a18373108e85",
    ),
    "lite": Asset(
        "pose_landmark_lite.tflite",
        "package/pose_landmark_lite.tflite",
        "f17bfbecadb61c3be1baa8b8d851cc6619c870a87167b32848ad20db306b9d61",
    ),
    "full": Asset(
        "pose_landmark_full.tflite",
        "package/pose_landmark_full.tflite",
        "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f",
    ),
    "heavy": Asset(
        "pose_landmark_heavy.tflite",
        "package/pose_landmark_heavy.tflite",
        "59e42d71bcd44cbdbabc419f0ff76686595fd265419566bd4009ef703ea8e1fe",
    ),
}
LANDMARK_MODELS = ("lite", "full", "heavy")


def folder(cache: str | None = None) -> str:
    return os.path.join(cache or cache_dir(), "models", f"mediapipe-pose-{VERSION}")


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            return r.read()
    except OSError as exc:
        raise BaseModelError(
            f"could not download {PACKAGE}@{VERSION} from {url}: {exc}; set "
            "LVLM_VAR_NPM_REGISTRY to a reachable npm registry"
        ) from None


def fetch(cache: str | None = None) -> dict[str, str]:
    """{'detector', 'lite', 'full', 'heavy'} -> verified .tflite paths, downloading once."""
    root = folder(cache)
    paths = {k: os.path.join(root, a.name) for k, a in ASSETS.items()}
    if not all(os.path.exists(p) for p in paths.values()):
        registry = os.environ.get("LVLM_VAR_NPM_REGISTRY", REGISTRY).rstrip("/")
        url = f"{registry}/{PACKAGE}/-/{PACKAGE.split('/')[1]}-{VERSION}.tgz"
        data = _download(url)
        import hashlib

        got = hashlib.sha256(data).hexdigest()
        if got != TARBALL_SHA256:
            raise BaseModelError(f"{url}: sha256 {got[:16]}... does not match the pinned {TARBALL_SHA256[:16]}...")
        os.makedirs(root, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for key, asset in ASSETS.items():
                member = tar.extractfile(asset.member)
                if member is None:
                    raise BaseModelError(f"{url}: no {asset.member} in the package")
                blob = member.read()
                if key == "detector":
                    blob = blob[:DETECTOR_BYTES]
                with open(paths[key] + ".part", "wb") as f:
                    f.write(blob)
                os.replace(paths[key] + ".part", paths[key])
    for key, asset in ASSETS.items():
        got = sha256_file(paths[key])
        if got != asset.sha256:
            raise BaseModelError(
                f"{paths[key]}: sha256 {got[:16]}... does not match the pinned {asset.sha256[:16]}...; "
                "delete the file and fetch it again"
            )
    return paths


def onnx_models(landmarks: str = "full", cache: str | None = None) -> dict[str, str]:
    """{'detector', 'landmarks'} -> ONNX paths converted from the verified .tflite files, cached
    beside them."""
    from export.tflite_onnx import convert

    if landmarks not in LANDMARK_MODELS:
        raise ValueError(f"unknown landmark model {landmarks!r}; choose one of {', '.join(LANDMARK_MODELS)}")
    tflite = fetch(cache)
    out = {}
    for role, key in (("detector", "detector"), ("landmarks", landmarks)):
        path = tflite[key][: -len(".tflite")] + ".onnx"
        if not os.path.exists(path):
            convert(tflite[key], path + ".part")
            os.replace(path + ".part", path)
        out[role] = path
    return out


def pose_parity(tflite: dict[str, str], onnx_paths: dict[str, str], frames: np.ndarray) -> dict:
    """The ONNX conversion against LiteRT on RGB frames [N, H, W, 3] (uint8, square), resized
    to each model's input: the largest landmark error in the 256 px input's pixels, the largest
    raw detector output difference, and whether the detector's people after NMS are the same
    (count, and boxes within 1e-3 of the input) and how many LiteRT's outputs hold."""
    import onnxruntime as ort

    from edge_runtime.pose import decode_detections
    from export.tflite_onnx import litert_outputs

    def resized(size: int) -> np.ndarray:
        idx = (np.arange(size) * frames.shape[1] / size).astype(int)
        return frames[:, idx][:, :, idx].astype(np.float32) / 255.0

    out = {"frames": int(len(frames))}
    for role, size, scale in (("detector", 224, 2.0), ("landmarks", 256, 1.0)):
        x = resized(size) * scale - (scale - 1)  # the detector reads [-1, 1], the landmarks [0, 1]
        ref = litert_outputs(tflite[role], x)
        sess = ort.InferenceSession(onnx_paths[role], providers=["CPUExecutionProvider"])
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input_1": x})))
        if role == "landmarks":
            lm_ref, lm_got = ref["Identity"].reshape(len(x), -1, 5), got["Identity"].reshape(len(x), -1, 5)
            out["landmark_max_px"] = float(np.abs(lm_ref[..., :2] - lm_got[..., :2]).max())
            out["presence_max_abs"] = float(np.abs(ref["Identity_1"] - got["Identity_1"]).max())
        else:
            out["detector_max_abs"] = float(max(np.abs(ref[k] - got[k]).max() for k in ref))
            same, found = True, 0
            for k in range(len(x)):
                a = decode_detections(ref["Identity"][k], ref["Identity_1"][k], 0.5, 0.3)
                b = decode_detections(got["Identity"][k], got["Identity_1"][k], 0.5, 0.3)
                same &= len(a) == len(b) and all(np.abs(p["box"] - q["box"]).max() < 1e-3 for p, q in zip(a, b))
                found += len(a)
            out["detections_equal"], out["detections"] = bool(same), found
    return out
