"""Data the project can always use, offline.

- ``digits``: scikit-learn's 1,797 8x8 hand-written digits (shipped inside the package), resized to
  ``size`` x ``size`` with ``channels`` channels, split stratified with a fixed seed.
- ``image_folder``: ``DIR/<class>/<image>`` (PNG/JPEG/BMP/NPY), one sub-folder per class.
- ``npz``: an ``.npz`` with arrays ``x`` (N, C, H, W) float and ``y`` (N,) int.
- ``load(spec)``: the CLI's ``--data digits|DIR|FILE.npz``.

>>> train, val = digits_loaders(batch_size=64)
>>> x, y = next(iter(train)); tuple(x.shape)
(64, 3, 32, 32)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from edgecompress.errors import BadInputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".npy"}


@dataclass(frozen=True)
class DataSpec:
    """What a data source holds: sample shape, number of classes and where it came from."""

    name: str
    sample_shape: tuple[int, ...]
    num_classes: int
    num_train: int
    num_val: int


def _resize(x: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    # (N, 1, h, w) in [0, 1] -> (N, channels, size, size), normalised to mean 0 / std 1 per data set
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.expand(-1, channels, -1, -1).contiguous()
    return x


def digits_arrays(
    size: int = 32, channels: int = 3, val_fraction: float = 0.2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as tensors ``(x_train, y_train, x_val, y_val)``, normalised."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if size < 8:
        raise BadInputError(f"size={size}: digits are 8x8, choose a size >= 8")
    if channels not in (1, 3):
        raise BadInputError(f"channels={channels}: choose 1 or 3")
    if not 0.0 < val_fraction < 1.0:
        raise BadInputError(f"val_fraction={val_fraction}: must lie in (0, 1)")
    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    labels = bunch.target.astype(np.int64)
    idx_train, idx_val = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, random_state=seed, stratify=labels
    )
    x = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8)
    x = _resize(x, size, channels)
    mean, std = x[idx_train].mean(), x[idx_train].std()
    x = (x - mean) / std
    y = torch.from_numpy(labels)
    return x[idx_train], y[idx_train], x[idx_val], y[idx_val]


def digits_loaders(
    batch_size: int = 64, size: int = 32, channels: int = 3, val_fraction: float = 0.2, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled with ``seed``) and validation loaders over digits."""
    x_tr, y_tr, x_va, y_va = digits_arrays(size, channels, val_fraction, seed)
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x_tr, y_tr), batch_size=batch_size, shuffle=True, generator=generator)
    val = DataLoader(TensorDataset(x_va, y_va), batch_size=256, shuffle=False)
    return train, val


def npz_loaders(
    path: str | Path, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """Loaders from an ``.npz`` holding ``x`` (N, C, H, W) and ``y`` (N,)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path}: not a readable .npz file ({exc})") from None
    if "x" not in arrays or "y" not in arrays:
        raise BadInputError(f"{path}: needs arrays 'x' and 'y', found {sorted(arrays)}")
    x, y = arrays["x"], arrays["y"]
    if x.ndim != 4:
        raise BadInputError(f"{path}: 'x' must be (N, C, H, W), got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise BadInputError(f"{path}: 'y' must be ({x.shape[0]},), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise BadInputError(f"{path}: 'y' must hold integer class labels, got {y.dtype}")
    return _split_loaders(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64)),
                          batch_size, val_fraction, seed)


def image_folder_loaders(
    root: str | Path, batch_size: int = 64, size: int = 32, val_fraction: float = 0.2, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """Loaders from ``root/<class>/<file>``; images are read with matplotlib, resized, RGB."""
    import matplotlib.image as mpimg

    root = Path(root)
    if not root.is_dir():
        raise BadInputError(f"{root}: not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise BadInputError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for file in sorted((root / cls).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                img = np.load(file, allow_pickle=False) if file.suffix == ".npy" else mpimg.imread(file)
            except Exception as exc:  # noqa: BLE001 - any decoder error is the file's fault
                raise BadInputError(f"{file}: cannot read image ({exc})") from None
            img = np.asarray(img, dtype=np.float32)
            if img.max() > 1.0:
                img = img / 255.0
            if img.ndim == 2:
                img = img[:, :, None]
            t = torch.from_numpy(np.ascontiguousarray(img[:, :, :3])).permute(2, 0, 1)[None]
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
            xs.append(t.expand(-1, 3, -1, -1))
            ys.append(label)
    if not xs:
        raise BadInputError(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {classes}")
    x = torch.cat(xs)
    x = (x - x.mean()) / (x.std() + 1e-8)
    return _split_loaders(x, torch.tensor(ys), batch_size, val_fraction, seed)


def _split_loaders(x: torch.Tensor, y: torch.Tensor, batch_size: int, val_fraction: float,
                   seed: int) -> tuple[DataLoader, DataLoader]:
    if len(x) < 2:
        raise BadInputError(f"need at least 2 samples, got {len(x)}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=generator)
    n_val = max(1, int(round(len(x) * val_fraction)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    train = DataLoader(TensorDataset(x[train_idx], y[train_idx]), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    val = DataLoader(TensorDataset(x[val_idx], y[val_idx]), batch_size=256, shuffle=False)
    return train, val


def load(spec: str, batch_size: int = 64, size: int = 32, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """``digits`` | a directory of class folders | a ``.npz`` file -> (train, val) loaders."""
    if spec == "digits":
        return digits_loaders(batch_size=batch_size, size=size, seed=seed)
    path = Path(spec)
    if path.suffix == ".npz":
        return npz_loaders(path, batch_size=batch_size, seed=seed)
    if path.is_dir():
        return image_folder_loaders(path, batch_size=batch_size, size=size, seed=seed)
    raise BadInputError(f"--data {spec!r}: expected 'digits', a directory of class folders or a .npz file")


def sample_batch(loader: DataLoader, n: int | None = None) -> torch.Tensor:
    """The first ``n`` inputs of a loader (for export and calibration examples)."""
    try:
        x = next(iter(loader))[0]
    except StopIteration:
        raise BadInputError("the data loader is empty") from None
    return x if n is None else x[:n]
