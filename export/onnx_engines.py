"""The VST's two run-time engines as ONNX graphs, and their parity against PyTorch.

    frame_encoder.onnx   frames uint8 [N, R, R, 3] (RGB, NHWC; N dynamic) -> features float32 [N, D]
    frame_encoder.fp16.onnx   the same with FP16 weights and arithmetic inside (same inputs and
                         outputs): what FP16 means for TensorRT 11's strongly typed networks
    token_engine.onnx    features float32 [B, W, D] (B dynamic) -> ids int32 [B, T],
                         distances float32 [B, T], logits float32 [B, C], and for a VST with
                         a repetitions head count int32 [B] (1..max_reps: `vst.model.read_count`)

BatchNorm is folded into the convolutions before export (the graph holds no BatchNormalization
node); opset 17; weights inside the file (the models are a few MB). Ids are int32 so TensorRT
keeps them without a cast.
"""

from __future__ import annotations

import copy
import os
import warnings

import numpy as np

OPSET = 17


def fold_batchnorm(module):
    """A copy of `module` in eval mode with every Conv followed by a BatchNorm merged into one Conv."""
    import torch
    from torch import nn

    module = copy.deepcopy(module).eval()

    def fold(seq: nn.Sequential) -> None:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                fused = nn.Conv2d(
                    conv.in_channels,
                    conv.out_channels,
                    conv.kernel_size,
                    conv.stride,
                    conv.padding,
                    conv.dilation,
                    conv.groups,
                    bias=True,
                )
                with torch.no_grad():
                    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
                    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
                seq._modules[a] = fused
                seq._modules[b] = nn.Identity()

    for m in module.modules():
        if isinstance(m, nn.Sequential):
            fold(m)
    return module


def _graphs(model, fp16: bool = False):
    import torch
    from torch import nn

    class FrameEncoderGraph(nn.Module):
        def __init__(self, vst):
            super().__init__()
            self.encoder = fold_batchnorm(vst.encoder)
            if fp16:
                self.encoder = self.encoder.half()

        def forward(self, frames):
            return self.encoder(frames).float()

    from vst.model import read_count

    class TokenEngineGraph(nn.Module):
        def __init__(self, vst):
            super().__init__()
            self.tokenizer, self.quantizer, self.head, self.aux = vst.tokenizer, vst.quantizer, vst.head, vst.aux
            self.count, self.repetition_logits = vst.count, vst.repetition_logits  # registered, then read by the method
            self.window_features = vst.window_features  # the pose front end's person normalisation, inside the graph

        def forward(self, feats):
            feats = self.window_features(feats)
            _, ids, dist = self.quantizer.lookup(self.tokenizer(feats))
            q = self.quantizer.codebook[ids]
            out = (ids.to(torch.int32), dist, self.head(q))
            return out if self.aux is None else (*out, read_count(self.repetition_logits(feats, q)).to(torch.int32))

    return FrameEncoderGraph(model).eval() if model.encoder is not None else None, TokenEngineGraph(
        copy.deepcopy(model).eval()
    ).eval()


def token_engine_outputs(cfg) -> dict[str, list]:
    """The token engine's outputs and their shapes, in order (what the bundle manifest lists)."""
    out = {"ids": ["batch", cfg.T], "distances": ["batch", cfg.T], "logits": ["batch", len(cfg.classes)]}
    return {**out, "count": ["batch"]} if cfg.counts else out


