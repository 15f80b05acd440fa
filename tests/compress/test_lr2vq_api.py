"""``vq`` end to end on a tiny model, per-layer policy lines, bad inputs, the CLI and the demo stage's contract."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from edgecompress.compress.lr2vq.api import LR2VQConfig, distillation_loss, plan_layers, vq, write_artifacts
from edgecompress.compress.lr2vq.block import LR2VQLayer
from edgecompress.compress.lr2vq.storage import load_compact
from edgecompress.errors import BadInputError


def _loaders(n: int = 64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()  # learnable: sign of the first channel's mean
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=32, shuffle=True, generator=g), DataLoader(ds, batch_size=64)


def _pruned_like() -> nn.Module:
    """Odd widths, as a pruned model has: nothing may assume zoo widths."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.Conv2d(12, 20, 3, padding=1, bias=False), nn.BatchNorm2d(20), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(20, 2)).eval()


def test_vq_end_to_end_report_and_frozen_model(tmp_path):
    train_dl, val_dl = _loaders()
    model = _pruned_like()
    result = vq(model, train_dl, LR2VQConfig(k=16, m=4, d=None, epochs=4, d_candidates=(1, 2, 4)), val_dl)
    rep = result.report
    assert isinstance(model[3], nn.Conv2d)  # the user's model is untouched
    blocks = [m for m in result.model.modules() if isinstance(m, LR2VQLayer)]
    # stem and conv are quantised; the 40-weight head only if it is at least 2x smaller (depends on d)
    assert len(blocks) == rep["quantised_layers"] >= 2 and all(b.phase == "frozen" for b in blocks)
    assert rep["d"] in (1, 2, 4) and rep["d_source"] == "estimated"
    assert rep["d_estimate"]["candidates"] == [1, 2, 4]
    assert set(rep["phases"]) == {"lowrank", "soft", "hard"}
    assert rep["ratio"] == rep["accounting"]["ratio"] > 1
    assert 0.0 <= rep["val_accuracy"] <= 1.0 and rep["fp32_val_accuracy"] is not None
    files = write_artifacts(result, tmp_path, torch.randn(1, 3, 8, 8))
    assert files["checkpoint"]["reload_identical"]
    assert files["compact_onnx"]["max_rel_error"] < 1e-4 and files["dense_onnx"]["max_rel_error"] < 1e-4
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["files"]["checkpoint"]["bytes"] == (tmp_path / "model.ecvq").stat().st_size
    reloaded = load_compact(tmp_path / "model.ecvq", _pruned_like())
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(reloaded(x), result.model(x))


def test_pq_uses_identity_projection_and_same_schedule():
    train_dl, val_dl = _loaders()
    result = vq(_pruned_like(), train_dl, LR2VQConfig(k=8, m=4, epochs=0, method="pq"), val_dl)
    blocks = [m for m in result.model.modules() if isinstance(m, LR2VQLayer)]
    assert all(b.identity and b.d == 4 and b.proj is None for b in blocks)
    assert result.report["d_source"] == "pq: d = m" and result.report["phases"] == {}


def test_lr2vq_at_d_equal_m_is_pq_exactly():
    # no rank to reduce: the projection is the identity, so LR2VQ and the PQ baseline are the same run
    runs = {method: vq(_pruned_like(), *_loaders()[:1], LR2VQConfig(k=8, m=4, d=4, epochs=4, method=method),
                       _loaders()[1]) for method in ("lr2vq", "pq")}  # fresh loaders: the same shuffles
    lr, pq = runs["lr2vq"], runs["pq"]
    assert all(b.identity and b.proj is None for b in lr.model.modules() if isinstance(b, LR2VQLayer))
    assert lr.report["projection"].startswith("identity (d = m") and lr.report["d_source"] == "config"
    assert lr.report["ratio"] == pq.report["ratio"] and lr.report["val_accuracy"] == pq.report["val_accuracy"]
    a, b = lr.model.state_dict(), pq.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    learned = vq(_pruned_like(), _loaders()[0], LR2VQConfig(k=8, m=4, d=2, epochs=0))
    assert learned.report["projection"] == "learned, m x d"


