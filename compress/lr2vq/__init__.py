"""LR²VQ: low-rank representation vector quantisation of Conv2d/Linear weights, and the PQ baseline.

Modules: ``kmeans`` (pure k-means/DKM math), ``block`` (the ``LR2VQLayer`` building block),
``estimate`` (choosing ``d`` from the weights), ``accounting`` (exact bits), ``storage`` (the pickle-free
``.ecvq`` checkpoint), ``onnx_compact`` (compact and dense ONNX), ``api`` (``vq``, ``LR2VQConfig``).
"""

from edgecompress.compress.lr2vq.api import LR2VQConfig, vq, write_artifacts
from edgecompress.compress.lr2vq.block import LR2VQLayer

__all__ = ["LR2VQConfig", "LR2VQLayer", "vq", "write_artifacts"]
