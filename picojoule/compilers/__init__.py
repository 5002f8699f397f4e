"""Export and compilation of compressed models (ONNX, TVM)."""
