"""TFLite -> ONNX for exactly the ops of MediaPipe's BlazePose models (the pose detector and the
landmark models), with a dynamic batch.

Why our own converter: `tflite2onnx` 0.4.1 stops at their PAD ops, and `tf2onnx --tflite` needs
TensorFlow (a 500 MB export-time environment for ~300 nodes of ten kinds). The op set is small
and fixed: CONV_2D, DEPTHWISE_CONV_2D, ADD, PAD, RESIZE_BILINEAR, MAX_POOL_2D, RESHAPE, LOGISTIC,
CONCATENATION, DEPTH_TO_SPACE, and the weight ops DEQUANTIZE (fp16 weights) and DENSIFY (sparse
detector weights). Those two are folded into float32 initialisers with the values LiteRT itself
computes for them (the interpreter run once with every tensor preserved), so the sparse format
is never decoded here. An op outside the set is an error that names it.

The graph keeps the TFLite interface: NHWC float32 inputs and outputs (batch dynamic); inside,
4-D tensors are NCHW, as ONNX convolutions want. Parsing uses the flatbuffer schema that ships
with `ai-edge-litert` (an export-time dependency, like torch for the VST graphs).
"""

from __future__ import annotations

import numpy as np

OPSET = 17
NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)
AXIS_NHWC_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}
ACTIVATIONS = {0: None, 1: ("Relu",), 2: ("Clip", -1.0, 1.0), 3: ("Clip", 0.0, 6.0), 4: ("Tanh",)}


class ConversionError(RuntimeError):
    """The model uses something this converter does not handle: one line naming it."""


def _op_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as s

    return {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}


