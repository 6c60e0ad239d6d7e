"""Files on disk: the data root, errors, and a safe, atomic, MD5-checked archive download.

Every write here is atomic: an archive is streamed into a temporary file beside its target and
checked before it is used, an archive is extracted into a temporary folder and each file is
moved into place with ``os.replace``; on any failure the temporary files are removed, so an
interrupted or failed download never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from bnnkit.errors import BnnkitError

DATA_ENV = "BNNKIT_DATA"
"""Environment variable: parent folder of every data set (``$BNNKIT_DATA/<name>``)."""


class DataNotFoundError(BnnkitError, FileNotFoundError):
    """Data set files are missing (the message lists them and says where to put them)."""


class DataCorruptError(BnnkitError, ValueError):
    """A data file exists but cannot be read or has the wrong content (names the file)."""


class DownloadError(BnnkitError, OSError):
    """Fetching or checking a data archive failed (names the URL and the problem)."""


def default_root(name: str) -> Path:
    """Default data folder of data set ``name``.

    ``$BNNKIT_DATA/<name>`` when the environment variable ``BNNKIT_DATA`` is set, else
    ``~/.cache/bnnkit/<name>``.
    """
    base = os.environ.get(DATA_ENV)
    parent = Path(base).expanduser() if base else Path.home() / ".cache" / "bnnkit"
    return parent / name


def resolve_root(root: str | os.PathLike[str] | None, name: str) -> Path:
    """``root`` (``~`` expanded) or :func:`default_root` of ``name`` when ``root`` is None."""
    return Path(root).expanduser() if root is not None else default_root(name)


def md5sum(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex MD5 digest of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, dest: Path, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically, checking the MD5 when given.

    The body is streamed into a temporary file in ``dest``'s folder, hashed on the way, and
    renamed to ``dest`` only when complete and correct.

    Raises:
        DownloadError: the URL cannot be reached or read, or the MD5 does not match (the
            temporary file is removed in both cases). The message names the URL and the
            problem; callers add where to get the file by hand.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(exc, urllib.error.HTTPError):
                    reason = f"HTTP {exc.code} {exc.reason}"
                raise DownloadError(f"could not download {url}: {reason}") from exc
        if md5 is not None and digest.hexdigest() != md5:
            raise DownloadError(
                f"MD5 mismatch for {url}: got {digest.hexdigest()}, expected {md5}; the "
                "download is corrupt or the URL serves a different file (nothing was kept)"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _check_member(member: tarfile.TarInfo, target: Path) -> None:
    """Reject archive members that are not plain files/folders or that land outside ``target``."""
    if not (member.isfile() or member.isdir()):
        raise DataCorruptError(
            f"archive member {member.name!r} is a link or special file; refusing to extract it"
        )
    dest = (target / member.name).resolve()
    if os.path.isabs(member.name) or not dest.is_relative_to(target.resolve()):
        raise DataCorruptError(
            f"archive member {member.name!r} would be written outside {target}; "
            "refusing to extract (path traversal)"
        )


def extract_tar(archive: Path, target: Path, folder: str) -> Path:
    """Safely extract ``folder/`` of a tar archive into ``target/folder``.

    Every member is checked first (plain files and folders only, no absolute paths, nothing
    outside ``target``); the archive is extracted into a temporary folder inside ``target``
    and each file of ``folder`` is then moved into place with ``os.replace`` (atomic per
    file). Existing files of the same name are replaced.

    Raises:
        DataCorruptError: the archive cannot be read, holds an unsafe member, or has no
            ``folder``.
    """
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract.", dir=target))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, staging)
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(staging, members=members, **kwargs)  # members checked above
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataCorruptError(f"cannot extract archive {archive}: {exc}") from exc
        source = staging / folder
        if not source.is_dir():
            raise DataCorruptError(f"archive {archive} has no folder {folder!r}")
        dest = target / folder
        dest.mkdir(exist_ok=True)
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source)
            if path.is_dir():
                (dest / rel).mkdir(parents=True, exist_ok=True)
            else:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, dest / rel)
        return dest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch_archive(url: str, target: Path, folder: str, md5: str, timeout: float = 60.0) -> Path:
    """Download a ``.tar.gz`` (MD5-checked), extract ``folder`` into ``target``, drop the archive.

    Returns:
        ``target / folder``.
    """
    target.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".archive.", suffix=".tar.gz", dir=target)
    os.close(fd)
    archive = Path(tmp_name)
    try:
        download_file(url, archive, md5=md5, timeout=timeout)
        return extract_tar(archive, target, folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            archive.unlink()
