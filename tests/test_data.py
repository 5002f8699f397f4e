"""Dataset loaders on the real CIFAR-10 reference files (shared/ beside the repo) and on small made-up trees."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from picojoule.data import CIFAR_MEAN, CIFAR_STD, ArrayDataset, load_dataset, load_imagefolder, load_npz
from picojoule.errors import PicojouleError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR = SHARED / "cifar10"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PER_CLASS = 40  # images per class extracted from the JPEG tarball


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference data {path} is absent (expected shared/data beside the repository)")
    return path


@pytest.fixture(scope="module")
def jpeg_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first PER_CLASS test images of every class, extracted from the real tarball."""
    tar_path = need(CIFAR / "jpeg_imagefolder.tar.gz")
    root = tmp_path_factory.mktemp("cifar_jpeg")
    with tarfile.open(tar_path) as tf:
        wanted = []
        for member in tf:  # the test split comes first in the archive: stop at the train split
            if member.name.startswith("train/") and wanted:
                break
            parts = member.name.split("/")
            if member.isfile() and parts[0] == "test" and int(Path(parts[-1]).stem) < PER_CLASS:
                wanted.append(member)
        tf.extractall(root, members=wanted, filter="data")
    return root


def test_npz_lossless_subset_shapes_and_labels() -> None:
    path = need(CIFAR / "lossless_subset.npz")
    test, train = load_npz(path), load_npz(path, split="train")
    assert (len(test), test.image_shape) == (1017, (3, 32, 32))
    assert (len(train), train.image_shape) == (5085, (3, 32, 32))
    assert test.y.dtype == np.int64 and set(np.unique(test.y)) == set(range(10))
    with np.load(path) as raw:  # NHWC in the file -> NCHW in the dataset, pixels unchanged
        np.testing.assert_array_equal(test.x[5], raw["x_test"][5].transpose(2, 0, 1))


def test_npz_batches_are_normalised_nchw() -> None:
    data = load_npz(need(CIFAR / "lossless_subset.npz"))
    xb, yb = next(data.batches(512))
    assert xb.dtype == torch.float32 and xb.shape == (512, 3, 32, 32) and yb.dtype == torch.int64
    with np.load(CIFAR / "lossless_subset.npz") as raw:
        pixels = raw["x_test"][:512].astype(np.float32) / 255.0
    expected = (pixels - np.array(CIFAR_MEAN, np.float32)) / np.array(CIFAR_STD, np.float32)
    np.testing.assert_allclose(xb.numpy(), expected.transpose(0, 3, 1, 2), atol=1e-5)
    per_channel_mean = xb.mean(dim=(0, 2, 3))
    per_channel_std = xb.std(dim=(0, 2, 3))
    assert per_channel_mean.abs().max() < 0.25, per_channel_mean
    assert ((per_channel_std > 0.8) & (per_channel_std < 1.3)).all(), per_channel_std


def test_imagefolder_labels_follow_sorted_classes_and_match_decoded_npz(jpeg_tree: Path) -> None:
    data = load_imagefolder(jpeg_tree, split="test")
    assert data.classes == CLASSES and data.num_classes == 10
    assert len(data) == 10 * PER_CLASS and data.image_shape == (3, 32, 32) and data.x.dtype == np.uint8
    np.testing.assert_array_equal(data.y, np.repeat(np.arange(10), PER_CLASS))
    # jpeg_test.npz holds the same JPEGs decoded in original order; file NNNN is the NNNN-th of its class.
    with np.load(need(CIFAR / "jpeg_test.npz")) as ref:
        x_ref, y_ref = ref["x_test"], ref["y_test"]
    for label in range(10):
        expected = x_ref[y_ref == label][:PER_CLASS].transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(data.x[data.y == label], expected)


def test_imagefolder_without_split_hints_at_split(jpeg_tree: Path) -> None:
    with pytest.raises(PicojouleError, match="pass split='test'"):
        load_imagefolder(jpeg_tree)
    assert len(load_imagefolder(jpeg_tree / "test")) == 10 * PER_CLASS


