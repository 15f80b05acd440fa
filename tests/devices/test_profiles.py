"""Device profiles: every figure has a source, unknown names list the known ones, the host is measured once."""

from __future__ import annotations

import json

import pytest

from edgecompress.devices import profiles as P
from edgecompress.errors import BadInputError


def test_every_builtin_profile_parses_with_sources():
    assert P.PROFILES.names() == ["h200", "host", "jetson-orin-nano", "rpi4", "rpi5"]
    for name in P.PROFILES.names():
        p = P.PROFILES.get(name)
        for key in P.FIGURES:
            if key == "load_power_w" and name == "host":
                continue  # derived from load_power_w_per_core x usable cores at load time
            f = p.figure(key)
            assert f.source in P.SOURCES and f.ref, f"{name}.{key} has no source/reference"
        assert "kind" in p.tvm_target


def test_non_host_figures_are_known_where_the_cost_model_needs_them():
    for name in ("rpi4", "rpi5", "jetson-orin-nano", "h200"):
        p = P.load_profile(name)
        assert p.require("peak_fp32_gflops") > 0 and p.require("memory_bandwidth_gbs") > 0
        assert p.require("load_power_w") > 0
    assert P.load_profile("rpi4").figure("memory_bandwidth_gbs").source == "published measurement"


def test_unknown_device_lists_known_ones():
    with pytest.raises(BadInputError, match=r"unknown device 'rpi6'.*known: h200, host, jetson-orin-nano, rpi4, rpi5"):
        P.load_profile("rpi6")


def test_host_is_measured_once_and_cached(tmp_path, monkeypatch):
    data = P.host_measurements(cache=tmp_path, matmul_n=64, copy_mib=1)
    assert data["peak_fp32_gflops"] > 0 and data["memory_bandwidth_gbs"] > 0
    assert json.loads((tmp_path / "host.json").read_text())["key"]["cores"] >= 1

    def fail(*a, **k):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(P, "measure_peak_gflops", fail)
    host = P.load_profile("host", cache=tmp_path)
    assert host.value("peak_fp32_gflops") == pytest.approx(data["peak_fp32_gflops"], rel=1e-2)
    assert host.figure("peak_fp32_gflops").source == "measured"
    assert host.figure("load_power_w").source == "derived" and host.value("load_power_w") > 0
    assert host.value("cores") >= 1


def test_bad_profile_yaml_names_the_field():
    good = {"name": "x", "kind": "cpu", "tvm_target": {"kind": "llvm"},
            **{k: {"value": 1, "source": "datasheet", "ref": "r"} for k in P.FIGURES}}
    assert P.parse_profile(good).name == "x"
    with pytest.raises(BadInputError, match="figure 'cores'.*source='guess'"):
        P.parse_profile({**good, "cores": {"value": 4, "source": "guess"}}, "x.yaml")
    with pytest.raises(BadInputError, match="x.yaml: missing figure.*clock_ghz"):
        P.parse_profile({k: v for k, v in good.items() if k != "clock_ghz"}, "x.yaml")
    with pytest.raises(BadInputError, match="kind='tpu'"):
        P.parse_profile({**good, "kind": "tpu"})
