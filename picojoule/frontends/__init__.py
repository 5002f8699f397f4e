"""Front ends: translate a torch module or an ONNX file into picojoule.graph.RawOp lists."""
