"""Package stores against real storage: a directory, and S3 served by moto over HTTP on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from cortex_flows.aws.clients import is_transient_aws_error
from cortex_flows.packaging.build import BuiltPackage, build_package
from cortex_flows.packaging.errors import PackageError
from cortex_flows.packaging.fetch import fetch_package
from cortex_flows.packaging.store import LocalStore, S3Store, store_from_uri
from cortex_flows.serving.config import PackageRef, S3Access


@pytest.fixture
def built(tmp_path: Path) -> BuiltPackage:
    project = tmp_path / "project"
    (project / "model").mkdir(parents=True)
    (project / "handler.py").write_text("class Handler: ...\n")
    (project / "model" / "weights.bin").write_bytes(bytes(range(256)) * 64)
    return build_package(project, tmp_path / "build")


def object_keys(client: BaseClient, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_local_store_uploads_once_and_fetches(built: BuiltPackage, tmp_path: Path) -> None:
    store = store_from_uri(str(tmp_path / "store"))
    assert isinstance(store, LocalStore)
    assert not store.exists(built.sha256)
    uri, uploaded = store.put(built)
    assert uploaded and uri == (tmp_path / "store" / f"{built.sha256}.tar.gz").as_uri()
    assert store.put(built) == (uri, False)
    assert [p.name for p in (tmp_path / "store").iterdir()] == [f"{built.sha256}.tar.gz"]

    project = fetch_package(PackageRef(uri=uri, sha256=built.sha256), tmp_path / "cache", None)
    assert project == tmp_path / "cache" / built.sha256
    assert (project / "handler.py").read_text() == "class Handler: ...\n"


def test_local_fetch_of_missing_package(built: BuiltPackage, tmp_path: Path) -> None:
    ref = PackageRef(uri=(tmp_path / "nowhere.tar.gz").as_uri(), sha256=built.sha256)
    with pytest.raises(PackageError, match="package not found"):
        fetch_package(ref, tmp_path / "cache", None)


def test_s3_store_uploads_once(built: BuiltPackage, moto_s3: BaseClient, s3_bucket: str) -> None:
    store = store_from_uri(f"s3://{s3_bucket}/team-a/", s3_client=moto_s3)
    assert isinstance(store, S3Store)
    assert not store.exists(built.sha256)
    uri, uploaded = store.put(built)
    key = f"team-a/packages/{built.sha256}.tar.gz"
    assert (uri, uploaded) == (f"s3://{s3_bucket}/{key}", True)
    assert store.exists(built.sha256)
    assert store.put(built) == (uri, False)
    assert object_keys(moto_s3, s3_bucket) == [key]
    assert moto_s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == built.path.read_bytes()


def test_fetch_from_s3(
    built: BuiltPackage, aws_env: str, moto_s3: BaseClient, s3_bucket: str, tmp_path: Path
) -> None:
    uri, _ = S3Store(s3_bucket, "", moto_s3).put(built)
    ref = PackageRef(uri=uri, sha256=built.sha256)
    access = S3Access(endpoint_url=aws_env, region="us-east-1")
    cache = tmp_path / "cache"
    project = fetch_package(ref, cache, access)
    assert (project / "model" / "weights.bin").read_bytes() == bytes(range(256)) * 64
    assert [p.name for p in cache.iterdir()] == [built.sha256]  # the download was a temp file

    moto_s3.delete_object(Bucket=s3_bucket, Key=f"packages/{built.sha256}.tar.gz")
    assert fetch_package(ref, cache, access) == project  # cached: S3 is not asked again


def test_tampered_s3_object_rejected(
    built: BuiltPackage, aws_env: str, moto_s3: BaseClient, s3_bucket: str, tmp_path: Path
) -> None:
    uri, _ = S3Store(s3_bucket, "p", moto_s3).put(built)
    data = bytearray(built.path.read_bytes())
    data[100] ^= 0x01
    moto_s3.put_object(Bucket=s3_bucket, Key=f"p/packages/{built.sha256}.tar.gz", Body=bytes(data))
    ref = PackageRef(uri=uri, sha256=built.sha256)
    with pytest.raises(PackageError, match=f"hash mismatch: expected {built.sha256}, got "):
        fetch_package(ref, tmp_path / "cache", S3Access(endpoint_url=aws_env))
    assert list((tmp_path / "cache").iterdir()) == []


def test_missing_bucket_is_not_transient(
    built: BuiltPackage, aws_env: str, moto_s3: BaseClient, tmp_path: Path
) -> None:
    with pytest.raises(ClientError) as put_error:
        S3Store("no-such-bucket", "", moto_s3).put(built)
    assert put_error.value.response["Error"]["Code"] == "NoSuchBucket"
    assert not is_transient_aws_error(put_error.value)

    ref = PackageRef(uri=f"s3://no-such-bucket/packages/{built.sha256}.tar.gz", sha256=built.sha256)
    with pytest.raises(ClientError) as fetch_error:
        fetch_package(ref, tmp_path / "cache", S3Access(endpoint_url=aws_env))
    assert fetch_error.value.response["Error"]["Code"] == "NoSuchBucket"
    assert not is_transient_aws_error(fetch_error.value)
    assert "testing" not in str(fetch_error.value)  # no credentials in the message
