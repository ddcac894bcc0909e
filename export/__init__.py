"""The deployable bundle: ONNX and TensorRT engines, the LoRA-merged quantized GGUF, parity checks, manifest."""
