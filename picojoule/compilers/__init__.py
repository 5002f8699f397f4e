"""Export and compilation of compressed models.

* :mod:`~picojoule.compilers.export`: fake-quantized torch model -> QDQ ONNX (checked), ONNX Runtime check.
* :mod:`~picojoule.compilers.tvm_build`: ONNX -> Apache TVM executable per target, ``.so``, host latency.
* :mod:`~picojoule.compilers.report`: the JSON record of a build, with the cost model's prediction.
* :mod:`~picojoule.compilers.deploy`: all three in one call.

TVM is imported only when a build is asked for.
"""
