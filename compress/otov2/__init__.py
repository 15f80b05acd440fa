"""OTOv2 structured pruning: Zero-Invariant Groups, the DHSPG optimizer, subnet construction, save/load.

>>> import edgecompress as ec
>>> oto = ec.OTO(ec.zoo.create("resnet_cifar_tiny"), torch.randn(1, 3, 32, 32))  # doctest: +SKIP
>>> optimizer = oto.dhspg(variant="adamw", lr=3e-3, target_group_sparsity=0.5)  # doctest: +SKIP
"""
