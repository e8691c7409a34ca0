"""Verify a package against its id and extract it safely, once, even with many replicas racing.

Every member is checked before anything is written: only regular files and directories with relative
paths that stay inside the destination are accepted (a package built by `build_package` holds nothing
else). `tarfile`'s "data" filter then runs as a second line of defence.

The archive is extracted into a temp directory next to `dest`, a marker file recording the package id
is written last, and the directory is renamed into place. Rename is atomic, so `dest` is either absent
or complete; the marker additionally tells a finished extraction from a directory someone else left.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path, PurePosixPath

from cortex_flows.packaging.digest import require_sha256, sha256_file
from cortex_flows.packaging.errors import PackageError

MARKER = ".cortex-package"  # hidden, so it can never collide with a packaged file
_INSTALL_ATTEMPTS = 3


def is_extracted(dest: Path, sha256: str) -> bool:
    """True if `dest` holds a complete extraction of package `sha256`."""
    try:
        return (dest / MARKER).read_text() == sha256
    except OSError:
        return False


def verify_and_extract(archive: Path, sha256: str, dest: Path) -> Path:
    """Extract `archive` to `dest` if its SHA-256 is `sha256`; reuse `dest` if already complete."""
    require_sha256(sha256)
    if is_extracted(dest, sha256):
        return dest
    actual = sha256_file(archive)
    if actual != sha256:
        raise PackageError(f"hash mismatch: expected {sha256}, got {actual}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode="r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.partial-"))
        try:
            tar.extractall(tmp, members=members, filter="data")
            (tmp / MARKER).write_text(sha256)
            _install(tmp, dest, sha256)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if not (member.isreg() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "special file (device or FIFO)"
        target = f" -> {member.linkname}" if member.linkname else ""
        raise PackageError(f"unsafe package member {name!r}{target}: {kind} not allowed")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise PackageError(f"unsafe package member {name!r}: absolute path")
    if not path.parts:
        raise PackageError(f"unsafe package member {name!r}: empty name")
    if ".." in path.parts:
        raise PackageError(f"unsafe package member {name!r}: '..' leaves the package")


def _install(tmp: Path, dest: Path, sha256: str) -> None:
    """Rename `tmp` to `dest`; if another process got there first with the same package, keep theirs."""
    for _ in range(_INSTALL_ATTEMPTS):
        try:
            os.rename(tmp, dest)  # replaces an empty directory, fails on a non-empty one
            return
        except OSError:
            if is_extracted(dest, sha256):
                return
            _discard(dest)  # not ours and not complete: a leftover, safe to replace
    raise PackageError(f"could not install package {sha256} at {dest}")


def _discard(path: Path) -> None:
    """Move `path` aside atomically, then delete it, so a racing reader never sees it half-deleted."""
    trash = path.with_name(f".{path.name}.trash-{uuid.uuid4().hex}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)
