"""Build a byte-for-byte reproducible package (.tar.gz) from a project directory.

Reproducible bytes make the archive's SHA-256 a content id: rebuilding an unchanged project yields the
same id, so stores upload it once and replicas reuse an already-extracted copy.

What goes in follows Cortex's CLI (v0.10-v0.35): every regular file except hidden files and directories
(names starting with "."), `__pycache__`, `*.pyc`, and `.cortexignore` patterns (gitignore syntax).
A symlink to a file inside the project is stored as a regular file with its target's content; a symlink
leaving the project, a symlinked directory, or any other special file is an error, so a package never
depends on the machine it was built on.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import BinaryIO

import pathspec

from cortex_flows.packaging.digest import sha256_file
from cortex_flows.packaging.errors import PackageError

MAX_FILE_BYTES = 512 * 1024 * 1024  # Cortex's limits, per file and per project
MAX_PROJECT_BYTES = 512 * 1024 * 1024
IGNORE_FILE = ".cortexignore"
_DEFAULT_IGNORES = ("__pycache__/", "*.pyc")


@dataclass(frozen=True)
class BuiltPackage:
    """A built archive on disk; `sha256` (of the archive bytes) is the package id."""

    path: Path
    sha256: str
    size: int  # archive bytes
    files: int


@dataclass(frozen=True)
class _Entry:
    name: str  # posix path inside the archive
    source: Path  # the file whose content is stored (a symlink's target)
    size: int
    executable: bool


def build_package(project_dir: Path, out_dir: Path, exclude: Sequence[str] = ()) -> BuiltPackage:
    """Archive `project_dir` as `out_dir/<sha256>.tar.gz` (written to a temp name, then renamed).

    An `out_dir` inside the project is left out, so earlier builds never end up in the next one.
    `exclude` adds gitignore-style patterns: the deploy leaves out the spec file, so that changing only
    autoscaling or networking keeps the package id (and the running replicas).
    """
    root = project_dir.resolve()
    if not root.is_dir():
        raise PackageError(f"project directory not found: {project_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = _collect(root, skip=out_dir.resolve(), exclude=exclude)
    fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=".build-", suffix=".tar.gz")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            _write_archive(raw, entries)
        sha = sha256_file(tmp)
        final = out_dir / f"{sha}.tar.gz"
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BuiltPackage(path=final, sha256=sha, size=final.stat().st_size, files=len(entries))


def _collect(root: Path, skip: Path, exclude: Sequence[str]) -> list[_Entry]:
    """The files to package, sorted by archive name, with limits checked before any byte is read."""
    spec = _ignore_spec(root, exclude)
    entries: list[_Entry] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = PurePath(dirpath).relative_to(root)
        dirnames[:] = [
            d
            for d in dirnames
            if not _excluded(spec, (rel_dir / d).as_posix(), is_dir=True) and Path(dirpath, d) != skip
        ]
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                raise PackageError(f"symlinked directory {(rel_dir / d).as_posix()!r} is not supported")
        for f in filenames:
            name = (rel_dir / f).as_posix()
            if _excluded(spec, name, is_dir=False):
                continue
            entry = _entry(root, name)
            if entry.size > MAX_FILE_BYTES:
                raise PackageError(f"{name!r} is {entry.size} bytes; the limit per file is {MAX_FILE_BYTES}")
            total += entry.size
            if total > MAX_PROJECT_BYTES:
                raise PackageError(f"project is larger than the limit of {MAX_PROJECT_BYTES} bytes")
            entries.append(entry)
    return sorted(entries, key=lambda e: e.name)


def _ignore_spec(root: Path, exclude: Sequence[str]) -> pathspec.GitIgnoreSpec:
    ignore_file = root / IGNORE_FILE
    lines = ignore_file.read_text().splitlines() if ignore_file.is_file() else []
    return pathspec.GitIgnoreSpec.from_lines([*_DEFAULT_IGNORES, *exclude, *lines])


def _excluded(spec: pathspec.GitIgnoreSpec, name: str, *, is_dir: bool) -> bool:
    if PurePath(name).name.startswith("."):
        return True
    return spec.match_file(name + "/" if is_dir else name)


def _entry(root: Path, name: str) -> _Entry:
    path = root / name
    source = path
    if path.is_symlink():
        try:
            source = path.resolve(strict=True)
        except (OSError, RuntimeError) as exc:  # broken link or a loop
            raise PackageError(f"symlink {name!r} cannot be resolved: {exc.strerror or exc}") from None
        if not source.is_relative_to(root):
            raise PackageError(f"symlink {name!r} points outside the project (to {source})")
    st = source.stat()
    if not stat.S_ISREG(st.st_mode):
        raise PackageError(f"{name!r} is not a regular file; add it to {IGNORE_FILE} to leave it out")
    return _Entry(name=name, source=source, size=st.st_size, executable=bool(st.st_mode & 0o111))


def _write_archive(raw: BinaryIO, entries: list[_Entry]) -> None:
    """Tar with fixed metadata inside a gzip stream with no name and mtime 0: same files, same bytes."""
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.size = entry.size
            info.mode = 0o755 if entry.executable else 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with entry.source.open("rb") as f:
                tar.addfile(info, f)
