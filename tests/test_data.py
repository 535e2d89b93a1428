"""Fashion-MNIST from Debian's package, the IDX reader, and batched augmentation."""

from __future__ import annotations

import gzip
import json
import struct

import pytest
import torch

from compact.data import ArrayDataset, InMemoryLoader, load_fashion_mnist, random_crop_flip, read_idx
from compact.data import fashion_mnist as fm
from compact.errors import CompactError

from _helpers import fake_cifar10_py as _fake_cifar10_py
from _helpers import needs_fmnist


@needs_fmnist
def test_fashion_mnist_from_debian_package():
    train, test = load_fashion_mnist()
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10  # published: balanced classes
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    sub = train.subset(300, seed=1)
    assert len(sub) == 300 and torch.equal(sub.labels, train.subset(300, seed=1).labels)


def _write_idx(path, array: torch.Tensor, truncate: int = 0):
    header = bytes([0, 0, 8, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape)
    data = header + array.numpy().tobytes()
    with gzip.open(path, "wb") as f:
        f.write(data[: len(data) - truncate])


def test_idx_roundtrip_and_corrupt_files(tmp_path):
    x = torch.randint(0, 256, (5, 3, 4), dtype=torch.uint8)
    _write_idx(tmp_path / "ok.gz", x)
    assert torch.equal(read_idx(tmp_path / "ok.gz"), x)
    _write_idx(tmp_path / "short.gz", x, truncate=7)
    with pytest.raises(CompactError, match="short.gz is truncated or corrupt"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "junk.gz").write_bytes(b"not gzip at all")
    with pytest.raises(CompactError, match="junk.gz"):
        read_idx(tmp_path / "junk.gz")


def test_missing_dataset_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(CompactError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(None)
    # an explicit --data-dir is never passed over for another copy: it holds the files or it is an error
    with pytest.raises(CompactError, match="not found in --data-dir"):
        load_fashion_mnist(tmp_path)
    monkeypatch.setattr(fm, "SYSTEM_DIR", fm.SYSTEM_DIR.__class__("/usr/share/datasets/fashion-mnist"))
    for images, labels, _ in fm._FILES.values():  # broken files in --data-dir: an error, even beside Debian's copy
        (tmp_path / images).write_bytes(b"junk")
        (tmp_path / labels).write_bytes(b"junk")
    with pytest.raises(CompactError, match="is not an IDX file"):
        load_fashion_mnist(tmp_path)


def test_random_crop_matches_per_image_reference():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, pad=2, flip=False, generator=g)
    g = torch.Generator().manual_seed(0)
    oy, ox = torch.randint(0, 5, (2,), generator=g), torch.randint(0, 5, (2,), generator=g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        assert torch.equal(out[b], padded[b, :, oy[b] : oy[b] + 4, ox[b] : ox[b] + 4])


def test_loader_is_deterministic_per_epoch():
    ds = ArrayDataset(torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (50,)), 3, "toy")
    mk = lambda: InMemoryLoader(ds, 16, train=True, mean=[0.5], std=[0.25], pad=2, flip=True, seed=3)  # noqa: E731
    a, b = mk(), mk()
    a.set_epoch(4)
    b.set_epoch(4)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert sum(len(y) for _, y in a) == 50 and len(a) == 4
    with pytest.raises(CompactError, match="batch size"):
        InMemoryLoader(ds, 0, train=True, mean=[0.5], std=[0.25])


def test_a_lone_last_training_image_joins_the_batch_before_it():
    """A last training batch of one image failed (internal error) every network that pools to 1x1 before a
    BatchNorm (timm's and torchvision's MobileNetV3 and EfficientNet at 32 px): it now joins the batch before."""
    from compact.data.memory import batch_bounds

    assert batch_bounds(17, 16, 2) == [(0, 17)]
    assert batch_bounds(18, 16, 2) == [(0, 16), (16, 18)]
    assert batch_bounds(33, 16, 2) == [(0, 16), (16, 33)]
    assert batch_bounds(17, 16, 1) == [(0, 16), (16, 17)]  # evaluation keeps every batch as it is
    assert batch_bounds(1, 16, 2) == [(0, 1)] and batch_bounds(0, 16, 2) == []
    assert batch_bounds(35, 16, 4) == [(0, 16), (16, 35)]  # two processes: fewer than 2 images each
    ds = ArrayDataset(torch.randint(0, 256, (33, 1, 8, 8), dtype=torch.uint8), torch.arange(33) % 3, 3, "toy")
    train = InMemoryLoader(ds, 16, train=True, mean=[0.5], std=[0.25], seed=3)
    test = InMemoryLoader(ds, 16, train=False, mean=[0.5], std=[0.25])
    assert [len(y) for _, y in train] == [16, 17] and len(train) == 2
    assert sorted(torch.cat([y for _, y in train]).tolist()) == sorted(ds.labels.tolist())  # every image, once
    assert [len(y) for _, y in test] == [16, 16, 1] and len(test) == 3


@needs_fmnist
def test_a_network_that_pools_to_one_pixel_trains_on_a_set_of_one_image_more_than_the_batch(tmp_path, capsys):
    from compact.cli import main

    common = ["train", "--model", "timm:mobilenetv3_small_050", "--subset", "17", "--test-subset", "8",
              "--image-size", "32", "--epochs", "1", "--no-progress", "--out"]  # fmt: skip
    assert main([*common, str(tmp_path / "a"), "--batch-size", "16"]) == 0
    assert main([*common, str(tmp_path / "b"), "--batch-size", "1"]) == 2
    assert "use a --batch-size of at least 2" in capsys.readouterr().err


# -- CIFAR (read without running code) and image folders ----------------------------------------------
def test_cifar10_python_layout_is_read_exactly(tmp_path):
    from compact.data import load_cifar

    batches = _fake_cifar10_py(tmp_path)
    train, test, classes = load_cifar("cifar10", tmp_path)
    assert train.images.shape == (100, 3, 32, 32) and test.images.shape == (20, 3, 32, 32)
    first = batches["data_batch_1"]
    # CIFAR rows are 1024 red, then 1024 green, then 1024 blue values, row-major
    assert train.images[0, 1, 2, 3].item() == first[b"data"][0][1024 + 2 * 32 + 3]
    assert train.labels[:20].tolist() == [int(v) for v in first[b"labels"]]
    assert classes == list("abcdefghij")


def test_cifar_binary_layout(tmp_path):
    import numpy as np

    from compact.data import load_cifar

    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train.bin", 6), ("test.bin", 4)):
        rec = rng.integers(0, 256, (n, 2 + 3072), dtype=np.uint8)
        rec[:, 1] = rng.integers(0, 100, n)  # fine label is the second byte
        rec.tofile(folder / name)
    train, test, _ = load_cifar("cifar100", tmp_path)
    raw = np.fromfile(folder / "train.bin", dtype=np.uint8).reshape(6, -1)
    assert train.labels.tolist() == raw[:, 1].tolist()
    assert torch.equal(train.images[2].flatten(), torch.from_numpy(raw[2, 2:].copy()))
    (folder / "test.bin").write_bytes((folder / "test.bin").read_bytes()[:-5])
    with pytest.raises(CompactError, match="test.bin is truncated or corrupt"):
        load_cifar("cifar100", tmp_path)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    import os
    import pickle

    from compact.data import load_cifar

    _fake_cifar10_py(tmp_path)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({b"data": Exploit()}))
    with pytest.raises(CompactError, match=r"data_batch_3.*refusing to load global (posix|os)\.system"):
        load_cifar("cifar10", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "names",
    [7, [b"a"] * 9, [b"\xff\xfe"] * 10, [b""] * 10, [1] * 10],
    ids=["not-a-list", "nine-names", "not-utf8", "empty-names", "numbers"],
)
def test_a_damaged_class_name_file_is_refused_by_name(tmp_path, names):
    """batches.meta's names become a model file's classes: a list that is not CIFAR-10's ten names used to
    be an internal TypeError or UnicodeDecodeError, or ten classes with nine names."""
    import pickle

    from compact.data import load_cifar

    _fake_cifar10_py(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    with pytest.raises(CompactError, match=r"batches.meta: label_names must list 10 class names"):
        load_cifar("cifar10", tmp_path)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["3"] * 20, "must list one integer label per image"),  # used to be parsed as 3
        ([0.5] * 20, "must list one integer label per image"),  # used to be truncated to 0
        ([True] * 20, "must list one integer label per image"),  # used to be class 1
        (3, "must list one integer label per image"),  # a scalar: internal TypeError
        ([[1, 2]] * 20, "must list one integer label per image"),  # 2-D: internal ValueError
        ([2**70] * 20, "must list one integer label per image"),  # internal OverflowError
        ([{}] * 20, "must list one integer label per image"),  # object array: internal TypeError
        ("uint64", r"data_batch_2 are outside 0\.\.9"),  # 2**63 wrapped to a negative int64 with a warning
    ],
    ids=["strings", "floats", "bools", "scalar", "2-d", "huge-int", "objects", "uint64"],
)
def test_labels_that_are_not_one_integer_per_image_are_refused_by_name(tmp_path, labels, message):
    import pickle

    import numpy as np

    from compact.data import load_cifar

    _fake_cifar10_py(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch = pickle.loads(path.read_bytes())
    batch[b"labels"] = np.full(20, 2**63, dtype=np.uint64) if labels == "uint64" else labels
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(CompactError, match=f"data_batch_2.*{message}" if "integer" in message else message):
        load_cifar("cifar10", tmp_path)


def test_missing_cifar_names_the_expected_layout(tmp_path):
    from compact.data import load_cifar

    with pytest.raises(CompactError, match="cifar10 not found in .*cifar-10-batches-py.*--download"):
        load_cifar("cifar10", tmp_path)


def _image_tree(root, classes=("cat", "dog"), per_class=3, size=12):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")


def test_image_folder_dataset(tmp_path):
    from compact.data import DataOptions, load_data

    _image_tree(tmp_path)
    data = load_data(DataOptions(name=f"imagefolder:{tmp_path}", image_size=8, workers=0))
    assert (data.num_classes, data.input_size, data.classes) == (2, (3, 8, 8), ["cat", "dog"])
    train, test = data.loaders(4, seed=0)
    train.set_epoch(0)
    batches = list(train)
    assert [len(y) for _, y in batches] == [4, 2] and batches[0][0].shape == (4, 3, 8, 8)
    train.set_epoch(0)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, train, strict=True))  # same epoch, same order
    assert sorted(torch.cat([y for _, y in test]).tolist()) == [0, 0, 0, 1, 1, 1]
    # the order is the one DataLoader(shuffle=True) draws from the epoch's generator (as before batches were
    # merged), and a lone last training image joins the batch before it
    from compact.data.folder import FolderLoader

    train.set_epoch(3)
    plain = torch.utils.data.DataLoader(train.dataset, batch_size=4, shuffle=True,
                                        generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert torch.equal(torch.cat([y for _, y in train]), torch.cat([y for _, y in plain]))
    five = FolderLoader(train.dataset, 5, train=True, workers=0)
    assert [len(y) for _, y in five] == [6] and len(five) == 1


def test_bad_datasets_are_named(tmp_path):
    from compact.data import DataOptions, load_data

    with pytest.raises(CompactError, match="unknown dataset 'mnist'; valid datasets: cifar10, cifar100, fashion-mnist"):
        load_data(DataOptions(name="mnist"))
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(CompactError, match="one sub-folder of images per class"):
        load_data(DataOptions(name=f"imagefolder:{tmp_path}"))
    with pytest.raises(CompactError, match="has no train/ directory"):
        load_data(DataOptions(name=f"imagefolder:{tmp_path / 'train'}"))
    with pytest.raises(CompactError, match="subset must be a positive number"):
        DataOptions(subset=0)
    # a seed read from a crafted file or manifest overflowed torch's generator (an internal error)
    with pytest.raises(CompactError, match=r"seed must be an integer in 0\.\.2147483647"):
        DataOptions(seed=10**30)


def test_sixteen_bit_grayscale_images_keep_their_range_and_unranged_modes_are_refused(tmp_path):
    """PIL's own conversion clipped every 16-bit value above 255 to white: an image of 40000 read as 255."""
    import numpy as np
    from PIL import Image

    from compact.data import DataOptions, load_data

    levels = {"dark": 0, "mid": 40000, "bright": 65535}  # 8-bit: 0, 40000 >> 8 = 156, 255
    for split in ("train", "val"):
        for name, value in levels.items():
            (tmp_path / split / name).mkdir(parents=True)
            Image.fromarray(np.full((8, 8), value, dtype=np.uint16)).save(tmp_path / split / name / "0.png")
    assert Image.open(tmp_path / "val" / "mid" / "0.png").mode == "I;16"
    data = load_data(DataOptions(name=f"imagefolder:{tmp_path}", image_size=8, workers=0, in_chans=1))
    _, test = data.loaders(3, seed=0)
    x, y = next(iter(test))
    seen = {data.classes[int(label)]: float(image.mean()) for image, label in zip(x, y, strict=True)}
    expected = {name: ((value >> 8) / 255 - 0.5) / 0.5 for name, value in levels.items()}
    assert seen == pytest.approx(expected, abs=1e-6)

    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(tmp_path / "val" / "mid" / "1.tiff")
    with pytest.raises(CompactError, match=r"1\.tiff holds floating-point pixels \(PIL mode F\)"):
        load_data(DataOptions(name=f"imagefolder:{tmp_path}", image_size=8, workers=0, in_chans=1))


def test_image_folders_with_other_classes_in_val_name_them(tmp_path):
    from compact.data import DataOptions, load_data

    _image_tree(tmp_path)
    (tmp_path / "val" / "dog").rename(tmp_path / "val" / "wolf")
    with pytest.raises(CompactError, match=r"only in train/: dog; only in val/: wolf\)"):
        load_data(DataOptions(name=f"imagefolder:{tmp_path}", image_size=8, workers=0))


# -- input sizes, channels and augmentation ----------------------------------------------------------------
def test_in_memory_datasets_take_image_size_and_channels(tmp_path):
    from compact.data import DataOptions, load_data

    from _helpers import fake_cifar10_py

    fake_cifar10_py(tmp_path, n=8)
    native = load_data(DataOptions(name="cifar10", data_dir=str(tmp_path)))
    assert native.input_size == (3, 32, 32)
    small = load_data(DataOptions(name="cifar10", data_dir=str(tmp_path), image_size=16, in_chans=1))
    assert small.input_size == (1, 16, 16) and len(small.mean) == 1
    _, test = small.loaders(8, seed=0)
    x, _ = next(iter(test))
    assert x.shape == (8, 1, 16, 16)
    # independent computation of the first test image: luma of the uint8 RGB, then an antialiased resize
    from compact.data.cifar import load_cifar

    _, raw_test, _ = load_cifar("cifar10", tmp_path)
    luma = (raw_test.images[:1].float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    want = torch.nn.functional.interpolate(luma.round(), size=(16, 16), mode="bilinear", antialias=True).round()
    got = x[:1] * torch.tensor(small.std).view(1, -1, 1, 1) + torch.tensor(small.mean).view(1, -1, 1, 1)
    assert torch.allclose(got * 255, want, atol=1e-3)


def test_random_resized_crop_of_the_whole_image_is_the_image():
    from compact.data.memory import random_resized_crop

    x = torch.rand(4, 3, 10, 10)
    same = random_resized_crop(x, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(same, x, atol=1e-5)
    crops = random_resized_crop(x, torch.Generator().manual_seed(0))
    assert crops.shape == x.shape and not torch.allclose(crops, x)


@pytest.mark.parametrize(
    "augment, flip, changes", [("none", True, False), ("cifar", False, True), ("imagenet", True, True)]
)
def test_augment_options_of_in_memory_data(tmp_path, augment, flip, changes):
    from compact.data import DataOptions, load_data

    from _helpers import fake_cifar10_py

    fake_cifar10_py(tmp_path, n=8)
    data = load_data(DataOptions(name="cifar10", data_dir=str(tmp_path), subset=8, augment=augment, flip=flip))
    train, _ = data.loaders(8, seed=0)
    train.set_epoch(0)
    x, y = next(iter(train))
    plain = (train.data.images[torch.randperm(8, generator=torch.Generator().manual_seed(0))].float() / 255
             - train.mean) / train.std  # fmt: skip
    assert x.shape == plain.shape
    assert (not torch.allclose(x, plain)) == changes


def test_image_folders_say_the_size_used_and_warn_when_upsampling(tmp_path, capsys):
    from compact.data import DataOptions, load_data

    _image_tree(tmp_path, size=12)
    data = load_data(DataOptions(name=f"imagefolder:{tmp_path}", workers=0, augment="cifar", flip=False, in_chans=1))
    assert data.input_size == (1, 224, 224)
    err = capsys.readouterr().err
    assert "images about 12 px on their short side, used at 224 px (the default" in err
    assert "warning" in err and "upsamples images of about 12 px" in err and "--image-size 12" in err
    load_data(DataOptions(name=f"imagefolder:{tmp_path}", workers=0, image_size=12))
    assert "warning" not in capsys.readouterr().err


def test_workers_are_capped_at_the_cpus(tmp_path, capsys):
    import os

    from compact.data import DataOptions, load_data

    _image_tree(tmp_path)
    data = load_data(DataOptions(name=f"imagefolder:{tmp_path}", image_size=12, workers=200))
    cpus = len(os.sched_getaffinity(0))
    assert f"200 DataLoader workers asked for, this machine has {cpus} CPU(s): using {cpus}" in capsys.readouterr().err
    train, _ = data.loaders(4, seed=0)
    assert train.workers == cpus


@pytest.mark.parametrize("given, used", [([], 32), (["--image-size", "16"], 16)])
def test_smoke_keeps_an_explicit_image_size(tmp_path, given, used):
    import yaml

    from compact.cli import main

    _image_tree(tmp_path / "img")
    argv = ["train", "--model", "cifar_resnet20", "--data", f"imagefolder:{tmp_path / 'img'}", "--workers", "0"]
    assert main([*argv, *given, "--smoke", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["image_size"] == used


def test_an_in_memory_loader_moved_to_a_device_gives_the_same_batches():
    """The GPU-resident path on the device at hand (a GPU check runs it on CUDA: benchmarks/gpu_check.py):
    order, crops and flips are drawn on the CPU, so batches do not depend on where the images live."""
    import torch

    from compact.data.memory import ArrayDataset, InMemoryLoader

    images = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    ds = ArrayDataset(images, torch.arange(50) % 10, 10, "t")
    make = lambda: InMemoryLoader(ds, 16, train=True, mean=[0.5], std=[0.25], pad=2, flip=True, seed=1)  # noqa: E731
    here, moved = make(), make().to("cpu")
    for (a, ya), (b, yb) in zip(here, moved, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_fifos_where_files_are_expected_are_refused_or_skipped_never_read(tmp_path, capsys):
    """Reading a FIFO blocks until someone writes to it: a crafted data folder or recipe must not hang compact."""
    import os

    from compact.cli import main
    from compact.data import DataOptions, load_data
    from compact.data.idx import read_idx

    _image_tree(tmp_path)
    os.mkfifo(tmp_path / "train" / "cat" / "stuck.png")
    data = load_data(DataOptions(name=f"imagefolder:{tmp_path}", image_size=8, workers=0))
    assert len(data.loaders(4, seed=0)[0].dataset) == 6  # the FIFO is skipped with the files that are not images
    assert "skipped 1 file(s)" in capsys.readouterr().err
    os.mkfifo(tmp_path / "images.idx")
    with pytest.raises(CompactError, match="is not a regular file"):
        read_idx(tmp_path / "images.idx")
    os.mkfifo(tmp_path / "recipe.yaml")
    assert main(["recipes", str(tmp_path / "recipe.yaml")]) == 2
    assert f"recipe file {tmp_path / 'recipe.yaml'} is not a regular file" in capsys.readouterr().err


def test_a_subset_larger_than_the_data_set_is_said_and_the_images_used_are_recorded(tmp_path, capsys):
    # 1,000 training images asked of a 100-image set: all 100 are used, stderr says so, and summary.json
    # records 100 (reports state the budget from it, not from the subset asked for)
    from compact.cli import main
    from compact.report import _images

    from _helpers import fake_cifar10_py

    fake_cifar10_py(tmp_path / "c", n=20)  # 100 training images, 20 test images
    argv = ["train", "--model", "cifar_resnet20", "--data", "cifar10", "--data-dir", str(tmp_path / "c"),
            "--subset", "1000", "--test-subset", "20", "--epochs", "1", "--batch-size", "50", "--no-progress",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 0
    note = "note: subset 1,000 is more than the 100 training images of cifar10: using all 100"
    assert note in capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["train_images"], summary["test_images"]) == (100, 20)
    assert _images({100}, 1000) == "100" and _images(set(), 1000) == "1,000" and _images(set(), None) == "all"
    assert _images({100, 16}, 1000) == "16 to 100 (they differ between runs)"
