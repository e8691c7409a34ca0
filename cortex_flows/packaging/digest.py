"""SHA-256 helpers: a package's id is the digest of its archive bytes, and it also names paths on disk."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from cortex_flows.packaging.errors import PackageError

_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, streamed so a 512 MiB package does not sit in memory."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def require_sha256(value: str) -> str:
    """Return `value` if it is a lowercase hex SHA-256.

    Package ids become file and key names, so anything else (e.g. "../x") must never get that far.
    """
    if not _SHA256.fullmatch(value):
        raise PackageError(f"not a sha256 package id: {value!r}")
    return value
