"""Get a replica's project: reuse a verified extraction in the shared cache, else download and verify."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from cortex_flows.aws.clients import s3_client
from cortex_flows.packaging.digest import require_sha256
from cortex_flows.packaging.errors import PackageError
from cortex_flows.packaging.extract import is_extracted, verify_and_extract
from cortex_flows.packaging.store import parse_store_uri
from cortex_flows.serving.config import PackageRef, S3Access


def fetch_package(ref: PackageRef, cache_dir: Path, s3: S3Access | None) -> Path:
    """Return `cache_dir/<sha256>/`, the extracted project, downloading only when it is not there yet.

    S3 credentials come from the environment (see `cortex_flows.aws.clients`); AWS errors propagate
    unchanged so `is_transient_aws_error` can decide on retries.
    """
    dest = cache_dir / require_sha256(ref.sha256)
    if is_extracted(dest, ref.sha256):
        return dest
    scheme, bucket, path = parse_store_uri(ref.uri)
    if scheme == "file":
        archive = Path(path)
        if not archive.is_file():
            raise PackageError(f"package not found: {ref.uri}")
        return verify_and_extract(archive, ref.sha256, dest)
    access = s3 or S3Access()
    client = s3_client(endpoint_url=access.endpoint_url, region=access.region)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".download-", suffix=".tar.gz") as tmp:
        body = client.get_object(Bucket=bucket, Key=path)["Body"]
        with body:
            shutil.copyfileobj(body, tmp)
        tmp.flush()
        return verify_and_extract(Path(tmp.name), ref.sha256, dest)
