import numpy as np
import pytest
import torch

from edgecompress import data
from edgecompress.errors import BadInputError


def test_digits_split_shapes_and_normalisation():
    x_tr, y_tr, x_va, y_va = data.digits_arrays(size=32, channels=3)
    assert x_tr.shape == (1437, 3, 32, 32) and x_va.shape == (360, 3, 32, 32)
    assert set(y_tr.tolist()) == set(range(10)) and set(y_va.tolist()) == set(range(10))
    assert abs(float(x_tr.mean())) < 1e-3 and abs(float(x_tr.std()) - 1) < 1e-2


def test_digits_is_deterministic_per_seed():
    a = data.digits_arrays(seed=0)[1]
    b = data.digits_arrays(seed=0)[1]
    c = data.digits_arrays(seed=1)[1]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_npz_loaders(tmp_path):
    rng = np.random.default_rng(0)
    f = tmp_path / "d.npz"
    np.savez(f, x=rng.standard_normal((20, 3, 8, 8)).astype(np.float32), y=rng.integers(0, 3, 20))
    train, val = data.npz_loaders(f, batch_size=8)
    assert len(train.dataset) == 16 and len(val.dataset) == 4
    assert next(iter(train))[0].shape == (8, 3, 8, 8)


def test_npz_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        data.npz_loaders(tmp_path / "missing.npz")
    f = tmp_path / "bad.npz"
    np.savez(f, x=np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(BadInputError, match="'x' and 'y'"):
        data.npz_loaders(f)
    np.savez(f, x=np.zeros((4, 8, 8), np.float32), y=np.zeros(4, np.int64))
    with pytest.raises(BadInputError, match=r"\(N, C, H, W\)"):
        data.npz_loaders(f)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match="not a readable"):
        data.npz_loaders(corrupt)


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            np.save(tmp_path / cls / f"{i}.npy", rng.random((12, 12, 3)).astype(np.float32))
    train, val = data.image_folder_loaders(tmp_path, size=16, batch_size=4)
    x, y = next(iter(train))
    assert x.shape[1:] == (3, 16, 16)
    assert len(train.dataset) + len(val.dataset) == 6


def test_empty_image_folder_is_an_error(tmp_path):
    with pytest.raises(BadInputError, match="no class sub-folders"):
        data.image_folder_loaders(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(BadInputError, match="no images"):
        data.image_folder_loaders(tmp_path)


def test_load_spec_errors():
    with pytest.raises(BadInputError, match="expected 'digits'"):
        data.load("nowhere")
