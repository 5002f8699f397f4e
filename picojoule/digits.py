"""The offline default: scikit-learn's bundled 8x8 digits and a small CNN, trained on first use and cached."""

from __future__ import annotations

import os
import sys
import warnings
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from picojoule.data import ArrayDataset
from picojoule.errors import PicojouleError

CACHE_ENV = "PICOJOULE_CACHE"
N_TEST = 400
_CACHE_VERSION = 2  # bump when the architecture, the split or the training recipe changes
_EPOCHS, _BATCH, _LR = 10, 64, 0.05


def cache_dir() -> Path:
    """``$PICOJOULE_CACHE`` if set, else ``~/.cache/picojoule``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "picojoule").expanduser()


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (1797 8x8 images, 0..16), read from its CSV without importing sklearn
    (a multi-second import); the file is located through the package's metadata."""
    try:
        path = Path(str(distribution("scikit-learn").locate_file("sklearn/datasets/data/digits.csv.gz")))
        data = np.loadtxt(path, delimiter=",", dtype=np.float32)
    except (PackageNotFoundError, OSError) as e:
        raise PicojouleError(f"the digits dataset needs scikit-learn installed ({e})") from None
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def _stratified_split(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices with each class in the test set in proportion (largest remainders)."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    share = counts * n_test / len(y)
    take = np.floor(share).astype(int)
    take[np.argsort(take - share)[: n_test - take.sum()]] += 1
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)])
    return np.setdiff1d(np.arange(len(y)), test), np.sort(test)


def digits_datasets(n_test: int = N_TEST, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
    """The 1797 digits as (train, test) float images in [0,1], shape (N,1,8,8); a stratified split."""
    images, y = _digits_arrays()
    x = (images / 16.0).astype(np.float32)[:, None]
    train, test = _stratified_split(y, n_test, seed)
    x_tr, x_te, y_tr, y_te = x[train], x[test], y[train], y[test]
    mean, std = round(float(x_tr.mean()), 4), round(float(x_tr.std()), 4)
    classes = tuple(str(d) for d in range(10))
    return (ArrayDataset(x_tr, y_tr, mean, std, "digits:train", classes, "NCHW"),
            ArrayDataset(x_te, y_te, mean, std, "digits:test", classes, "NCHW"))


class DigitsCNN(nn.Module):
    """conv 1->16 (3x3), conv 16->32 (3x3, stride 2), conv 32->32 (3x3), each + BN + ReLU; avg pool; linear 32->10."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def train_digits_cnn(train: ArrayDataset, seed: int = 0, progress: bool = True) -> DigitsCNN:
    """Train a DigitsCNN from scratch (SGD + cosine); deterministic under ``seed`` (runs single-threaded)."""
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)  # reductions then do not depend on the machine's core count
        try:
            model = DigitsCNN()
            steps = _EPOCHS * (len(train) // _BATCH)
            opt = torch.optim.SGD(model.parameters(), lr=_LR, momentum=0.9, weight_decay=5e-4, nesterov=True)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=_LR, total_steps=steps)
            loss_fn = nn.CrossEntropyLoss()
            model.train()
            for epoch in tqdm(range(_EPOCHS), desc="train digits CNN", disable=not progress, file=sys.stderr):
                for xb, yb in train.batches(_BATCH, shuffle=True, seed=seed * 1000 + epoch, drop_last=True):
                    opt.zero_grad(set_to_none=True)
                    loss_fn(model(xb), yb).backward()
                    opt.step()
                    sched.step()
        finally:
            torch.set_num_threads(threads)
    return model.eval()


def pretrained_digits_cnn(
    seed: int = 0, progress: bool = True, cache: Path | None = None
) -> tuple[nn.Module, ArrayDataset, ArrayDataset]:
    """(trained DigitsCNN in eval mode, train set, test set); trains on first use and caches the state_dict."""
    train, test = digits_datasets()
    path = (cache or cache_dir()) / f"digits_cnn_v{_CACHE_VERSION}_seed{seed}.pt"
    model = DigitsCNN()
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model.eval(), train, test
        except Exception as exc:  # a truncated or stale cache file: retrain and overwrite it
            warnings.warn(f"{path}: unreadable cached weights ({exc}); retraining", stacklevel=2)
    model = train_digits_cnn(train, seed, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return model, train, test
