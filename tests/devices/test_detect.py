"""Detection from injected files and a fake NVML module."""

from __future__ import annotations

from types import SimpleNamespace

from edgecompress.devices.detect import detect_devices, detect_jetson, detect_nvidia, detect_raspberry_pi


def test_raspberry_pi_from_device_tree(tmp_path):
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    d = detect_raspberry_pi(model)
    assert d.profile == "rpi5" and d.name == "Raspberry Pi 5 Model B Rev 1.0"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    assert detect_raspberry_pi(model).profile == "rpi4"
    model.write_bytes(b"Raspberry Pi 3 Model B Plus Rev 1.3\x00")
    assert detect_raspberry_pi(model).profile is None  # a Pi, but no profile for it
    assert detect_raspberry_pi(tmp_path / "absent") is None


def test_jetson_from_release_file(tmp_path):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64\n")
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    d = detect_jetson(release, model)
    assert d.profile == "jetson-orin-nano" and d.details["l4t_release"].startswith("# R36")
    assert detect_jetson(tmp_path / "absent", model) is None


class FakeNvml:
    def __init__(self, names):
        self.names = names

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.names)

    def nvmlDeviceGetHandleByIndex(self, i):
        return SimpleNamespace(i=i)

    def nvmlDeviceGetName(self, h):
        return self.names[h.i].encode()  # older pynvml returns bytes

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return (9, 0)


def test_nvidia_through_nvml_and_its_absence():
    gpus, reason = detect_nvidia(FakeNvml(["NVIDIA H200", "NVIDIA T4"]))
    assert [g.profile for g in gpus] == ["h200", None] and reason == ""
    assert gpus[0].details["compute_capability"] == "9.0"
    gpus, reason = detect_nvidia(None)
    assert gpus == [] and "not installed" in reason


def test_detect_devices_host_first(tmp_path):
    found = detect_devices(model_path=tmp_path / "m", release_path=tmp_path / "r", nvml=FakeNvml(["NVIDIA H200"]))
    assert [d.profile for d in found] == ["host", "h200"] and found[0].kind == "cpu"
