"""Package stores: content-addressed, so a package is uploaded once however often it is deployed.

A store URI is a local directory (a path or file:///abs/dir) or an S3 location (s3://bucket/prefix).
Package URIs, what a replica is given, are the same schemes pointing at one `<sha256>.tar.gz`.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from botocore.client import BaseClient
from botocore.exceptions import ClientError

from cortex_flows.packaging.build import BuiltPackage
from cortex_flows.packaging.digest import require_sha256
from cortex_flows.packaging.errors import PackageError

_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class PackageStore(Protocol):
    """Where packages live, keyed by their sha256."""

    def uri_for(self, sha256: str) -> str:
        """The package URI a replica fetches."""
        ...

    def exists(self, sha256: str) -> bool:
        """True if the package is already stored."""
        ...

    def put(self, built: BuiltPackage) -> tuple[str, bool]:
        """Store the package unless present; return its URI and whether it was uploaded now."""
        ...


class LocalStore:
    """A directory of `<sha256>.tar.gz` files, for the single-machine backend."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, sha256: str) -> Path:
        return self.root / f"{require_sha256(sha256)}.tar.gz"

    def uri_for(self, sha256: str) -> str:
        return self._path(sha256).as_uri()

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def put(self, built: BuiltPackage) -> tuple[str, bool]:
        """Copy under a temp name then rename, so readers never see a partial package."""
        target = self._path(built.sha256)
        if target.is_file():
            return target.as_uri(), False
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".upload-", suffix=".tar.gz")
        try:
            with os.fdopen(fd, "wb") as out, built.path.open("rb") as src:
                shutil.copyfileobj(src, out)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return target.as_uri(), True


class S3Store:
    """`s3://<bucket>/<prefix>/packages/<sha256>.tar.gz`; the caller supplies the (credentialed) client."""

    def __init__(self, bucket: str, prefix: str, client: BaseClient) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client

    def key_for(self, sha256: str) -> str:
        name = f"packages/{require_sha256(sha256)}.tar.gz"
        return f"{self.prefix}/{name}" if self.prefix else name

    def uri_for(self, sha256: str) -> str:
        return f"s3://{self.bucket}/{self.key_for(sha256)}"

    def exists(self, sha256: str) -> bool:
        """HEAD the key: 404 means absent (HEAD has no body, so a missing bucket is a 404 too and
        `put` then reports NoSuchBucket); any other error, e.g. 403, propagates."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key_for(sha256))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                return False
            raise
        return True

    def put(self, built: BuiltPackage) -> tuple[str, bool]:
        """Single PUT (S3 allows 5 GiB, packages are at most 512 MiB) with S3 checking our SHA-256."""
        uri = self.uri_for(built.sha256)
        if self.exists(built.sha256):
            return uri, False
        with built.path.open("rb") as body:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.key_for(built.sha256),
                Body=body,
                ContentType="application/gzip",
                ChecksumSHA256=base64.b64encode(bytes.fromhex(built.sha256)).decode(),
            )
        return uri, True


def parse_store_uri(uri: str) -> tuple[str, str, str]:
    """Split a store or package URI into `("s3", bucket, key_or_prefix)` or `("file", "", abs_path)`."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise PackageError(f"S3 URI without a bucket: {uri!r}")
        return "s3", parsed.netloc, parsed.path.strip("/")
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise PackageError(f"file URI on another host: {uri!r}")
        return "file", "", str(Path(unquote(parsed.path)).resolve())
    if parsed.scheme == "":
        return "file", "", str(Path(uri).resolve())
    raise PackageError(f"unsupported package store {uri!r}: use a directory, file:// or s3://")


def store_from_uri(uri: str, s3_client: BaseClient | None = None) -> PackageStore:
    """The store a URI names; an S3 store needs a client built by the caller from its credentials."""
    scheme, bucket, path = parse_store_uri(uri)
    if scheme == "file":
        return LocalStore(Path(path))
    if s3_client is None:
        raise PackageError(f"an S3 client is needed for store {uri!r}")
    return S3Store(bucket, path, s3_client)