def _folded_values(path: str, indices: list[int]) -> dict[int, np.ndarray]:
    """The values LiteRT computes for constant-only tensors (DEQUANTIZE, DENSIFY outputs)."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with warnings.catch_warnings():  # "intended for debugging": it is, here, one call at export time
        warnings.simplefilter("ignore")
        # without the default delegate: XNNPACK would take the weight ops over and leave their outputs empty
        it = Interpreter(
            model_path=path,
            experimental_preserve_all_tensors=True,
            num_threads=1,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    it.invoke()
    return {i: np.array(it.get_tensor(i), np.float32) for i in indices}


def convert(path: str, out: str | None = None):
    """The ONNX model (onnx.ModelProto) of the .tflite file at `path`; saved to `out` if given."""
    import onnx
    from ai_edge_litert import schema_py_generated as s
    from onnx import TensorProto, helper, numpy_helper

    names = _op_names()
    buf = open(path, "rb").read()
    model = s.Model.GetRootAsModel(buf, 0)
    if model.SubgraphsLength() != 1:
        raise ConversionError(f"{path}: {model.SubgraphsLength()} subgraphs; one expected")
    g = model.Subgraphs(0)
    tensors = [g.Tensors(i) for i in range(g.TensorsLength())]
    shape = [tuple(int(x) for x in t.ShapeAsNumpy()) if t.ShapeLength() else () for t in tensors]

    def tname(i: int) -> str:
        return f"t{i}_" + tensors[i].Name().decode().replace(";", "_").replace(":", "_")[:40]

    def raw(i: int) -> np.ndarray | None:
        b = model.Buffers(tensors[i].Buffer())
        if b is None or b.DataLength() == 0 or tensors[i].Sparsity() is not None:  # sparse: DENSIFY's input
            return None
        dtype = {
            s.TensorType.FLOAT32: np.float32,
            s.TensorType.FLOAT16: np.float16,
            s.TensorType.INT32: np.int32,
            s.TensorType.INT64: np.int64,
            s.TensorType.INT8: np.int8,
        }.get(tensors[i].Type())
        if dtype is None:
            raise ConversionError(f"{path}: tensor {tensors[i].Name().decode()} has TFLite type {tensors[i].Type()}")
        return np.frombuffer(b.DataAsNumpy().tobytes(), dtype).reshape(shape[i])

    ops = []
    for k in range(g.OperatorsLength()):
        op = g.Operators(k)
        oc = model.OperatorCodes(op.OpcodeIndex())
        ops.append((names.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "?"), op))
    const = {i: v for i in range(len(tensors)) if (v := raw(i)) is not None}
    folded = [int(op.Outputs(0)) for kind, op in ops if kind in ("DEQUANTIZE", "DENSIFY")]
    const.update(_folded_values(path, folded))

    nodes, inits = [], []
    counter = [0]

    def fresh(stem: str) -> str:
        counter[0] += 1
        return f"{stem}_{counter[0]}"

    def init(value: np.ndarray, stem: str) -> str:
        name = fresh(stem)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(kind: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        output = output or fresh(kind.lower())
        nodes.append(helper.make_node(kind, inputs, [output], **attrs))
        return output

    def activate(x: str, code: int, output: str) -> str:
        act = ACTIVATIONS.get(code, "?")
        if act == "?":
            raise ConversionError(f"{path}: fused activation {code} is not handled")
        if act is None:
            return node("Identity", [x], output)
        if act[0] == "Clip":
            return node("Clip", [x, init(np.float32(act[1]), "lo"), init(np.float32(act[2]), "hi")], output)
        return node(act[0], [x], output)

    def same_pads(size, kernel, stride, dilation=(1, 1)):
        pads = []
        for n, k, st, d in zip(size, kernel, stride, dilation):
            eff = (k - 1) * d + 1
            total = max((-(-n // st) - 1) * st + eff - n, 0)
            pads.append((total // 2, total - total // 2))
        return [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]

    # value name of each TFLite tensor in the ONNX graph; 4-D values are NCHW
    value: dict[int, str] = {}
    graph_inputs, graph_outputs = [], []
    for j in range(g.InputsLength()):
        i = int(g.Inputs(j))
        name = tensors[i].Name().decode()
        graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *shape[i][1:]]))
        value[i] = node("Transpose", [name], perm=list(NHWC_TO_NCHW)) if len(shape[i]) == 4 else name

    def v(i: int) -> str:
        if i not in value:
            if i not in const:
                raise ConversionError(f"{path}: tensor {tensors[i].Name().decode()} is used before it is computed")
            c = const[i]
            value[i] = init(c.transpose(NHWC_TO_NCHW) if c.ndim == 4 else c, "const")
        return value[i]

    for kind, op in ops:
        ins = [int(op.Inputs(j)) for j in range(op.InputsLength())]
        o = int(op.Outputs(0))
        out_name = tname(o)
        opts = op.BuiltinOptions()
        if kind in ("DEQUANTIZE", "DENSIFY"):
            continue  # folded: their outputs are constants
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            cls = s.Conv2DOptions if kind == "CONV_2D" else s.DepthwiseConv2DOptions
            o2 = cls()
            o2.Init(opts.Bytes, opts.Pos)
            w = const[ins[1]]  # CONV: [O, kh, kw, I]; DEPTHWISE: [1, kh, kw, C*m]
            cin = shape[ins[0]][3]
            if kind == "CONV_2D":
                weight, group = w.transpose(0, 3, 1, 2), 1
            else:
                weight, group = w.transpose(3, 0, 1, 2), cin
            k = weight.shape[2:]
            stride = (o2.StrideH(), o2.StrideW())
            dil = (o2.DilationHFactor(), o2.DilationWFactor())
            pads = same_pads(shape[ins[0]][1:3], k, stride, dil) if o2.Padding() == s.Padding.SAME else [0, 0, 0, 0]
            inputs = [v(ins[0]), init(weight, "w")]
            if len(ins) > 2 and ins[2] >= 0:
                inputs.append(init(const[ins[2]], "b"))
            y = node(
                "Conv", inputs, kernel_shape=list(k), strides=list(stride), dilations=list(dil), pads=pads, group=group
            )
            value[o] = activate(y, o2.FusedActivationFunction(), out_name)
        elif kind == "ADD":
            o2 = s.AddOptions()
            o2.Init(opts.Bytes, opts.Pos)
            a, b = (
                v(i)
                if len(shape[i]) == len(shape[o]) or i not in const
                else init(const[i].reshape(-1, 1, 1) if len(shape[o]) == 4 else const[i], "c")
                for i in ins
            )
            value[o] = activate(node("Add", [a, b]), o2.FusedActivationFunction(), out_name)
        elif kind == "PAD":
            p = const[ins[1]].astype(np.int64)  # [rank, 2] in NHWC order
            if len(shape[ins[0]]) == 4:
                p = p[list(NHWC_TO_NCHW)]
            value[o] = node(
                "Pad", [v(ins[0]), init(np.concatenate([p[:, 0], p[:, 1]]), "pads")], out_name, mode="constant"
            )
        elif kind == "RESIZE_BILINEAR":
            o2 = s.ResizeBilinearOptions()
            o2.Init(opts.Bytes, opts.Pos)
            mode = "align_corners" if o2.AlignCorners() else "half_pixel" if o2.HalfPixelCenters() else "asymmetric"
            (ih, iw), (oh, ow) = shape[ins[0]][1:3], shape[o][1:3]
            scales = np.array([1, 1, oh / ih, ow / iw], np.float32)
            value[o] = node(
                "Resize",
                [v(ins[0]), "", init(scales, "scales")],
                out_name,
                mode="linear",
                coordinate_transformation_mode=mode,
            )
        elif kind == "MAX_POOL_2D":
            o2 = s.Pool2DOptions()
            o2.Init(opts.Bytes, opts.Pos)
            k, stride = (o2.FilterHeight(), o2.FilterWidth()), (o2.StrideH(), o2.StrideW())
            pads = same_pads(shape[ins[0]][1:3], k, stride) if o2.Padding() == s.Padding.SAME else [0, 0, 0, 0]
            y = node("MaxPool", [v(ins[0])], kernel_shape=list(k), strides=list(stride), pads=pads)
            value[o] = activate(y, o2.FusedActivationFunction(), out_name)
        elif kind == "LOGISTIC":
            value[o] = node("Sigmoid", [v(ins[0])], out_name)
        elif kind == "RESHAPE":
            x = v(ins[0])
            if len(shape[ins[0]]) == 4:  # TFLite reshapes in NHWC order
                x = node("Transpose", [x], perm=list(NCHW_TO_NHWC))
            target = np.array((0,) + shape[o][1:], np.int64)  # 0: the batch, whatever it is
            y = node("Reshape", [x, init(target, "shape")])
            value[o] = (
                node("Transpose", [y], out_name, perm=list(NHWC_TO_NCHW))
                if len(shape[o]) == 4
                else node("Identity", [y], out_name)
            )
        elif kind == "CONCATENATION":
            o2 = s.ConcatenationOptions()
            o2.Init(opts.Bytes, opts.Pos)
            axis = o2.Axis() % len(shape[o])
            if len(shape[o]) == 4:
                axis = AXIS_NHWC_TO_NCHW[axis]
            y = node("Concat", [v(i) for i in ins], axis=axis)
            value[o] = activate(y, o2.FusedActivationFunction(), out_name)
        elif kind == "DEPTH_TO_SPACE":
            o2 = s.DepthToSpaceOptions()
            o2.Init(opts.Bytes, opts.Pos)
            value[o] = node("DepthToSpace", [v(ins[0])], out_name, blocksize=o2.BlockSize(), mode="DCR")
        else:
            raise ConversionError(f"{path}: TFLite op {kind} is not handled by this converter")

    for j in range(g.OutputsLength()):
        i = int(g.Outputs(j))
        name = tensors[i].Name().decode()
        perm = {"perm": list(NCHW_TO_NHWC)} if len(shape[i]) == 4 else {}
        node("Transpose" if perm else "Identity", [v(i)], name, **perm)
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *shape[i][1:]]))

    graph = helper.make_graph(nodes, "blazepose", graph_inputs, graph_outputs, inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lvlm-var")
    onnx.checker.check_model(onnx_model)
    if out:
        onnx.save(onnx_model, out)
    return onnx_model


class LiteRTEngine:
    """A .tflite model on LiteRT with the runtime engines' interface: `.run({input: batch})` ->
    {output name: batch} (LiteRT's batch is 1: one call per item). The reference the ONNX
    conversion is checked against, and the baseline `bench` times it against."""

    def __init__(self, path: str, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_path=path, num_threads=threads)
        self.it.allocate_tensors()
        self.input = self.it.get_input_details()[0]["index"]
        self.outputs = self.it.get_output_details()

    def run(self, feeds: dict) -> dict[str, np.ndarray]:
        (batch,) = feeds.values()
        got: dict[str, list] = {d["name"]: [] for d in self.outputs}
        for x in batch:
            self.it.set_tensor(self.input, np.ascontiguousarray(x[None], np.float32))
            self.it.invoke()
            for d in self.outputs:
                got[d["name"]].append(self.it.get_tensor(d["index"])[0].copy())
        return {k: np.stack(v) for k, v in got.items()}


def litert_outputs(path: str, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """The .tflite model's outputs for a batch of inputs."""
    return LiteRTEngine(path).run({"input_1": inputs})
