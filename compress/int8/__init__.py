"""INT8 quantization: PTQ and QAT exported as Q/DQ ONNX placed for onnxruntime, TensorRT or TVM.

``quantize`` (api.py) is the entry point; ``Int8Config`` (config.py) its settings; ``checks.py`` the
pure SQNR/agreement math; ``placement.py`` the per-runtime Q/DQ placement and its verification;
``qat.py`` fake-quant fine-tuning; ``op_report.py`` per-operator INT8/FP32 latency ratios.
"""

from edgecompress.compress.int8.config import Int8Config

__all__ = ["Int8Config"]