def test_imagefolder_rejects_mixed_sizes_and_missing_root(tmp_path: Path) -> None:
    from PIL import Image

    for cls, size in (("a", 8), ("b", 9)):
        (tmp_path / cls).mkdir()
        Image.new("L", (size, size), 128).save(tmp_path / cls / "0.png")
    with pytest.raises(PicojouleError, match=r"0\.png: image is 9x9, expected 8x8") as err:
        load_imagefolder(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(PicojouleError, match="directory not found"):
        load_imagefolder(tmp_path / "nope")


def test_imagefolder_converts_grayscale_to_rgb(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "only").mkdir()
    Image.new("L", (5, 4), 200).save(tmp_path / "only" / "x.png")
    data = load_imagefolder(tmp_path, mean=None, std=None)
    assert data.image_shape == (3, 4, 5) and (data.x == 200).all()


def test_array_dataset_layouts_subset_and_augment() -> None:
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    y = np.arange(10) % 3
    a = ArrayDataset(nhwc, y)
    b = ArrayDataset(nhwc.transpose(0, 3, 1, 2).copy(), y)
    np.testing.assert_array_equal(a.x, b.x)
    assert ArrayDataset(nhwc[..., 0], y).image_shape == (1, 16, 16)
    assert len(a.subset(4)) == 4 and len(a.subset(99)) == 10
    np.testing.assert_array_equal(a.subset([7, 2]).y, y[[7, 2]])

    def first(seed: int) -> torch.Tensor:
        return next(a.batches(10, shuffle=True, seed=seed, augment=True))[0]

    assert torch.equal(first(1), first(1)) and not torch.equal(first(1), first(2))
    plain = next(a.batches(10))[0]
    assert first(1).shape == plain.shape and not torch.equal(first(1), plain)
    with pytest.raises(PicojouleError, match="channel axis"):
        ArrayDataset(np.zeros((2, 3, 3, 3), np.uint8), np.zeros(2, np.int64))
    with pytest.raises(PicojouleError, match="mean: expected 1 or 3 values"):
        ArrayDataset(nhwc, y, mean=(0.5, 0.5))


def test_augment_is_a_shifted_or_flipped_copy() -> None:
    x = np.arange(2 * 1 * 12 * 12, dtype=np.float32).reshape(2, 1, 12, 12) + 1  # no zeros except padding
    data = ArrayDataset(x, np.zeros(2, np.int64))
    out = next(data.batches(2, augment=True, seed=3))[0].numpy()
    for img, src in zip(out[:, 0], x[:, 0]):
        inside = img[img != 0]  # pixels that came from the image, not the zero padding
        assert inside.size >= 8 * 8 and np.isin(inside, src).all()


def test_load_dataset_dispatch(tmp_path: Path, jpeg_tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(load_dataset(str(need(CIFAR / "lossless_subset.npz")))) == 1017
    assert len(load_dataset({"source": CIFAR / "lossless_subset.npz", "split": "train"})) == 5085
    assert len(load_dataset({"source": str(jpeg_tree), "split": "test"})) == 10 * PER_CLASS
    digits = load_dataset({"source": "digits", "split": "train"})
    assert digits.image_shape == (1, 8, 8) and len(digits) + len(load_dataset("digits")) == 1797
    (tmp_path / "my_hook_data.py").write_text(
        "import numpy as np\n"
        "def arrays(split='test'):\n"
        "    n = 6 if split == 'train' else 4\n"
        "    return np.zeros((n, 8, 8, 3), np.uint8), np.arange(n) % 2\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert len(load_dataset("my_hook_data:arrays")) == 4
    assert len(load_dataset({"source": "my_hook_data:arrays", "split": "train"})) == 6


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:load", "cannot import module 'no_such_module_xyz'"),
        ("os.path:no_such_function", "has no function 'no_such_function'"),
        ("os:sep", "non-callable function 'sep'"),
        ("a:b:c", "expected 'package.module:function'"),
        ("pkg.mod:", "expected 'package.module:function'"),
        ("nothing_here", "not found"),
        ({"source": "digits", "splt": "x"}, "unknown key"),
        ({"split": "x"}, "missing key 'source'"),
    ],
)
def test_load_dataset_bad_specs_give_one_line_errors(spec: str | dict, message: str) -> None:
    with pytest.raises(PicojouleError, match=message) as err:
        load_dataset(spec)
    assert "\n" not in str(err.value)


def test_npz_errors_name_file_and_key(tmp_path: Path) -> None:
    missing = tmp_path / "missing.npz"
    with pytest.raises(PicojouleError, match=r"missing\.npz: file not found"):
        load_npz(missing)
    with pytest.raises(PicojouleError, match=r"lossless_subset\.npz: no array 'x_val'"):
        load_npz(need(CIFAR / "lossless_subset.npz"), split="val")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_test=np.zeros((4, 8), np.uint8), y_test=np.zeros(4, np.int64))
    with pytest.raises(PicojouleError, match=r"bad\.npz: field 'x_test': expected images"):
        load_npz(bad)
    np.savez(bad, x_test=np.zeros((4, 8, 8, 3), np.uint8), y_test=np.zeros(5, np.int64))
    with pytest.raises(PicojouleError, match=r"bad\.npz: field 'y_test': expected shape \(4,\)"):
        load_npz(bad)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(PicojouleError, match=r"junk\.npz: not a readable \.npz") as err:
        load_npz(tmp_path / "junk.npz")
    assert "\n" not in str(err.value)


def test_dataset_spec_start_stop_keeps_a_range(tmp_path) -> None:
    import numpy as np
    import pytest

    from picojoule.data import load_dataset
    from picojoule.errors import PicojouleError

    path = tmp_path / "d.npz"
    np.savez(path, x_test=np.arange(10, dtype=np.uint8)[:, None, None, None] + np.zeros((1, 8, 8, 3), np.uint8),
             y_test=np.arange(10))
    part = load_dataset({"source": str(path), "start": 3, "stop": 7})
    assert list(part.y) == [3, 4, 5, 6]
    assert list(load_dataset({"source": str(path), "start": 8}).y) == [8, 9]
    with pytest.raises(PicojouleError, match=r"stop: expected an integer in 0..10, got 11"):
        load_dataset({"source": str(path), "stop": 11})
    with pytest.raises(PicojouleError, match="start 5 >= stop 5"):
        load_dataset({"source": str(path), "start": 5, "stop": 5})
