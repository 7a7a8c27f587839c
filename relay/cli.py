"""``atmos``: serve, admin, console (DESIGN §3). ``python -m relay`` is the same."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from relay import admin
from relay.config import Config, ConfigError, load


def config_from_args(args: argparse.Namespace) -> Config:
    path = args.config
    dev = bool(getattr(args, "dev", False))
    if path is None and Path("atmos.toml").exists():
        path = "atmos.toml"
    if path is None:
        dev = True  # no config file: embedded dev defaults (DESIGN §3)
    cfg = load(path, dev=dev)
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atmos", description="Atmosphere Relay: a cooperative mail relay")
    parser.add_argument("--config", "-c", help="TOML config file (default: ./atmos.toml if present)")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the relay")
    serve.add_argument("--config", "-c", dest="config", default=argparse.SUPPRESS)
    serve.add_argument("--dev", action="store_true", help="loopback listeners, ./state, self-signed TLS")
    serve.add_argument("--log-level", default=os.environ.get("ATMOS_LOG_LEVEL", "INFO"))
    console = sub.add_parser("console", help="the operator console (TUI)")
    console.add_argument("--url", default="ws://127.0.0.1:8080/admin/ws")
    console.add_argument("--token", default=os.environ.get("ATMOS_ADMIN_TOKEN", ""))
    admin.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            logging.basicConfig(level=args.log_level.upper(),
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            cfg = config_from_args(args)
            from relay.supervisor import serve_forever

            return serve_forever(cfg)
        if args.command == "console":
            try:
                from tui.app import run_console  # Textual (asyncio) is loaded only for the console
            except ImportError as exc:
                print(f"atmos console: needs the console's dependencies (textual, websockets): {exc}",
                      file=sys.stderr)
                return 2
            return run_console(args.url, args.token)
        cfg = config_from_args(args)
        return admin.run(cfg, args)
    except ConfigError as exc:
        print(f"atmos: configuration error: {exc}", file=sys.stderr)
        return 2
    except admin.AdminError as exc:
        print(f"atmos: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
