"""CIFAR-10/100: the real excerpt, fake archives served over local HTTP, missing/corrupt files."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import io
import os
import pickle
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import write_fake

from bnnkit.data import (
    DataConfig,
    DataCorruptError,
    DataNotFoundError,
    DownloadError,
    build_data,
    load_cifar,
)
from bnnkit.data import cifar as cifar_mod

REPO = Path(__file__).resolve().parents[2]


def excerpt_root() -> Path:
    env = os.environ.get("BNNKIT_CIFAR10_EXCERPT")
    return Path(env) if env else REPO.parent / "shared" / "data" / "cifar10-excerpt"


needs_excerpt = pytest.mark.skipif(
    not (excerpt_root() / "cifar-10-batches-py" / "data_batch_1").is_file(),
    reason=f"real CIFAR-10 excerpt not found at {excerpt_root()} (set BNNKIT_CIFAR10_EXCERPT)",
)

# ---------------------------------------------------------------------------- fakes


def make_archive(path: Path, source: Path, extra: tarfile.TarInfo | None = None) -> str:
    """A .tar.gz of ``source``'s contents (plus one crafted member); returns its MD5."""
    with tarfile.open(path, "w:gz") as tar:
        for item in sorted(source.iterdir()):
            tar.add(item, arcname=item.name)
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"evil") if extra.isfile() else None)
    return hashlib.md5(path.read_bytes()).hexdigest()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on 127.0.0.1 serving ``<tmp>/www``; yields (base URL, folder)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(QuietHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", www
    finally:
        httpd.shutdown()
        httpd.server_close()


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.startswith("."))


# ---------------------------------------------------------------------------- real excerpt


