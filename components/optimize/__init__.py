"""Inference optimisation: ONNX export, int8 quantization, pruning, distillation, and registering the variants."""
