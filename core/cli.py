"""The ``opstrata`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from opstrata import __version__
from opstrata.settings import SettingsError, load_settings

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from opstrata.server import run

    overrides = {
        "otlp_grpc": args.otlp_grpc,
        "otlp_http": args.otlp_http,
        "api": args.api,
        "data_dir": args.data_dir,
    }
    try:
        settings = load_settings(args.config, overrides)
    except SettingsError as exc:
        print(f"opstrata: {exc}", file=sys.stderr)
        return 2
    return run(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opstrata", description="OpenTelemetry-native backend for AIOps, MLOps and LLMOps."
    )
    parser.add_argument("--version", action="version", version=f"opstrata {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--otlp-grpc", metavar="HOST:PORT", help="OTLP/gRPC (127.0.0.1:4317)")
    serve.add_argument("--otlp-http", metavar="HOST:PORT", help="OTLP/HTTP (127.0.0.1:4318)")
    serve.add_argument("--api", metavar="HOST:PORT", help="HTTP API (127.0.0.1:8080)")
    serve.add_argument("--data-dir", metavar="PATH", help="data directory (./opstrata-data)")
    serve.add_argument("--config", metavar="FILE.toml", help="settings file")
    serve.set_defaults(handler=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
