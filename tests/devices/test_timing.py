import time

import numpy as np
import pytest

from edgecompress.devices.timing import LatencyStats, interleaved, measure


def test_stats_on_known_timings():
    s = LatencyStats.from_samples([4.0, 1.0, 3.0, 2.0, 10.0], batch=2)
    assert s.count == 5 and s.batch == 2
    assert s.min_ms == 1.0 and s.max_ms == 10.0
    assert s.median_ms == 3.0
    assert s.mean_ms == pytest.approx(4.0)
    assert s.p90_ms == pytest.approx(np.percentile([1, 2, 3, 4, 10], 90))  # 7.6 by linear interpolation
    assert s.p90_ms == pytest.approx(7.6)
    assert s.p99_ms == pytest.approx(9.76)
    assert s.std_ms == pytest.approx(np.std([4, 1, 3, 2, 10], ddof=1))
    assert s.throughput_per_s == pytest.approx(1000 * 2 / 4.0)


def test_single_sample_has_zero_std():
    s = LatencyStats.from_samples([2.5])
    assert s.std_ms == 0.0 and s.median_ms == 2.5 and s.p99_ms == 2.5


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [-1.0]])
def test_stats_reject_bad_samples(bad):
    with pytest.raises(ValueError):
        LatencyStats.from_samples(bad)


def test_measure_times_what_it_runs():
    calls = []
    samples = measure(lambda: (calls.append(1), time.sleep(0.002)), warmup=3, repeats=5)
    assert len(calls) == 8 and len(samples) == 5
    assert min(samples) >= 1.9  # slept 2 ms each time


def test_interleaved_runs_every_candidate_each_round():
    order = []
    out = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, repeats=2,
                      rounds=2)
    assert len(out["a"]) == len(out["b"]) == 4
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 2
