"""edgecompress.nas: efficient blocks (MobileNetV2 IRB, E2GC, TVConv), the model zoo and, from the
search modules, spaces, supernet, Q-T score, evolution and latency predictor.

Nothing is imported here, so ``import edgecompress.nas`` stays cheap; import the modules:

>>> from edgecompress.nas import zoo
>>> model = zoo.create("mobilenetv2_cifar_tiny", num_classes=10)
"""