@needs_excerpt
def test_reads_the_real_excerpt() -> None:
    x, y = load_cifar("cifar10", excerpt_root(), split="train")
    assert x.shape == (5085, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert int(y.min()) >= 0 and int(y.max()) == 9
    with open(excerpt_root() / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    raw = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
    assert torch.equal(x[1017 + 5].flatten(), torch.from_numpy(raw["data"][5]))
    assert int(y[1017 + 5]) == raw["labels"][5]
    xt, yt = load_cifar("cifar10", excerpt_root() / "cifar-10-batches-py", split="test")
    assert xt.shape == (1017, 3, 32, 32) and yt.shape == (1017,)


@needs_excerpt
def test_build_data_on_the_excerpt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "cifar10").symlink_to(excerpt_root())
    monkeypatch.setenv("BNNKIT_DATA", str(tmp_path))  # default root: $BNNKIT_DATA/cifar10
    bundle = build_data(DataConfig(name="cifar10", batch_size=256, eval_batch_size=500))
    assert bundle.num_classes == 10 and bundle.input_size == (3, 32, 32)
    assert len(bundle.train) == 19 and bundle.train.num_samples == 19 * 256
    assert len(bundle.val) == 3 and bundle.val.num_samples == 1017
    xs = torch.cat([x for x, _ in bundle.val])
    assert xs.dtype == torch.float32
    # normalized with CIFAR-10's statistics: the channel means/stds of real images are ~0/~1
    assert xs.mean(dim=(0, 2, 3)).abs().max() < 0.1
    assert (xs.std(dim=(0, 2, 3)) - 1).abs().max() < 0.1
    bundle.train.set_epoch(0)
    x, y = next(iter(bundle.train))
    assert x.shape == (256, 3, 32, 32) and y.shape == (256,)


# ---------------------------------------------------------------------------- layouts


def test_cifar100_layout_and_limits(tmp_path: Path) -> None:
    written = write_fake(tmp_path, "cifar100", n=6)
    x, y = load_cifar("cifar100", tmp_path, split="train")
    assert torch.equal(x.reshape(6, -1), torch.from_numpy(written["train"][0]))
    assert y.tolist() == written["train"][1]
    cfg = DataConfig(name="cifar100", root=str(tmp_path), batch_size=2, train_limit=4, val_limit=3)
    bundle = build_data(cfg)
    assert bundle.num_classes == 100 and bundle.train.num_samples == 4 and len(bundle.val) == 2


def test_missing_files_say_what_and_where(tmp_path: Path) -> None:
    root = tmp_path / "data"
    with pytest.raises(DataNotFoundError) as info:
        load_cifar("cifar10", root)
    msg = str(info.value)
    assert "data_batch_1" in msg and "test_batch" in msg
    assert str(root / "cifar-10-batches-py") in msg and "download: true" in msg
    write_fake(root)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match="missing data_batch_3 in"):
        build_data(DataConfig(name="cifar10", root=str(root)))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"this is not a pickle", "cannot unpickle"),
        (pickle.dumps({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}), "3072"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "2 images but 1"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), "outside"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}), "uint8"),
        (pickle.dumps({b"labels": [0, 1]}), "expected keys"),
        (pickle.dumps(os.getcwd), "refers to"),  # any other global is refused, not executed
    ],
)
def test_corrupt_files_name_the_file_and_problem(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    write_fake(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    bad.write_bytes(content)
    with pytest.raises(DataCorruptError, match=problem) as info:
        load_cifar("cifar10", tmp_path)
    assert str(bad) in str(info.value)


# ---------------------------------------------------------------------------- download


def patch_md5(monkeypatch: pytest.MonkeyPatch, md5: str) -> None:
    spec = dataclasses.replace(cifar_mod.CIFAR["cifar10"], md5=md5)
    monkeypatch.setitem(cifar_mod.CIFAR, "cifar10", spec)


def test_download_from_a_local_server(
    tmp_path: Path, server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, www = server
    written = write_fake(tmp_path / "src", n=4)
    patch_md5(monkeypatch, make_archive(www / "cifar-10-python.tar.gz", tmp_path / "src"))
    root = tmp_path / "root"
    x, y = load_cifar(
        "cifar10", root, split="test", download=True, url=base + "cifar-10-python.tar.gz"
    )
    assert torch.equal(x.reshape(len(x), -1), torch.from_numpy(written["test_batch"][0]))
    assert y.tolist() == written["test_batch"][1]
    assert leftovers(root) == [] and sorted(os.listdir(root)) == ["cifar-10-batches-py"]
    # the environment variable (a base URL ending in "/") drives build_data's download
    monkeypatch.setenv("BNNKIT_CIFAR_URL", base)
    bundle = build_data(
        DataConfig(name="cifar10", root=str(tmp_path / "env"), download=True, batch_size=4)
    )
    assert bundle.train.dataset_size == 4 + 5 + 6 + 7 + 8
    # files present: no network needed even with download on and a dead URL
    monkeypatch.setenv("BNNKIT_CIFAR_URL", "http://127.0.0.1:9/nothing.tar.gz")
    build_data(DataConfig(name="cifar10", root=str(root), download=True, batch_size=4))


def test_md5_mismatch_leaves_nothing(tmp_path: Path, server: tuple[str, Path]) -> None:
    base, www = server
    write_fake(tmp_path / "src")
    make_archive(www / "cifar-10-python.tar.gz", tmp_path / "src")  # official MD5 won't match
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        load_cifar("cifar10", root, download=True, url=base + "cifar-10-python.tar.gz")
    assert list(root.rglob("*")) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_url_is_a_clear_error(tmp_path: Path, server: tuple[str, Path]) -> None:
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match=r"could not download http://127\.0\.0\.1"):
        load_cifar("cifar10", root, download=True, url=f"http://127.0.0.1:{free_port()}/c.tar.gz")
    with pytest.raises(DownloadError, match="HTTP 404"):
        load_cifar("cifar10", root, download=True, url=server[0] + "missing.tar.gz")
    assert list(root.rglob("*")) == []


@pytest.mark.parametrize("kind", ["traversal", "symlink"])
def test_unsafe_archives_are_refused(
    tmp_path: Path, server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    base, www = server
    write_fake(tmp_path / "src")
    member = tarfile.TarInfo("../../evil.txt" if kind == "traversal" else "cifar-10-batches-py/ln")
    if kind == "traversal":
        member.size = 4
    else:
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    patch_md5(monkeypatch, make_archive(www / "c.tar.gz", tmp_path / "src", member))
    root = tmp_path / "a" / "root"
    with pytest.raises(DataCorruptError, match="refusing"):
        load_cifar("cifar10", root, download=True, url=base + "c.tar.gz")
    assert list(root.rglob("*")) == [] and not (tmp_path / "evil.txt").exists()