def export_engines(model, out: str) -> dict[str, str]:
    """Write frame_encoder.onnx (not for a pose front-end VST: its frame engines are the pose
    models, `export.pose_assets`) and token_engine.onnx for a VST; returns their paths."""
    import onnx
    import torch

    cfg = model.cfg
    enc, tok = _graphs(model.eval())
    os.makedirs(out, exist_ok=True)
    paths = {"token_engine": os.path.join(out, "token_engine.onnx")}
    if enc is not None:
        paths.update(
            frame_encoder=os.path.join(out, "frame_encoder.onnx"),
            frame_encoder_fp16=os.path.join(out, "frame_encoder.fp16.onnx"),
        )
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and shape-inference notes
        for name, graph in (("frame_encoder", enc), ("frame_encoder_fp16", _graphs(model, fp16=True)[0]))[
            : 2 if enc else 0
        ]:
            torch.onnx.export(
                graph,
                (torch.zeros(2, cfg.R, cfg.R, 3, dtype=torch.uint8),),
                paths[name],
                input_names=["frames"],
                output_names=["features"],
                opset_version=OPSET,
                dynamic_axes={"frames": {0: "n"}, "features": {0: "n"}},
                dynamo=False,
            )
        outputs = token_engine_outputs(cfg)
        torch.onnx.export(
            tok,
            (torch.zeros(2, cfg.W, cfg.feature_size),),
            paths["token_engine"],
            input_names=["features"],
            output_names=list(outputs),
            opset_version=OPSET,
            dynamic_axes={k: {0: "batch"} for k in ("features", *outputs)},
            dynamo=False,
        )
    for path in paths.values():
        m = onnx.load(path)
        onnx.checker.check_model(m, full_check=True)
        if any(n.op_type == "BatchNormalization" for n in m.graph.node):
            raise RuntimeError(f"{path}: BatchNorm was not folded")
    return paths


def onnx_sessions(paths: dict[str, str], providers: list[str] | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    providers = providers or ["CPUExecutionProvider"]
    return {k: ort.InferenceSession(p, opts, providers=providers) for k, p in paths.items()}


def engine_parity(model, run_encoder, run_tokenizer, clips: list[np.ndarray]) -> dict:
    """Compare two engine implementations with PyTorch on whole clips, the runtime's way (every
    frame encoded once, a window every S frames). `run_encoder(uint8 [N,R,R,3]) -> [N, D]` and
    `run_tokenizer(float32 [B,W,D]) -> {output name: array}` are the engines under test."""
    import torch

    from vst.model import read_count
    from vst.windows import encode_clip, pad_to, sliding_starts

    cfg = model.cfg
    max_err, tokens, same_tokens, windows, same_label, same_count = 0.0, 0, 0, 0, 0, 0
    for frames in clips:
        ref = encode_clip(model, frames).numpy()
        got = np.concatenate(
            [run_encoder(np.ascontiguousarray(pad_to(frames, cfg.W)[i : i + 64])) for i in range(0, len(ref), 64)]
        )
        max_err = max(max_err, float(np.abs(ref - got).max()))
        starts = sliding_starts(len(ref), cfg)
        with torch.no_grad():
            ref_out = model.tokenize_train(torch.from_numpy(np.stack([ref[s : s + cfg.W] for s in starts])))
        ids, logits = ref_out["ids"], ref_out["logits"]
        # the engine under test tokenizes its own features: errors compound as they would at run time
        wins = np.stack([got[s : s + cfg.W] for s in starts]).astype(np.float32)
        outs = [run_tokenizer(wins[i : i + 16]) for i in range(0, len(wins), 16)]
        g_ids = np.concatenate([np.asarray(o["ids"]) for o in outs])
        g_logits = np.concatenate([np.asarray(o["logits"]) for o in outs])
        if cfg.counts:
            g_count = np.concatenate([np.asarray(o["count"]) for o in outs])
            same_count += int((read_count(ref_out["reps"]).numpy() == g_count).sum())
        tokens += ids.numel()
        same_tokens += int((ids.numpy() == np.asarray(g_ids)).sum())
        windows += len(starts)
        same_label += int((logits.argmax(-1).numpy() == np.asarray(g_logits).argmax(-1)).sum())
    return {
        "clips": len(clips),
        "windows": windows,
        "max_abs_feature_error": max_err,
        "token_agreement": same_tokens / max(tokens, 1),
        "label_agreement": same_label / max(windows, 1),
        "count_agreement": same_count / max(windows, 1) if cfg.counts else None,
    }


def onnx_parity(model, paths: dict[str, str], clips: list[np.ndarray]) -> dict:
    """For a pose front-end VST the clips are pose features (`vst.windows.clip_input`), which go
    to the token engine as they are."""
    s = onnx_sessions({k: paths[k] for k in ("frame_encoder", "token_engine") if k in paths})
    names = [o.name for o in s["token_engine"].get_outputs()]
    encoder = (lambda x: s["frame_encoder"].run(None, {"frames": x})[0]) if "frame_encoder" in s else (lambda x: x)
    return engine_parity(
        model, encoder, lambda f: dict(zip(names, s["token_engine"].run(None, {"features": f}))), clips
    )
