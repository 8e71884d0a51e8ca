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


def _plugins(args: argparse.Namespace) -> int:
    from opstrata.fanout import OffsetFile
    from opstrata.kernel import PluginError, build_plugin_manager, wire_plugins

    try:
        settings = load_settings(args.config, {"data_dir": args.data_dir})
        registry = wire_plugins(build_plugin_manager(settings), settings)
    except (SettingsError, PluginError) as exc:
        print(f"opstrata: {exc}", file=sys.stderr)
        return 2
    offsets_dir = settings.data_path / "consumers"
    for info in registry.plugins:
        origin = "built-in" if info.builtin else "installed"
        print(f"{info.name} {info.version} ({origin})")
        print(f"  hooks: {', '.join(info.hooks) or '-'}")
        for plugin, consumer in registry.consumers:
            if plugin == info.name:
                offset = OffsetFile(offsets_dir / f"{plugin}.{consumer.name}.offset").load()
                signals = ",".join(sorted(s.value for s in consumer.signals))
                shown = "never run" if offset is None else f"offset {offset}"
                print(f"  consumer {consumer.name} [{signals}]: {shown}")
        for name, plugin in registry.detectors.names().items():
            if plugin == info.name:
                print(f"  detector {name}")
        for plugin, notifier in registry.notifiers:
            if plugin == info.name:
                print(f"  notifier {notifier.name}")
        if any(plugin == info.name for plugin, _ in registry.routes):
            print(f"  routes /api/v1/{info.name}/")
    return 0


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    from opstrata.demo.console import add_arguments

    add_arguments(parser)


def _demo(args: argparse.Namespace) -> int:
    from opstrata.demo.console import run

    return run(args)


def _aiops(args: argparse.Namespace) -> int:
    from opstrata.plugins.aiops.offline import run_command

    return run_command(args)


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

    plugins = commands.add_parser("plugins", help="list the plugins that load, and what they add")
    plugins.add_argument("--data-dir", metavar="PATH", help="data directory (consumer offsets)")
    plugins.add_argument("--config", metavar="FILE.toml", help="settings file")
    plugins.set_defaults(handler=_plugins)

    demo = commands.add_parser(
        "demo", help="run a simulated shop with a fault and show the alerts and incidents"
    )
    _demo_arguments(demo)
    demo.set_defaults(handler=_demo)

    for name, what in (
        ("detect", "score a timestamp,value CSV with the AIOps detectors"),
        ("templates", "mine log templates from a file, one message per line"),
    ):
        offline = commands.add_parser(name, help=what)
        offline.add_argument("input", metavar="SERIES.csv" if name == "detect" else "APP.log")
        offline.add_argument("--output", metavar="OUT.csv", help="where to write (stdout)")
        offline.add_argument("--config", metavar="FILE.toml", help="settings ([plugins.aiops])")
        offline.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="progress on stderr (default: when stderr is a terminal)",
        )
        offline.set_defaults(handler=_aiops)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
