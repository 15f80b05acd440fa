"""The one-call ``prune``, saving/reloading without pickle, the CLI and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from edgecompress.compress.otov2.api import OTO, OTOv2Config, prune
from edgecompress.compress.otov2.serialize import load_pruned, save_pruned
from edgecompress.nas import zoo


def _tiny_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)


def test_prune_returns_a_checked_smaller_model_with_a_report():
    torch.manual_seed(0)
    model = zoo.create("resnet_cifar_tiny", num_classes=2)
    data = _tiny_data()
    cfg = OTOv2Config(target_group_sparsity=0.5, epochs=2, start_pruning_fraction=0.2, force_project_fraction=0.5,
                      warmup_epochs=0.5, progress=False)
    result = prune(model, torch.randn(1, 3, 32, 32), data, cfg, val_data=data)
    r = result.report
    assert abs(r["group_sparsity"] - 0.5) <= cfg.tolerance_group_sparsity
    assert r["pruned"]["params"] < r["dense"]["params"] and r["pruned"]["macs"] < r["dense"]["macs"]
    assert r["construction"]["relative_error"] <= 1e-5
    assert r["val_accuracy"] == pytest.approx(r["val_accuracy_group_sparse"])  # no fine-tuning needed
    assert [g["name"] for g in r["groups"]["left_alone"]] == ["fc"]
    json.dumps(r)


def test_saved_pruned_model_reloads_without_pickle(tmp_path):
    torch.manual_seed(0)
    model = zoo.create("mobilenetv2_e2gc_cifar_tiny").eval()
    oto = OTO(model, torch.randn(1, 3, 32, 32))
    oto.random_zero_groups(0.5, seed=1)
    sub = oto.construct_subnet()
    save_pruned(sub, tmp_path / "m", spec="zoo:mobilenetv2_e2gc_cifar_tiny")
    arch = json.loads((tmp_path / "m" / "architecture.json").read_text())
    assert arch["modules"]["features.2.conv.1.0"]["groups"] < 8  # channel counts stored as data
    loaded = load_pruned(tmp_path / "m")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), sub(x))
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({"w": sub}, bad / "weights.pt")  # a pickled module is refused
    (bad / "architecture.json").write_text((tmp_path / "m" / "architecture.json").read_text())
    from edgecompress.errors import BadInputError

    with pytest.raises(BadInputError):
        load_pruned(bad)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="target_group_sparsity"):
        OTOv2Config(target_group_sparsity=0.0)
    with pytest.raises(ValueError, match="epochs"):
        OTOv2Config(epochs=0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        OTOv2Config(epochs=2, warmup_epochs=2)
    with pytest.raises(ValueError, match="force_project_fraction"):
        OTOv2Config(start_pruning_fraction=0.5, force_project_fraction=0.2)


def test_untraceable_model_is_a_clear_error():
    from edgecompress.errors import BadInputError

    class NoGrad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv(x).detach().numpy()

    with pytest.raises(BadInputError, match="cannot trace NoGrad"):
        OTO(NoGrad(), torch.randn(1, 3, 4, 4))


def test_cli_prune_writes_model_onnx_and_report(tmp_path):
    import numpy as np

    from edgecompress.cli import main

    g = np.random.default_rng(0)
    x = g.standard_normal((64, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0].mean((1, 2)) > 0).astype(np.int64))
    out = tmp_path / "out"
    rc = main(["prune", "--model", "zoo:vgg_tiny", "--num-classes", "2", "--data", str(tmp_path / "d.npz"),
               "--target-sparsity", "0.5", "--epochs", "1", "--batch-size", "32", "-o", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pruned"]["macs"] < report["dense"]["macs"]
    assert (out / "pruned.onnx").is_file() and (out / "pruned" / "weights.pt").is_file()
    loaded = load_pruned(out / "pruned")
    assert sum(p.numel() for p in loaded.parameters()) == report["pruned"]["params"]
    assert main(["prune", "--model", "zoo:vgg_tiny", "--data", "digits", "--target-sparsity", "1.5",
                 "-o", str(out)]) == 2


def test_demo_stage_prunes_a_copy_and_reports(tmp_path):
    from edgecompress.data import digits_loaders
    from edgecompress.demo import DemoConfig, DemoContext
    from edgecompress.demo_stages.prune import prune_stage

    train_dl, val_dl = digits_loaders(batch_size=32, seed=0)
    small = DataLoader(torch.utils.data.Subset(train_dl.dataset, range(96)), batch_size=32)  # keep the test short
    model = zoo.create("mobilenetv2_cifar_tiny").eval()
    small_val = DataLoader(torch.utils.data.Subset(val_dl.dataset, range(64)), batch_size=32)
    ctx = DemoContext(DemoConfig(model="mobilenetv2_cifar_tiny", quick=True), run=None, train_loader=small,
                      val_loader=small_val, model=model, example=torch.randn(1, 3, 32, 32))
    before = [p.clone() for p in model.parameters()]
    report = prune_stage(ctx, tmp_path)
    assert report["pruned"]["macs"] < report["dense"]["macs"] and 0 <= report["val_accuracy"] <= 1
    assert ctx.summary["pruned_params"] == report["pruned"]["params"]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # dense model untouched
    assert load_pruned(tmp_path / "pruned") is not None


def test_unaligned_convs_names_channel_counts_cpu_kernels_cannot_block():
    import torch.nn as nn

    from edgecompress.compress.otov2.api import unaligned_convs

    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 47, 1), nn.Conv2d(47, 47, 3, groups=47),
                          nn.Conv2d(47, 8, 1))
    assert unaligned_convs(model) == ["1", "2", "3"]  # the stem's 3 input channels are not a blocking concern
    assert unaligned_convs(nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 24, 1))) == []
