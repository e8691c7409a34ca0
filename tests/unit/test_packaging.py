"""Packaging: reproducible builds, what goes in, hash verification and hostile archives."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from cortex_flows.aws.clients import is_transient_aws_error
from cortex_flows.packaging import build as build_module
from cortex_flows.packaging.build import BuiltPackage, build_package
from cortex_flows.packaging.errors import PackageError
from cortex_flows.packaging.extract import MARKER, is_extracted, verify_and_extract
from cortex_flows.packaging.store import parse_store_uri

FILES = {
    "handler.py": "class Handler: ...\n",
    "cortex.yaml": "- name: iris\n",
    "model/weights.bin": "0123456789",
    "lib/util.py": "X = 1\n",
}


def write_project(root: Path, files: dict[str, str], order: list[str] | None = None) -> Path:
    for name in order or list(files):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[name])
    return root


def members(built: BuiltPackage) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(built.path) as tar:
        return {m.name: m for m in tar.getmembers()}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "project", FILES)


def test_same_inputs_give_same_bytes(project: Path, tmp_path: Path) -> None:
    first = build_package(project, tmp_path / "out1")
    second = build_package(project, tmp_path / "out2")
    assert first.sha256 == second.sha256
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.path.name == f"{first.sha256}.tar.gz"
    assert hashlib.sha256(first.path.read_bytes()).hexdigest() == first.sha256
    assert (first.files, first.size) == (4, first.path.stat().st_size)
    assert not [p for p in (tmp_path / "out1").iterdir() if p != first.path]  # no temp files left

    for i, path in enumerate(sorted(project.rglob("*"))):
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    (project / "lib" / "util.py").chmod(0o600)  # only the executable bit is kept
    assert build_package(project, tmp_path / "out3").sha256 == first.sha256

    reordered = write_project(tmp_path / "reordered", FILES, order=sorted(FILES, reverse=True))
    assert build_package(reordered, tmp_path / "out4").sha256 == first.sha256


def test_archive_metadata_is_normalised(project: Path, tmp_path: Path) -> None:
    (project / "run.sh").write_text("#!/bin/sh\n")
    (project / "run.sh").chmod(0o700)
    built = build_package(project, tmp_path / "out")
    header = built.path.read_bytes()[:10]
    assert header[3] == 0 and header[4:8] == b"\0\0\0\0"  # gzip: no file name, mtime 0
    found = members(built)
    assert list(found) == sorted(found)
    assert all(
        m.isreg() and m.mtime == 0 and m.uid == m.gid == 0 and m.uname == m.gname == ""
        for m in found.values()
    )
    assert found["run.sh"].mode == 0o755
    assert found["handler.py"].mode == 0o644


def test_content_change_changes_id(project: Path, tmp_path: Path) -> None:
    before = build_package(project, tmp_path / "out")
    (project / "model" / "weights.bin").write_text("0123456780")
    assert build_package(project, tmp_path / "out").sha256 != before.sha256


def test_exclusions(project: Path, tmp_path: Path) -> None:
    extra = {
        ".cortexignore": "data/\n*.log\n!keep.log\n",
        ".env": "SECRET=1\n",
        ".git/config": "x",
        "lib/.hidden.py": "x",
        "lib/__pycache__/util.cpython-311.pyc": "x",
        "stale.pyc": "x",
        "data/big.csv": "x",
        "nested/data/more.csv": "x",
        "run.log": "x",
        "keep.log": "x",
    }
    write_project(project, extra)
    built = build_package(project, project / "dist")  # an out_dir inside the project is skipped too
    build_package(project, project / "dist")
    assert sorted(members(built)) == sorted([*FILES, "keep.log"])


def test_symlinks(project: Path, tmp_path: Path) -> None:
    (project / "latest.bin").symlink_to("model/weights.bin")
    found = members(build_package(project, tmp_path / "out"))
    assert found["latest.bin"].isreg() and found["latest.bin"].size == 10

    outside = tmp_path / "secret.txt"
    outside.write_text("s")
    (project / "leak.txt").symlink_to(outside)
    with pytest.raises(PackageError, match=r"'leak\.txt' points outside the project"):
        build_package(project, tmp_path / "out")
    (project / "leak.txt").unlink()

    (project / "models").symlink_to("model")
    with pytest.raises(PackageError, match="symlinked directory 'models'"):
        build_package(project, tmp_path / "out")


def test_special_file_rejected(project: Path, tmp_path: Path) -> None:
    os.mkfifo(project / "pipe")
    with pytest.raises(PackageError, match="'pipe' is not a regular file"):
        build_package(project, tmp_path / "out")


def test_size_limits(project: Path, tmp_path: Path) -> None:
    """Sparse files: the limits are checked from sizes, before any content is read."""
    with (project / "huge.bin").open("wb") as f:
        f.truncate(build_module.MAX_FILE_BYTES + 1)
    with pytest.raises(PackageError, match=r"'huge\.bin' is \d+ bytes; the limit per file"):
        build_package(project, tmp_path / "out")
    (project / "huge.bin").unlink()
    for name in ("a.bin", "b.bin"):
        with (project / name).open("wb") as f:
            f.truncate(build_module.MAX_PROJECT_BYTES // 2 + 1)
    with pytest.raises(PackageError, match="project is larger than the limit"):
        build_package(project, tmp_path / "out")


def test_verify_and_extract_roundtrip(project: Path, tmp_path: Path) -> None:
    (project / "run.sh").write_text("#!/bin/sh\n")
    (project / "run.sh").chmod(0o755)
    built = build_package(project, tmp_path / "out")
    dest = tmp_path / "cache" / built.sha256
    assert verify_and_extract(built.path, built.sha256, dest) == dest
    assert (dest / "model" / "weights.bin").read_text() == "0123456789"
    assert os.access(dest / "run.sh", os.X_OK)
    assert is_extracted(dest, built.sha256)
    built.path.unlink()  # a complete extraction is reused without the archive
    assert verify_and_extract(built.path, built.sha256, dest) == dest


def test_tampered_archive_rejected(project: Path, tmp_path: Path) -> None:
    built = build_package(project, tmp_path / "out")
    data = bytearray(built.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    built.path.write_bytes(bytes(data))
    dest = tmp_path / "cache" / built.sha256
    actual = hashlib.sha256(data).hexdigest()
    with pytest.raises(PackageError, match=f"hash mismatch: expected {built.sha256}, got {actual}"):
        verify_and_extract(built.path, built.sha256, dest)
    assert not dest.parent.exists()


def test_leftover_directory_is_replaced(project: Path, tmp_path: Path) -> None:
    built = build_package(project, tmp_path / "out")
    dest = tmp_path / "cache" / built.sha256
    (dest / "junk").mkdir(parents=True)  # e.g. a copy interrupted by a crash, no marker
    verify_and_extract(built.path, built.sha256, dest)
    assert not (dest / "junk").exists() and (dest / "handler.py").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == [built.sha256]


def crafted(tmp_path: Path, member: tarfile.TarInfo, content: bytes = b"") -> tuple[Path, str]:
    """A .tar.gz holding one good file and `member`, with its real sha256 so only member checks fail."""
    archive = tmp_path / "crafted.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        good = tarfile.TarInfo("ok.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        member.size = len(content) if member.isreg() else 0
        tar.addfile(member, io.BytesIO(content))
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (tarfile.TarInfo("../evil"), r"'../evil': '\.\.' leaves the package"),
        (tarfile.TarInfo("sub/../../evil"), r"'sub/../../evil': '\.\.' leaves the package"),
        (tarfile.TarInfo("/etc/x"), r"'/etc/x': absolute path"),
        (link("passwd", tarfile.SYMTYPE, "/etc/passwd"), r"'passwd' -> /etc/passwd: link not allowed"),
        (link("hard", tarfile.LNKTYPE, "../../etc/passwd"), r"'hard' -> ../../etc/passwd: link not allowed"),
        (special("null", tarfile.CHRTYPE), r"'null': special file \(device or FIFO\) not allowed"),
        (special("disk", tarfile.BLKTYPE), r"'disk': special file \(device or FIFO\) not allowed"),
        (special("fifo", tarfile.FIFOTYPE), r"'fifo': special file \(device or FIFO\) not allowed"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "chardev", "blockdev", "fifo"],
)
def test_unsafe_members_rejected(tmp_path: Path, member: tarfile.TarInfo, message: str) -> None:
    archive, sha = crafted(tmp_path, member, b"evil")
    cache = tmp_path / "a" / "b" / "cache"
    dest = cache / sha
    with pytest.raises(PackageError, match=f"unsafe package member {message}"):
        verify_and_extract(archive, sha, dest)
    assert list(cache.iterdir()) == []  # nothing extracted, no temp dirs left
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    assert written == {"crafted.tar.gz", "a", "a/b", "a/b/cache"}


def test_concurrent_extraction_yields_one_complete_directory(project: Path, tmp_path: Path) -> None:
    built = build_package(project, tmp_path / "out")
    cache = tmp_path / "cache"
    dest = cache / built.sha256
    barrier = threading.Barrier(4)

    def replica() -> Path:
        barrier.wait(timeout=10)
        return verify_and_extract(built.path, built.sha256, dest)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = [f.result(timeout=30) for f in [pool.submit(replica) for _ in range(4)]]
    assert results == [dest] * 4
    assert [p.name for p in cache.iterdir()] == [built.sha256]
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == sorted([*FILES, MARKER])


def test_bad_package_id_rejected(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not a sha256 package id"):
        verify_and_extract(tmp_path / "x.tar.gz", "../../etc", tmp_path / "cache" / "x")


def test_parse_store_uri(tmp_path: Path) -> None:
    assert parse_store_uri("s3://bucket/team/a/") == ("s3", "bucket", "team/a")
    assert parse_store_uri("s3://bucket") == ("s3", "bucket", "")
    assert parse_store_uri(tmp_path.as_uri()) == ("file", "", str(tmp_path.resolve()))
    assert parse_store_uri(str(tmp_path / "store")) == ("file", "", str((tmp_path / "store").resolve()))
    for bad in ("s3:///key", "file://otherhost/x", "gs://bucket/x"):
        with pytest.raises(PackageError):
            parse_store_uri(bad)


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (client_error("SlowDown", 503), True),
        (client_error("ThrottlingException", 400), True),
        (client_error("TooManyRequests", 429), True),
        (client_error("InternalError", 500), True),
        (client_error("RequestTimeout", 400), True),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (client_error("AccessDenied", 403), False),
        (client_error("NoSuchBucket", 404), False),
        (client_error("404", 404), False),
        (client_error("ValidationError", 400), False),
        (PackageError("hash mismatch"), False),
        (ValueError("x"), False),
    ],
)
def test_is_transient_aws_error(exc: BaseException, transient: bool) -> None:
    assert is_transient_aws_error(exc) is transient


def test_extra_exclude_patterns_leave_files_out(tmp_path):
    project = tmp_path / "p"
    project.mkdir()
    (project / "handler.py").write_text("x = 1\n")
    (project / "cortex.yaml").write_text("- name: a\n")
    with_spec = build_package(project, tmp_path / "o1")
    without = build_package(project, tmp_path / "o2", exclude=["/cortex.yaml"])
    (project / "cortex.yaml").write_text("- name: a\n  autoscaling: {max_replicas: 3}\n")
    assert build_package(project, tmp_path / "o3", exclude=["/cortex.yaml"]).sha256 == without.sha256
    assert (with_spec.files, without.files) == (2, 1)
