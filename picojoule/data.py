"""Image-classification datasets without torchvision: in-memory arrays, .npz files, ImageFolder trees, user hooks.

Every loader returns an :class:`ArrayDataset`, whose :meth:`ArrayDataset.batches` yields normalised float32
NCHW tensors ready for a model.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from picojoule.errors import PicojouleError

# What the pretrained CIFAR-10 ResNets in shared/data/models expect (RGB in [0,1], then per-channel).
CIFAR_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
CIFAR_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

AUGMENT_PAD = 4  # the standard CIFAR random crop: zero-pad 4 pixels per side, crop back to size
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_HOOK_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def _channel_layout(shape: tuple[int, ...], layout: str) -> str:
    """Resolve ``"auto"`` to ``"NCHW"`` or ``"NHWC"`` for a 4-D image array shape."""
    if layout in ("NCHW", "NHWC"):
        return layout
    if layout != "auto":
        raise PicojouleError(f"layout: expected 'auto', 'NCHW' or 'NHWC', got {layout!r}")
    c_first, c_last = shape[1] <= 4, shape[3] <= 4
    if c_last and not c_first:
        return "NHWC"
    if c_first and not c_last:
        return "NCHW"
    raise PicojouleError(f"images of shape {shape}: cannot tell the channel axis; pass layout='NCHW' or 'NHWC'")


def _channels_error(at: str, channels: int, why: str, shape: tuple[int, ...]) -> PicojouleError:
    return PicojouleError(f"{at}: expected images of shape (N, H, W, {channels}) or (N, {channels}, H, W) "
                          f"({why}), got {shape}")


def _per_channel(values: float | Sequence[float] | None, default: float, channels: int, what: str) -> np.ndarray:
    """A float32 (C,1,1) array from a scalar or one value per channel; ``what`` ends with "mean" or "std"."""
    arr = np.full(channels, default, np.float32) if values is None else np.asarray(values, np.float32).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, channels)
    if arr.size != channels:
        raise PicojouleError(f"{what}: expected 1 or {channels} values (one per image channel), got {arr.size}")
    if what.endswith("std") and np.any(arr <= 0):
        raise PicojouleError(f"{what}: expected positive values, got {arr.tolist()}")
    return arr.reshape(channels, 1, 1)


@dataclass(eq=False)
class ArrayDataset:
    """Images and integer labels held in memory.

    ``x`` is uint8 (scaled to [0,1] on the way out) or float, shaped NHWC, NCHW or NHW (one channel); it is
    stored as NCHW. ``mean``/``std`` are per-channel (or scalar), applied after scaling; ``None`` leaves the
    values as they are. ``fields`` say where the images and the labels came from, in error messages (a loader
    sets e.g. ``("data.npz: field 'x_test'", "data.npz: field 'y_test'")``).
    """

    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    mean: Sequence[float] | float | None = None
    std: Sequence[float] | float | None = None
    name: str = "data"
    classes: tuple[str, ...] | None = None
    layout: str = field(default="auto", repr=False)
    fields: tuple[str, str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        x, y = np.asarray(self.x), np.asarray(self.y)
        self._given_shape = x.shape
        self.fields = self.fields or (f"{self.name}: images", f"{self.name}: labels")
        at_x, at_y = self.fields
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim == 4:
            if _channel_layout(x.shape, self.layout) == "NHWC":
                x = x.transpose(0, 3, 1, 2)
        else:
            raise PicojouleError(f"{at_x}: expected a 3-D or 4-D array, got shape {x.shape}")
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise PicojouleError(f"{at_x}: expected uint8 or float pixels, got dtype {x.dtype}")
        if y.ndim != 1 or len(y) != len(x):
            raise PicojouleError(f"{at_y}: expected shape ({len(x)},) to match the images, got {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise PicojouleError(f"{at_y}: expected integer class ids, got dtype {y.dtype}")
        if len(y) and y.min() < 0:
            raise PicojouleError(f"{at_y}: expected class ids >= 0, got {int(y.min())}")
        self.x, self.y, self.layout = np.ascontiguousarray(x), y.astype(np.int64), "NCHW"
        channels = x.shape[1]
        self._mean = _per_channel(self.mean, 0.0, channels, f"{self.name}: mean")
        self._std = _per_channel(self.std, 1.0, channels, f"{self.name}: std")

    def __len__(self) -> int:
        return len(self.y)

    def check_fits(self, channels: int | None = None, classes: int | None = None) -> None:
        """A one-line error unless the images have ``channels`` channels and every label is in 0..classes-1
        (a model's input channels and number of outputs; None is not checked)."""
        at_x, at_y = self.fields  # type: ignore[misc]
        if channels is not None and self.x.shape[1] != channels:
            raise _channels_error(at_x, channels, f"the model takes {channels} channels", self._given_shape)
        if classes is not None and len(self.y) and int(self.y.max()) >= classes:
            raise PicojouleError(f"{at_y}: expected class ids 0..{classes - 1} (the model has {classes} outputs), "
                                 f"got {int(self.y.max())}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        """Number of classes: the class names if known, else the largest label + 1."""
        return len(self.classes) if self.classes else int(self.y.max()) + 1 if len(self.y) else 0

    def subset(self, n_or_indices: int | Sequence[int] | np.ndarray) -> ArrayDataset:
        """The first ``n`` samples (all of them if there are fewer), or the samples at the given indices."""
        if isinstance(n_or_indices, (int, np.integer)):
            idx: Any = slice(0, max(int(n_or_indices), 0))
        else:
            idx = np.asarray(n_or_indices, dtype=np.int64)
        return ArrayDataset(self.x[idx], self.y[idx], self.mean, self.std, self.name, self.classes, "NCHW",
                            self.fields)

    def normalise(self, raw: np.ndarray) -> torch.Tensor:
        """Raw NCHW pixels (this dataset's dtype) -> normalised float32 tensor."""
        out = raw.astype(np.float32)
        if raw.dtype == np.uint8:
            out *= 1.0 / 255.0
        out -= self._mean
        out /= self._std
        return torch.from_numpy(out)

    def batches(
        self, batch_size: int, shuffle: bool = False, seed: int | Sequence[int] = 0, augment: bool = False,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (images float32 NCHW normalised, labels int64) batches; deterministic under ``seed``.

        ``augment`` applies the standard CIFAR augmentation: random crop after zero-padding 4 pixels, and a
        random horizontal flip.
        """
        if batch_size < 1:
            raise PicojouleError(f"batch_size: expected a positive integer, got {batch_size}")
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(self)) if shuffle else np.arange(len(self))
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            if not shuffle:
                idx = slice(int(idx[0]), int(idx[-1]) + 1)  # contiguous: a view, no gather
            raw = self.x[idx]
            if augment:
                raw = _crop_and_flip(raw, rng)
            yield self.normalise(raw), torch.from_numpy(self.y[idx])


def _crop_and_flip(raw: np.ndarray, rng: np.random.Generator, pad: int = AUGMENT_PAD) -> np.ndarray:
    """Random crop of a zero-padded NCHW batch back to its size, and a random horizontal flip (vectorised)."""
    n, c, h, w = raw.shape
    padded = np.pad(raw, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    flip = rng.random(n) < 0.5
    rows = dy[:, None] + np.arange(h)
    cols = dx[:, None] + np.arange(w)
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def load_npz(
    path: str | os.PathLike[str],
    split: str = "test",
    mean: Sequence[float] | float | None = CIFAR_MEAN,
    std: Sequence[float] | float | None = CIFAR_STD,
    layout: str = "auto",
) -> ArrayDataset:
    """Read ``x_<split>`` (images) and ``y_<split>`` (labels) from a .npz file (no pickles)."""
    path = Path(path)
    if not path.is_file():
        raise PicojouleError(f"{path}: file not found (expected a .npz with x_{split}/y_{split})")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {}
            for key in (f"x_{split}", f"y_{split}"):
                if key not in archive.files:
                    raise PicojouleError(f"{path}: no array {key!r} (it has {', '.join(archive.files) or 'none'})")
                arrays[key] = archive[key]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise PicojouleError(f"{path}: not a readable .npz of plain arrays ({exc})") from None
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    at_x, at_y = f"{path}: field 'x_{split}'", f"{path}: field 'y_{split}'"
    if x.ndim not in (3, 4):
        raise PicojouleError(f"{at_x}: expected images (N,H,W,C), (N,C,H,W) or (N,H,W), got {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise PicojouleError(f"{at_y}: expected shape ({len(x)},) to match x_{split}, got {y.shape}")
    channels = 1 if x.ndim == 3 else x.shape[1 if _channel_layout(x.shape, layout) == "NCHW" else 3]
    for values in (mean, std):  # per-channel normalisation (CIFAR's by default) says how many channels to expect
        if values is not None and np.size(values) not in (1, channels):
            raise _channels_error(at_x, np.size(values), f"{np.size(values)} channels, one per mean/std value", x.shape)
    return ArrayDataset(x, y, mean, std, name=f"{path.name}:{split}", layout=layout, fields=(at_x, at_y))


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_imagefolder(
    root: str | os.PathLike[str],
    split: str | None = None,
    mean: Sequence[float] | float | None = CIFAR_MEAN,
    std: Sequence[float] | float | None = CIFAR_STD,
    progress: bool = False,
) -> ArrayDataset:
    """Decode an ImageFolder tree ``root/[split/]<class>/<image>`` to RGB uint8; labels follow sorted class names.

    All images must have the same size. Files within a class are read in sorted name order.
    """
    from PIL import Image, UnidentifiedImageError

    base = Path(root) if split is None else Path(root) / split
    if not base.is_dir():
        raise PicojouleError(f"{base}: directory not found (expected an ImageFolder tree <class>/<images>)")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise PicojouleError(f"{base}: no class folders (expected {base}/<class>/<images>)")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = _list_images(base / name)
        if not found:
            hint = f"; if {base} holds splits, pass split={name!r}" if split is None else ""
            raise PicojouleError(f"{base / name}: class folder has no images{hint}")
        files += found
        labels += [label] * len(found)

    x: np.ndarray | None = None
    for i, path in enumerate(tqdm(files, desc=f"decode {base.name}", disable=not progress, file=sys.stderr)):
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise PicojouleError(f"{path}: cannot decode image ({exc})") from None
        if x is None:
            x = np.empty((len(files), *pixels.shape), np.uint8)
        elif pixels.shape != x.shape[1:]:
            raise PicojouleError(
                f"{path}: image is {pixels.shape[1]}x{pixels.shape[0]}, expected {x.shape[2]}x{x.shape[1]} "
                f"like {files[0].name} (all images must have the same size)"
            )
        x[i] = pixels
    assert x is not None
    name = Path(root).name + (f"/{split}" if split else "")
    return ArrayDataset(x, np.asarray(labels, np.int64), mean, std, name=name, classes=tuple(classes), layout="NHWC")


def _load_hook(spec: str, options: dict[str, Any]) -> ArrayDataset:
    """Call a user's ``package.module:function`` that returns an ArrayDataset or (x, y) arrays."""
    if not _HOOK_RE.match(spec):
        raise PicojouleError(f"dataset hook {spec!r}: expected 'package.module:function'")
    module_name, func_name = spec.split(":")
    cwd_added = os.getcwd() not in sys.path
    if cwd_added:  # like `python -m`, let a hook live in the current directory
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PicojouleError(f"dataset hook {spec!r}: cannot import module {module_name!r} ({exc})") from None
    finally:
        if cwd_added:
            sys.path.remove(os.getcwd())
    func = getattr(module, func_name, None)
    if not callable(func):
        what = "has no" if func is None else "has a non-callable"
        raise PicojouleError(f"dataset hook {spec!r}: module {module_name!r} {what} function {func_name!r}")
    result = func(**options)
    if isinstance(result, ArrayDataset):
        return result
    if isinstance(result, tuple) and len(result) == 2:
        return ArrayDataset(np.asarray(result[0]), np.asarray(result[1]), name=f"dataset hook {spec!r}")
    raise PicojouleError(f"dataset hook {spec!r}: expected it to return an ArrayDataset or (x, y), got "
                         f"{type(result).__name__}")


_SPEC_KEYS = {"source", "split", "mean", "std", "start", "stop"}


def load_dataset(spec: str | os.PathLike[str] | dict[str, Any]) -> ArrayDataset:
    """Load a dataset from a spec: a ``.npz`` path, an ImageFolder directory, ``"digits"`` or ``"pkg.mod:func"``.

    A dict spec is ``{"source": <one of those>, "split": ..., "mean": ..., "std": ..., "start": ..., "stop": ...}``
    (all but ``source`` optional). ``split`` defaults to ``"test"`` for .npz and digits, and to none for
    ImageFolder. ``start``/``stop`` keep the samples ``start <= i < stop`` (e.g. a validation split disjoint from a
    test split drawn from the same file). A hook is called with the dict's other keys as keyword arguments.
    """
    if isinstance(spec, dict) and ("start" in spec or "stop" in spec):
        whole = load_dataset({k: v for k, v in spec.items() if k not in ("start", "stop")})
        start, stop = spec.get("start", 0), spec.get("stop", len(whole))
        for key, value in (("start", start), ("stop", stop)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= len(whole):
                raise PicojouleError(f"dataset {spec['source']}: {key}: expected an integer in 0..{len(whole)}, "
                                     f"got {value!r}")
        if start >= stop:
            raise PicojouleError(f"dataset {spec['source']}: start {start} >= stop {stop}: no samples left")
        return whole.subset(np.arange(start, stop))
    if isinstance(spec, dict):
        if "source" not in spec:
            raise PicojouleError(f"dataset: missing key 'source' (expected one of {sorted(_SPEC_KEYS)})")
        unknown = set(spec) - _SPEC_KEYS
        source = spec["source"]
        options = {k: v for k, v in spec.items() if k != "source"}
        if unknown and not (isinstance(source, str) and _HOOK_RE.match(source)):
            raise PicojouleError(f"dataset: unknown key(s) {sorted(unknown)} (expected {sorted(_SPEC_KEYS)})")
    elif isinstance(spec, (str, os.PathLike)):
        source, options = spec, {}
    else:
        raise PicojouleError(f"dataset: expected a string or a mapping, got {type(spec).__name__}")

    source_str = os.fspath(source)
    path = Path(source_str).expanduser()
    norm = {k: options[k] for k in ("mean", "std") if k in options}
    if source_str == "digits":
        from picojoule.digits import digits_datasets

        split = options.get("split", "test")
        if norm:
            raise PicojouleError("dataset digits: mean/std are fixed for digits; remove them from the spec")
        train, test = digits_datasets()
        if split not in ("train", "test"):
            raise PicojouleError(f"dataset digits: split: expected 'train' or 'test', got {split!r}")
        return train if split == "train" else test
    if path.is_dir():
        return load_imagefolder(path, options.get("split"), **norm)
    if path.suffix == ".npz" or path.is_file():
        if path.suffix != ".npz":
            raise PicojouleError(f"{path}: expected a .npz file or an ImageFolder directory")
        return load_npz(path, options.get("split", "test"), **norm)
    if ":" in source_str and "/" not in source_str and "\\" not in source_str:
        return _load_hook(source_str, options)
    raise PicojouleError(
        f"dataset {source_str!r}: not found (expected a .npz file, an ImageFolder directory, 'digits' or "
        "'package.module:function')"
    )
