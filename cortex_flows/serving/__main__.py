"""`python -m cortex_flows.serving --config replica.json --host H --port N [--parent-pid PID]`.

One process per replica; with `--prepare-only` it fetches the package and installs its dependencies,
then exits (a backend runs this once per version before starting replicas, so a requirement that
cannot be installed fails the rollout with pip's message before any traffic moves). Logs go to stderr (the supervisor redirects them to the replica's log file);
exit codes are listed in `cortex_flows.serving.server`. API keys, if the API has them, come in the
environment variable `CORTEX_API_KEYS` (see `cortex_flows.serving.auth`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

import uvloop
from pydantic import ValidationError

from cortex_flows.packaging.dependencies import DependencyError
from cortex_flows.serving.auth import API_KEYS_ENV, ApiKeys, ApiKeysError, parse_api_keys
from cortex_flows.serving.config import ReplicaConfig
from cortex_flows.serving.server import (
    EXIT_BAD_CONFIG,
    EXIT_BIND_FAILED,
    EXIT_DEPENDENCIES_FAILED,
    EXIT_LOAD_FAILED,
    Replica,
    ServeOptions,
    bind_socket,
    one_line,
    prepare,
)

log = logging.getLogger("cortex_flows.serving")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cortex_flows.serving", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", required=True, type=Path, help="replica config JSON (ReplicaConfig)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port (logged at start)")
    parser.add_argument("--parent-pid", type=int, help="shut down gracefully when this process exits")
    parser.add_argument(
        "--drain-delay", type=float, default=0.0,
        help="seconds to keep serving after SIGTERM with /readyz 503, so load balancers notice",
    )  # fmt: skip
    parser.add_argument(
        "--prepare-only", action="store_true", help="fetch the package, install its dependencies and exit"
    )
    parser.add_argument(
        "--grace", type=float, default=30.0, help="seconds in-flight requests get to finish on shutdown"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run one replica; never returns. Exits with `os._exit` so a handler thread stuck past the grace
    period (threads cannot be cancelled) cannot keep a stopped replica alive."""
    args = parse_args(argv)
    # Out of the environment before any user code runs: handlers and their subprocesses never see the keys.
    keys_text = os.environ.pop(API_KEYS_ENV, None)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = ReplicaConfig.model_validate_json(args.config.read_bytes())
    except (OSError, ValidationError) as exc:
        _exit(EXIT_BAD_CONFIG, f"bad replica config {args.config}: {exc}")
    if args.prepare_only:
        _prepare_and_exit(config)
    api_keys = None
    if keys_text is not None:
        try:
            api_keys = ApiKeys(parse_api_keys(keys_text))
        except ApiKeysError as exc:  # never serve open when keys were meant: refuse to start
            _exit(EXIT_BAD_CONFIG, f"bad API keys in ${API_KEYS_ENV}: {exc}")
        log.info("predict requests need one of %d API key(s)", len(api_keys))
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        _exit(EXIT_BIND_FAILED, f"cannot bind {args.host}:{args.port}: {exc}")
    options = ServeOptions(parent_pid=args.parent_pid, drain_delay=args.drain_delay, grace=args.grace)
    code = uvloop.run(Replica(config, options, api_keys).run(sock))
    _exit(code)


def _prepare_and_exit(config: ReplicaConfig) -> None:
    """Exit 0 once prepared; on a failed install, pip's message alone is the last thing on stderr."""
    try:
        project_dir, environment = prepare(config)
    except DependencyError as exc:
        print(exc, file=sys.stderr)
        _exit(EXIT_DEPENDENCIES_FAILED)
    except Exception as exc:  # noqa: BLE001 - any fetch failure is reported as this process's reason
        _exit(EXIT_LOAD_FAILED, f"fetching the package: {type(exc).__name__}: {exc}")
    if environment is None:
        log.info("prepared %s: no %s", project_dir, config.requirements or "requirements file")
    else:
        done = "installed" if environment.installed else "reused"
        log.info("prepared %s: dependencies %s (environment %s)", project_dir, done, environment.key)
    _exit(0)


def _exit(code: int, reason: str | None = None) -> NoReturn:
    if reason is not None:
        log.critical(one_line(reason))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
