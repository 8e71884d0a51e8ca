"""The plugin kernel: load plugins, call their wiring hooks, keep what they registered.

Built-in plugins are registered from :data:`BUILTIN_PLUGINS` exactly like third-party ones,
which come from the ``opstrata`` entry-point group (``pip install opstrata-foo`` is all a user
does). Any of them can be disabled by name with ``disabled_plugins``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pluggy

from opstrata import __version__, hookspecs
from opstrata.consumers import Consumer
from opstrata.detectors import DetectorRegistry
from opstrata.notifiers import Notifier
from opstrata.settings import Settings

__all__ = [
    "BUILTIN_PLUGINS",
    "PluginError",
    "PluginInfo",
    "Registry",
    "build_plugin_manager",
    "wire_plugins",
]

log = logging.getLogger(__name__)

BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("duckdb", "opstrata.plugins.duckdb_store"),
    ("webhook", "opstrata.plugins.webhook"),
    ("mlops", "opstrata.plugins.mlops"),
    ("llmops", "opstrata.plugins.llmops"),
    ("aiops", "opstrata.plugins.aiops.plugin"),
)
"""(name, module) of the plugins that ship with opstrata."""

WIRING_HOOKS = (
    "opstrata_register_stores",
    "opstrata_register_consumers",
    "opstrata_register_detectors",
    "opstrata_register_routes",
    "opstrata_register_notifiers",
)


class PluginError(RuntimeError):
    """A plugin could not be loaded or wired; the message names the plugin."""


class PluginInfo(msgspec.Struct, frozen=True):
    name: str
    version: str
    builtin: bool
    hooks: list[str]


@dataclass
class Registry:
    """Everything plugins registered, each item with the name of its plugin."""

    consumers: list[tuple[str, Consumer]] = field(default_factory=list)
    detectors: DetectorRegistry = field(default_factory=DetectorRegistry)
    routes: list[tuple[str, Sequence[Any]]] = field(default_factory=list)
    notifiers: list[tuple[str, Notifier]] = field(default_factory=list)
    stores: dict[str, tuple[str, Callable[[Settings], Any]]] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)


def build_plugin_manager(settings: Settings) -> pluggy.PluginManager:
    """A plugin manager with the built-in and installed plugins, minus the disabled ones."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in settings.disabled_plugins:
        pm.set_blocked(name)
    for name, module_name in BUILTIN_PLUGINS:
        if pm.is_blocked(name):
            continue
        pm.register(importlib.import_module(module_name), name=name)
    try:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
        # A misspelt hook would otherwise never be called, silently.
        pm.check_pending()
    except Exception as exc:
        raise PluginError(f"cannot load an installed plugin: {exc}") from exc
    return pm


def _versions(pm: pluggy.PluginManager) -> dict[str, str]:
    versions = {}
    for plugin, dist in pm.list_plugin_distinfo():
        name = pm.get_name(plugin)
        if name is not None:
            versions[name] = dist.version
    return versions


def _hook_names(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    return sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())


def wire_plugins(pm: pluggy.PluginManager, settings: Settings) -> Registry:
    """Call each plugin's wiring hooks once, with ``register`` functions bound to it."""
    registry = Registry()
    versions = _versions(pm)
    builtin = {name for name, _ in BUILTIN_PLUGINS}
    plugins = [(pm.get_name(p), p) for p in pm.get_plugins()]
    plugins = sorted((n, p) for n, p in plugins if n is not None)
    for name, plugin in plugins:
        registry.plugins.append(
            PluginInfo(
                name=name,
                version=versions.get(name, __version__ if name in builtin else "unknown"),
                builtin=name in builtin,
                hooks=_hook_names(pm, plugin),
            )
        )
    for name, plugin in plugins:
        config = dict(settings.plugins.get(name, {}))
        registry.configs[name] = config
        _call(pm, plugin, name, "opstrata_configure", config=config, settings=settings)
    for name, plugin in plugins:
        registrars: dict[str, dict[str, Any]] = {
            "opstrata_register_stores": {
                "register": lambda store_name, factory, _n=name: _add_store(
                    registry, _n, store_name, factory
                )
            },
            "opstrata_register_consumers": {
                "register": lambda consumer, _n=name: _add_consumer(registry, _n, consumer)
            },
            "opstrata_register_detectors": {
                "register": lambda det_name, factory, _n=name: registry.detectors.register(
                    _n, det_name, factory
                )
            },
            "opstrata_register_routes": {
                "register": lambda handlers, _n=name: _add_routes(registry, _n, handlers)
            },
            "opstrata_register_notifiers": {
                "register": lambda notifier, _n=name: _add_notifier(registry, _n, notifier)
            },
        }
        for hook in WIRING_HOOKS:
            _call(pm, plugin, name, hook, **registrars[hook])
    return registry


def _call(pm: pluggy.PluginManager, plugin: object, name: str, hook: str, **kwargs: Any) -> None:
    impl = getattr(plugin, hook, None)
    if impl is None or pm.parse_hookimpl_opts(plugin, hook) is None:
        return
    try:
        impl(**{arg: kwargs[arg] for arg in _argnames(impl)})
    except Exception as exc:
        raise PluginError(f"plugin {name!r}: {hook} failed: {exc}") from exc


def _argnames(function: Callable[..., Any]) -> tuple[str, ...]:
    code = function.__code__
    names = code.co_varnames[: code.co_argcount]
    return names[1:] if names[:1] == ("self",) else names


def _add_consumer(registry: Registry, plugin: str, consumer: Consumer) -> None:
    if not isinstance(consumer, Consumer):
        raise TypeError(f"{consumer!r} is not an opstrata.Consumer")
    if any(p == plugin and c.name == consumer.name for p, c in registry.consumers):
        raise ValueError(f"consumer name {consumer.name!r} is used twice")
    registry.consumers.append((plugin, consumer))


RESERVED_ROUTE_NAMES = frozenset(
    {"alerts", "incidents", "plugins", "traces", "spans", "services", "logs", "metrics"}
)
"""Plugin names that cannot have routes: ``/api/v1/<name>/`` belongs to the core API."""


def _add_routes(registry: Registry, plugin: str, handlers: Sequence[Any]) -> None:
    if plugin in RESERVED_ROUTE_NAMES:
        raise ValueError(f"/api/v1/{plugin}/ is a core API path; rename the plugin")
    handlers = list(handlers)
    if not handlers:
        raise ValueError("register() was given no route handlers")
    registry.routes.append((plugin, handlers))


def _add_notifier(registry: Registry, plugin: str, notifier: Notifier) -> None:
    if not isinstance(notifier, Notifier):
        raise TypeError(f"{notifier!r} has no name and notify(change)")
    registry.notifiers.append((plugin, notifier))


def _add_store(registry: Registry, plugin: str, name: str, factory: Callable[..., Any]) -> None:
    if name in registry.stores:
        raise ValueError(f"store {name!r} is already registered by {registry.stores[name][0]!r}")
    registry.stores[name] = (plugin, factory)
