import json
import os

import pytest

from edgecompress.fileio import RunDir, atomic_path, write_json_atomic


def test_failed_stage_leaves_nothing_and_a_finished_one_is_whole(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(RuntimeError), run.stage("train") as (d, report):
        (d / "weights.pt").write_bytes(b"partial")
        raise RuntimeError("killed half-way")
    assert not run.done("train") and list(run.root.iterdir()) == []

    with run.stage("train") as (d, report):
        (d / "weights.pt").write_bytes(b"whole")
        report["val_accuracy"] = 0.98
    assert run.done("train") and run.report("train") == {"val_accuracy": 0.98}
    assert (run.path("train") / "weights.pt").read_bytes() == b"whole"
    umask = os.umask(0)
    os.umask(umask)
    assert run.path("train").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "report.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_text("{broken")
        raise ValueError("check failed")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
