"""Q-T score, space evolution, Pareto selection, the search API (tiny, resumable) and the CLI errors."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import pytest
from torch.utils.data import DataLoader, Subset

from edgecompress.data import digits_loaders
from edgecompress.errors import BadInputError
from edgecompress.nas.evolution import (
    SpaceEvolutionConfig,
    evolve_space,
    mutate_block,
    mutate_window,
    pareto_front,
)
from edgecompress.nas.predictor import LatencyPredictor, MeasureSettings, _cost, kernels_of
from edgecompress.nas.qt_score import QTConfig, capacity_loss, qt_score, qt_score_from
from edgecompress.nas.search import HYPERSPACES, SearchConfig, search


def test_qt_score_formula():
    lat, loss = [1.0, 1.0, 3.0, 4.0], [0.5, 0.25, 0.1, 0.1]
    score, rows = qt_score_from(lat, loss, [2.0, 0.5], top=1)
    assert rows[0]["fraction_meeting"] == 0.5 and rows[0]["top_loss"] == 0.25 and rows[0]["penalty"] == 1.0
    assert rows[1]["term"] == 0.0 and score == pytest.approx(4.0)  # no sample meets 0.5 ms: adds nothing
    _, rows = qt_score_from(lat, loss, [2.0], top=1, t0=0.9, a=1.0)
    assert rows[0]["penalty"] == pytest.approx(1.8)  # (t0 / p)^a when fewer than t0 meet the limit


def test_pareto_front_keeps_only_undominated():
    points = [(0.9, 2.0), (0.8, 1.0), (0.85, 2.5), (0.9, 3.0), (0.7, 0.5)]
    assert pareto_front(points) == [0, 1, 4]


def test_mutations_change_exactly_one_stage():
    hyper = HYPERSPACES.get("cifar")
    rng = random.Random(0)
    genes = hyper.random_genes(rng)
    for _ in range(20):
        b, w = mutate_block(genes, hyper, rng), mutate_window(genes, hyper, rng)
        assert sum(x != y for x, y in zip(b, genes, strict=True)) == 1
        assert [g[1] for g in b] == [g[1] for g in genes]
        assert sum(x != y for x, y in zip(w, genes, strict=True)) == 1
        assert [g[0] for g in w] == [g[0] for g in genes]


def _synthetic_predictor(hyper) -> LatencyPredictor:
    """latency = 1e-6 * MACs + 0.01 ms per unit, but fused blocks 4x slower (test data, not a measurement)."""
    rng = random.Random(0)
    samples: dict[str, list] = {}
    for _ in range(40):
        space = hyper.space(hyper.random_genes(rng))
        for k in kernels_of(space, space.sample(rng)):
            slow = 4.0 if k.kind == "fused" else 1.0
            samples.setdefault(k.kind, []).append((k, slow * 1e-6 * _cost(k)[0] + 0.01))
    for b in hyper.blocks:
        space = hyper.space(tuple((b, 0) for _ in hyper.stages))
        for sub in (space.min_subnet(), space.max_subnet()):
            for k in kernels_of(space, sub):
                slow = 4.0 if k.kind == "fused" else 1.0
                samples.setdefault(k.kind, []).append((k, slow * 1e-6 * _cost(k)[0] + 0.01))
    return LatencyPredictor("host", "onnxruntime", "int8", MeasureSettings(), samples, (1.0, 0.0, 0.0))


def test_space_evolution_returns_the_best_scored_space_and_avoids_slow_blocks():
    hyper = HYPERSPACES.get("tiny")
    predictor = _synthetic_predictor(hyper)
    qt = QTConfig((0.08,), samples=40, top=5)
    best, history = evolve_space(hyper, predictor, qt, SpaceEvolutionConfig(population=6, sample=3, cycles=6))
    assert best.format() == max(history, key=lambda h: h["qt_score"])["space"]
    assert qt_score(best, predictor, qt)[0] == pytest.approx(max(h["qt_score"] for h in history))
    assert any(all(st.startswith("irb") for st in h["space"].split("|")[1:]) for h in history) or len(history) >= 6
    assert capacity_loss(best, best.max_subnet()) < capacity_loss(best, best.min_subnet())


def test_search_config_validation():
    with pytest.raises(BadInputError, match="rpi4"):
        SearchConfig(latency_ms=5, device="rpi4")
    with pytest.raises(ValueError, match="latency_ms"):
        SearchConfig(latency_ms=0)
    with pytest.raises(ValueError, match="budget"):
        SearchConfig(latency_ms=5, budget="huge")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    train, val = digits_loaders(batch_size=64, size=16, seed=0)
    train = DataLoader(Subset(train.dataset, range(512)), batch_size=64, shuffle=True)
    hyper = HYPERSPACES.get("tiny")
    root = tmp_path_factory.mktemp("search")
    pred_path = root / "predictor.json"
    _synthetic_predictor(hyper).save(pred_path)
    config = SearchConfig(latency_ms=50.0, budget="tiny", hyperspace="tiny", predictor=str(pred_path), progress=False)
    result = search((train, val), config, root / "run")
    return result, root, (train, val), config


def test_tiny_search_writes_every_stage_and_a_measured_pareto_set(tiny_run):
    result, root, _, config = tiny_run
    run = root / "run"
    for stage in ("predictor", "space", "supernet", "subnets"):
        assert (run / stage / "stage.json").is_file()
    assert (run / "subnets" / "best.onnx").is_file()
    report = json.loads((run / "subnets" / "stage.json").read_text())
    assert report["pareto"] and all(report["candidates"][i]["status"] == "kept" for i in report["pareto"])
    for c in report["candidates"]:
        assert c["status"] in ("kept", "rejected") and c["reason"]
    best = result.report["best"]
    assert best["measured_ms"] <= config.latency_ms and abs(best["onnx_int8_accuracy"] - best["fake_quant_accuracy"]) \
        <= 0.01
    assert result.model(__import__("torch").zeros(1, 3, 16, 16)).shape == (1, 10)


def test_search_resumes_without_retraining(tiny_run):
    result, root, data, config = tiny_run
    stamp = (root / "run" / "supernet" / "supernet.pt").stat().st_mtime_ns
    again = search(data, config, root / "run")
    assert (root / "run" / "supernet" / "supernet.pt").stat().st_mtime_ns == stamp
    assert again.report["best"] == result.report["best"]


def test_unreachable_limit_states_the_fastest(tiny_run):
    _, root, data, config = tiny_run
    copy = root / "run_unreachable"
    shutil.copytree(root / "run", copy)
    shutil.rmtree(copy / "subnets")
    tight = SearchConfig(**{**config.__dict__, "latency_ms": 1e-4})
    with pytest.raises(BadInputError, match=r"unreachable.*fastest subnet .* measures [0-9.]+ ms"):
        search(data, tight, copy)


def test_cli_rejects_a_device_without_predictor(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgecompress", "search", "--device", "rpi4", "--latency-ms", "5",
                        "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "rpi4" in r.stderr and len(r.stderr.strip().splitlines()) == 1
