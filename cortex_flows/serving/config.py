"""What one replica needs to start: the seam between a backend and the serving runtime.

A backend writes this as JSON next to the replica; it carries no secrets (credentials for an S3 package
store, and the API's keys, reach the replica through its environment, never through this file).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024


class HandlerRef(BaseModel):
    """Which user code answers requests: a `class Handler` in a file, or a built-in handler."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["python", "sklearn"]
    path: str | None = None  # file inside the project, for type python
    class_name: str = "Handler"
    python_path: str | None = None  # directory inside the project put first on sys.path


class PackageRef(BaseModel):
    """Where the replica's project package lives and the digest it must match."""

    model_config = ConfigDict(extra="forbid")

    uri: str  # file:///abs/path/<sha>.tar.gz or s3://bucket/key
    sha256: str


class S3Access(BaseModel):
    """How to reach S3 (the package store or an s3:// model); keys come from the environment."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = None
    region: str | None = None


class ReplicaConfig(BaseModel):
    """Everything `python -m cortex_flows.serving` needs, with Cortex's admission-control defaults."""

    model_config = ConfigDict(extra="forbid")

    api_name: str
    revision: int = 1
    handler: HandlerRef
    package: PackageRef | None = None  # None: serve `project_dir` as it is (development, benchmarks)
    project_dir: str | None = None
    cache_dir: str | None = None  # where verified packages are extracted; shared by replicas
    s3: S3Access | None = None
    model_path: str | None = None  # relative to the project, absolute, or s3://
    config: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)  # the user's variables, set in the replica's environment
    requirements: str | None = None  # pip requirements file in the project, installed if present
    max_concurrency: int = 1
    max_queue_length: int = 100
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