def test_distillation_loss_mixes_cross_entropy_and_the_teacher_term():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.randn(8, 3, 2, 2), torch.randint(0, 3, (8,))
    ce = F.cross_entropy(student(x), y)
    assert torch.allclose(distillation_loss(teacher, 0.0, 2.0)(student, x, y), ce)
    assert distillation_loss(teacher, 1.0, 2.0)(copy.deepcopy(teacher), x, y).abs().item() < 1e-6  # student = teacher
    kd = distillation_loss(teacher, 1.0, 2.0)(student, x, y)
    assert kd > 0 and torch.allclose(distillation_loss(teacher, 0.5, 2.0)(student, x, y), 0.5 * ce + 0.5 * kd)
    kd.backward()  # gradients reach the student only
    assert student[1].weight.grad is not None and teacher[1].weight.grad is None


def test_vq_with_distillation_and_8bit_batchnorm_counts_the_grids():
    train_dl, val_dl = _loaders()
    runs = {bits: vq(_pruned_like(), train_dl, LR2VQConfig(k=8, m=4, d=2, epochs=0, bn_bits=bits), val_dl)
            for bits in (16, 8)}
    # two BatchNorms (12 and 20 channels), two tensors each: 16 -> 8 bits per value, plus lo and step in fp16
    saved = 32 * 2 * (16 - 8) / 8 - 4 * 4
    assert runs[16].report["accounting"]["compressed_bytes"] - runs[8].report["accounting"]["compressed_bytes"] == saved
    distilled = vq(_pruned_like(), train_dl, LR2VQConfig(k=8, m=4, d=2, epochs=4, distill=0.5), val_dl)
    assert set(distilled.report["phases"]) == {"lowrank", "soft", "hard"}
    assert distilled.report["config"]["distill"] == 0.5


def test_per_layer_policy_lines():
    model = _pruned_like()
    # m=8: stem 324 weights (8 does not divide), conv 2160 (L=108, 8 does not divide L but divides 2160), fc 40
    plans = {p.name: p for p in plan_layers(model, LR2VQConfig(k=256, m=8))}
    assert not plans["0"].quantised and "divides neither" in plans["0"].reason
    assert plans["3"].quantised and "straddle" in plans["3"].note
    assert plans["3"].k == 64  # N = 270 sub-vectors: k=256 > N/4 -> largest power of two <= 67
    assert not plans["8"].quantised and "codewords fit" in plans["8"].reason  # N = 5: N/4 = 1 codeword
    (two,) = plan_layers(nn.Sequential(nn.Linear(40, 2)), LR2VQConfig(k=4, m=4, subvectors_per_code=2))
    assert two.k == 4 and two.quantised  # N = 20, N/2 = 10 >= k = 4
    (few,) = plan_layers(nn.Sequential(nn.Linear(64, 4)), LR2VQConfig(k=64, m=4))  # N = 64: 16 codewords fit
    assert few.k == 16
    (few,) = plan_layers(nn.Sequential(nn.Linear(32, 4)), LR2VQConfig(k=64, m=4))  # N = 32: 8 < 16
    assert not few.quantised
    plans = {p.name: p for p in plan_layers(model, LR2VQConfig(k=4, m=4, exclude=("8",)))}
    assert plans["8"].reason == "excluded by config.exclude"


