"""The shared training loop: a seed fixes the run, whatever ran on the same loader before."""

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from edgecompress.compress.train import TrainConfig, train


def test_same_seed_same_weights_on_a_loader_with_its_own_generator():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    loader = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8, shuffle=True, generator=g)

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(123)
        model = nn.Linear(6, 2)
        train(model, loader, config=TrainConfig(epochs=1, optimizer="sgd", lr=0.1, seed=seed, progress=False))
        return model.weight.detach().clone()

    first = run(0)  # advances the loader's generator through one epoch
    assert torch.equal(run(0), first)  # same seed: the same data order again
    assert not torch.equal(run(1), first)
