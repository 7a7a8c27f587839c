"""``atmos``: serve, admin, console (DESIGN §3). ``python -m relay`` is the same."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from relay.config import Config, ConfigError, load
from relay.members import admin

# Given to every parser, so `atmos admin enroll --did X --config F` means the same as
# `atmos --config F admin enroll --did X`: SUPPRESS keeps a later parser from resetting a value.
COMMON = argparse.ArgumentParser(add_help=False)
COMMON.add_argument("--config", "-c", default=argparse.SUPPRESS, metavar="FILE",
                    help="TOML config file (default: ./atmos.toml if present)")
COMMON.add_argument("--dev", action="store_true", default=argparse.SUPPRESS,
                    help="development mode: loopback listeners, ./state, generated secrets and TLS "
                         "(admin: manage a relay started with `atmos serve --dev`)")


def config_from_args(args: argparse.Namespace) -> Config:
    path = getattr(args, "config", None)
    dev = bool(getattr(args, "dev", False))
    if path is None and Path("atmos.toml").exists():
        path = "atmos.toml"
    if path is None:
        dev = True  # no config file: embedded dev defaults (DESIGN §3)
    if not dev and args.command == "admin":
        dev = running_dev(str(path))
    return load(path, dev=dev)


def running_dev(path: str | Path) -> bool:
    """Whether the relay that last ran with this config was started with --dev: what it wrote to
    state_dir/run.json. Lets ``atmos admin --config F`` manage ``atmos serve --dev --config F``."""
    # Placeholder secrets: a dev load would otherwise create the secret files just to find state_dir.
    placeholder = {"ATMOS_ADMIN_TOKEN": "-" * 16, "ATMOS_SECRET_KEY": "-" * 16}
    try:
        state = load(path, dev=True, env=placeholder).state_path
        run = json.loads((state / "run.json").read_text())
    except (ConfigError, OSError, ValueError):
        return False
    return isinstance(run, dict) and run.get("dev") is True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atmos", description="Atmosphere Relay: a cooperative mail relay",
                                     parents=[COMMON])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the relay", parents=[COMMON])
    serve.add_argument("--log-level", default=os.environ.get("ATMOS_LOG_LEVEL", "INFO"))
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="relay processes (nodes) on this machine sharing the listeners; default "
                            "node.workers, else one per core (--dev: 1)")
    console = sub.add_parser("console", help="the operator console (TUI)")
    console.add_argument("--url", default="ws://127.0.0.1:8080/admin/ws")
    console.add_argument("--token", default=os.environ.get("ATMOS_ADMIN_TOKEN", ""))
    admin.add_parser(sub, COMMON)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args, sys.argv[1:] if argv is None else list(argv))
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
        if args.command == "admin":
            print("atmos admin: give the relay's config with --config FILE (in any position); for a relay "
                  "started with `atmos serve --dev`, add --dev (read from its state/run.json while it runs)",
                  file=sys.stderr)
        return 2
    except admin.AdminError as exc:
        print(f"atmos: {exc}", file=sys.stderr)
        return 1


def serve(args: argparse.Namespace, argv: list[str]) -> int:
    cfg = config_from_args(args)
    from relay.app.supervisor import serve  # Trio, the web app: loaded only to serve

    return serve(cfg, workers=args.workers, argv=argv, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
