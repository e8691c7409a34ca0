"""API keys: the requests a replica answers when its API names a Secret block in `networking.api_keys`.

One implementation for both backends, because the replica runtime is what runs on both. The keys reach a
replica in one environment variable (`API_KEYS_ENV`) through the backend's secret channel (the local
agent's private secrets file, a Kubernetes Secret by `secretKeyRef`); the runtime takes it out of its
environment at start, so handler code and the processes it starts never see the keys. Probes and
`/metrics` are not predict routes and need no key: the platform calls them.
"""

from __future__ import annotations

import hashlib
import hmac
import json

API_KEYS_ENV = "CORTEX_API_KEYS"
BEARER = b"bearer "
# A slow, salted digest: the pod hash that covers the keys is shown (`get`, history, annotations), so
# guessing weak keys back from it must be expensive.
DIGEST_SALT = b"cortex-flows networking.api_keys"
DIGEST_ITERATIONS = 100_000


class ApiKeysError(ValueError):
    """The keys cannot be used; the message says why by position, never with a key's text."""


def parse_api_keys(value: object) -> tuple[str, ...]:
    """Keys from a Secret block's value or from the environment: a list of strings, a JSON list of
    strings, or one string (one key). Keys are sent in HTTP headers, so they must be printable ASCII
    without spaces; duplicates count once."""
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = None
        value = decoded if isinstance(decoded, list) else [value]
    if not isinstance(value, list | tuple):
        raise ApiKeysError(f"expected a JSON list of strings or one string, got {type(value).__name__}")
    keys: list[str] = []
    for index, key in enumerate(value):
        where = f"key {index + 1} of {len(value)}"
        if not isinstance(key, str):
            raise ApiKeysError(f"{where} is not a string (got {type(key).__name__})")
        if not key:
            raise ApiKeysError(f"{where} is empty")
        if not all(0x21 <= ord(char) <= 0x7E for char in key):
            raise ApiKeysError(f"{where} has characters other than printable ASCII without spaces")
        if key not in keys:
            keys.append(key)
    if not keys:
        raise ApiKeysError("holds no key; expected a JSON list of strings or one string")
    return tuple(keys)


def api_keys_env(keys: tuple[str, ...]) -> dict[str, str]:
    """The environment that carries the keys to a replica (through a backend's secret channel only)."""
    return {API_KEYS_ENV: json.dumps(list(keys))}


def keys_digest(keys: tuple[str, ...]) -> str:
    """What the pod identity covers instead of the keys: other keys give another digest (so rotating
    them rolls the replicas), the order they are listed in does not."""
    canonical = json.dumps(sorted(keys), separators=(",", ":")).encode()
    return hashlib.pbkdf2_hmac("sha256", canonical, DIGEST_SALT, DIGEST_ITERATIONS).hex()


class ApiKeys:
    """Checks a request's `Authorization: Bearer <key>` or `X-Api-Key: <key>` in constant time.

    Each presented key is hashed once and compared with the digest of every key (no early exit), so
    neither the time taken nor its length tells which key, if any, was close.
    """

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._digests = tuple(hashlib.sha256(key.encode()).digest() for key in keys)

    def __len__(self) -> int:
        return len(self._digests)

    def allows(self, authorization: bytes | None, api_key: bytes | None) -> bool:
        """Whether either header carries one of the keys."""
        presented = []
        if authorization is not None and authorization[: len(BEARER)].lower() == BEARER:
            presented.append(authorization[len(BEARER) :].strip())
        if api_key is not None:
            presented.append(api_key.strip())
        allowed = False
        for candidate in presented:
            digest = hashlib.sha256(candidate).digest()
            for known in self._digests:
                allowed |= hmac.compare_digest(digest, known)
        return allowed
