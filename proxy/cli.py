"""The ``nocp`` command line: ``serve`` the proxy, run a ``fake-upstream`` for demos, read the
TransactionLog (``logs tail``, ``logs stats``), replay it through drift detection (``drift``) and
run the benchmark suite (``bench``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from proxy.config import load_settings
from proxy.exceptions import ConfigError
from proxy.processlog import configure_logging


def _serve(args: argparse.Namespace) -> int:
    from proxy.server import STATE, create_app

    overrides: dict[str, Any] = {}
    if args.host:
        overrides.setdefault("server", {})["host"] = args.host
    if args.port:
        overrides.setdefault("server", {})["port"] = args.port
    if args.log_dir:
        overrides.setdefault("log", {})["dir"] = args.log_dir
    if args.upstream:
        overrides["upstreams"] = [{"name": "default", "base_url": args.upstream, "models": ["*"]}]
    if args.allow_open_relay:
        overrides.setdefault("auth", {})["allow_open_relay"] = True
    try:
        settings = load_settings(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"nocp: {exc}", file=sys.stderr)
        return 2
    configure_logging()
    app = create_app(settings)
    pool = app[STATE].compress_pool
    if pool is not None:  # workers up before the first large request, not on it

        async def start_workers(app: web.Application) -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await pool.start()

        app.on_startup.append(start_workers)
    print(
        f"nocp listening on http://{settings.server.host}:{settings.server.port} "
        f"-> {', '.join(f'{u.name}={u.base_url}' for u in settings.upstreams)}; "
        f"log {settings.log.path}",
        flush=True,
    )
    web.run_app(
        app,
        host=settings.server.host,
        port=settings.server.port,
        access_log=None,
        handler_cancellation=True,
        print=None,
    )
    return 0


def _hash_key(args: argparse.Namespace) -> int:
    from proxy.auth import hash_key

    key = args.key if args.key is not None else sys.stdin.readline().strip()
    if not key:
        print("nocp: no key given (argument or one line on stdin)", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def _new_key(args: argparse.Namespace) -> int:
    import secrets

    from proxy.auth import hash_key

    key = "nocp-" + secrets.token_urlsafe(32)
    print(f"key (give it to the client; nocp keeps only its hash): {key}", file=sys.stderr)
    print(f"- {{tenant: {args.tenant}, key_sha256: {hash_key(key)}}}  # under auth.keys", file=sys.stderr)
    print(key)
    return 0


def _fake_upstream(args: argparse.Namespace) -> int:
    from proxy.testing import run_fake_upstream

    print(f"fake upstream listening on http://{args.host}:{args.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_fake_upstream(args.host, args.port))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``nocp`` command."""
    parser = argparse.ArgumentParser(prog="nocp", description="LLM context-compression reverse proxy")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="YAML config file (default: $NOCP_CONFIG)")
    serve.add_argument("--upstream", help="send every model to this OpenAI-compatible base URL")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080)")
    serve.add_argument("--log-dir", help="TransactionLog directory (default ./logs)")
    serve.add_argument(
        "--allow-open-relay",
        action="store_true",
        help="start even though an upstream has api_key_env and no client keys are configured",
    )
    serve.set_defaults(func=_serve)
    auth = sub.add_parser("auth", help="client keys: hash one for auth.keys, or make a new one")
    auth_sub = auth.add_subparsers(dest="auth_command", required=True)
    hash_cmd = auth_sub.add_parser("hash-key", help="print the SHA-256 of a key (argument or stdin)")
    hash_cmd.add_argument("key", nargs="?", help="the key (default: one line on stdin, kept out of history)")
    hash_cmd.set_defaults(func=_hash_key)
    new_cmd = auth_sub.add_parser("new-key", help="make a random key; its auth.keys entry goes to stderr")
    new_cmd.add_argument("--tenant", required=True, help="the tenant the key maps to")
    new_cmd.set_defaults(func=_new_key)
    fake = sub.add_parser("fake-upstream", help="run the fake LLM provider (OpenAI + Gemini) for demos")
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=9000)
    fake.set_defaults(func=_fake_upstream)
    from proxy.translog_cli import add_cli as add_log_commands

    add_log_commands(sub)  # logs tail, logs stats, drift
    from proxy.bench.cli import add_cli as add_bench_command

    add_bench_command(sub)  # bench
    from proxy.top import add_cli as add_top_command

    add_top_command(sub)  # top
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nocp`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