def test_layer_that_would_not_shrink_enough_stays_uncompressed():
    train_dl, val_dl = _loaders()
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.Linear(16, 4))
    result = vq(model, train_dl, LR2VQConfig(k=4, m=4, d=3, epochs=0, min_saving=3), val_dl)
    lines = {ln["name"]: ln for ln in result.report["layers"]}
    # Linear(16, 4): N = 16, k = 4, d = 3: codes 16x2 + codebook 4x3x16 + P 4x3x16 + bias 4x16 = 480 bits
    # vs 68 x 16 = 1088 fp16 bits: 2.3x < 3x
    assert lines["2"]["status"] == "uncompressed (fp16)" and "not worth" in lines["2"]["reason"]
    assert lines["1"]["status"] == "quantised"
    result = vq(model, train_dl, LR2VQConfig(k=4, m=4, d=3, epochs=0, min_saving=2), val_dl)
    assert result.report["quantised_layers"] == 2


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"d": 17, "m": 16}, "d=17"), ({"k": 1}, "k=1"), ({"m": 0}, "m=0"), ({"method": "rvq"}, "method"),
    ({"epochs": -1}, "epochs"), ({"tau": (1.0, 0.0)}, "tau"), ({"d_candidates": (0, 2)}, "d_candidates"),
    ({"min_saving": 0.5}, "min_saving"), ({"subvectors_per_code": 0}, "subvectors_per_code"),
    ({"bn_bits": 4}, "bn_bits"), ({"distill": 1.5}, "distill"), ({"distill_temperature": 0.0}, "distill_temperature"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LR2VQConfig(**kwargs)


def test_model_without_conv_or_linear_is_refused():
    train_dl, _ = _loaders()
    with pytest.raises(BadInputError, match="no nn.Conv2d or nn.Linear"):
        vq(nn.Sequential(nn.Flatten(), nn.ReLU()), train_dl, LR2VQConfig(k=4, m=4, epochs=0))


def test_no_quantisable_layer_names_every_reason():
    train_dl, _ = _loaders()
    with pytest.raises(BadInputError, match="0: m=7 divides neither"):
        vq(nn.Sequential(nn.Conv2d(3, 4, 1)), train_dl, LR2VQConfig(k=4, m=7, epochs=0))


def test_unknown_exclude_name_is_refused():
    train_dl, _ = _loaders()
    with pytest.raises(BadInputError, match="nope"):
        vq(_pruned_like(), train_dl, LR2VQConfig(k=4, m=4, epochs=0, exclude=("nope",)))


def test_cli_vq_writes_every_file(tmp_path, capsys):
    from edgecompress.cli import main

    out = tmp_path / "out"
    code = main(["vq", "--model", "zoo:resnet_cifar_tiny", "--data", "digits", "--input-size", "3", "8", "8",
                 "--k", "8", "--m", "8", "--d", "2", "--epochs", "0", "--bn-bits", "8", "-o", str(out)])
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"model.ecvq", "model_compact.onnx", "model_dense.onnx", "report.json"}
    text = capsys.readouterr().out
    assert "ratio" in text and "model.ecvq" in text
    report = json.loads((out / "report.json").read_text())
    assert report["d"] == 2 and report["files"]["compact_onnx"]["max_rel_error"] < 1e-4
    assert report["config"]["bn_bits"] == 8 and report["files"]["compact_onnx"]["grid8_initializers"] > 0


def test_cli_bad_d_exits_2(tmp_path, capsys):
    from edgecompress.cli import main

    code = main(["vq", "--model", "zoo:resnet_cifar_tiny", "--data", "digits", "--m", "8", "--d", "9",
                 "-o", str(tmp_path)])
    assert code == 2 and "d=9" in capsys.readouterr().err


def test_demo_stage_reports_ratio_bytes_and_accuracy(tmp_path):
    from edgecompress.demo import DemoConfig, DemoContext
    from edgecompress.demo_stages.vq import vq_stage
    from edgecompress.fileio import RunDir

    train_dl, val_dl = _loaders()
    ctx = DemoContext(config=DemoConfig(quick=True), run=RunDir(tmp_path / "run"), train_loader=train_dl,
                      val_loader=val_dl, model=_pruned_like(), example=torch.randn(1, 3, 8, 8))
    report = vq_stage(ctx, tmp_path)
    assert report["ratio"] > 1 and report["files"]["checkpoint"]["bytes"] == (tmp_path / "model.ecvq").stat().st_size
    assert ctx.summary["vq_ratio"] == report["ratio"] and isinstance(ctx.model[0], nn.Conv2d)
