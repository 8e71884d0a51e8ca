"""The hooks a plugin implements. Hooks *wire*: they run once at start-up and register objects
that do the work (consumers, detectors, routes, notifiers, stores). Per-batch work never runs as
a hook call.

The kernel calls each hook once per plugin, with a ``register`` function bound to that plugin,
so registrations are attributed to their plugin. A hook that raises stops the server at start-up
with a message naming the plugin and the hook: a half-wired plugin would fail silently later.
Implementations return nothing; what they register is the result.

Write an implementation with ``from opstrata import hookimpl``::

    @hookimpl
    def opstrata_register_consumers(register):
        register(MyConsumer())
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from opstrata.consumers import Consumer
    from opstrata.detectors import DetectorFactory
    from opstrata.notifiers import Notifier
    from opstrata.settings import Settings
    from opstrata.storage.base import Store

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "opstrata"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def opstrata_configure(config: dict[str, Any], settings: Settings) -> None:
    """Configure the plugin from its settings section.

    Called first, once per plugin, before any ``opstrata_register_*`` hook.

    :param config: the plugin's own section of the settings, ``[plugins.<name>]`` in the TOML
        file or ``OPSTRATA_PLUGINS__<NAME>__<KEY>`` variables; ``{}`` when absent. Validate it
        (``msgspec.convert(config, MyConfig)``) and raise ``ValueError`` naming the bad key:
        the server then refuses to start, with the message.
    :param settings: the whole (read-only) server settings.
    :returns: nothing.
    """


@hookspec
def opstrata_register_consumers(register: Callable[[Consumer], None]) -> None:
    """Register batch consumers: objects that see every committed batch of the signals they
    name, once and in order, from their own bounded inbox (see :class:`opstrata.Consumer`).

    :param register: call it with each consumer; consumer names must be unique per plugin.
    :returns: nothing.
    """


@hookspec
def opstrata_register_detectors(register: Callable[[str, DetectorFactory], None]) -> None:
    """Register anomaly detectors by name, for detection plugins (AIOps) to build per series.

    :param register: ``register(name, factory)``; ``factory(params: dict) -> Detector``.
        Names are global: a second detector with a taken name is refused at start-up.
    :returns: nothing.
    """


@hookspec
def opstrata_register_routes(register: Callable[[Sequence[Any]], None]) -> None:
    """Register HTTP API routes, mounted under ``/api/v1/<plugin name>/``.

    :param register: call it with a list of Litestar route handlers or controllers. They can
        ask for ``runtime`` (the :class:`opstrata.runtime.Runtime`) as a dependency.
    :returns: nothing.
    """


@hookspec
def opstrata_register_notifiers(register: Callable[[Notifier], None]) -> None:
    """Register notifiers, told of every new and changed incident (see
    :class:`opstrata.Notifier`). Each runs behind its own bounded queue: a slow notifier
    delays only itself.

    :param register: call it with each notifier.
    :returns: nothing.
    """


@hookspec
def opstrata_register_stores(register: Callable[[str, Callable[[Settings], Store]], None]) -> None:
    """Register store backends by name; ``storage.backend`` in the settings picks one.

    :param register: ``register(name, factory)``; ``factory(settings) -> Store``. The built-in
        ``duckdb`` store is registered this way too.
    :returns: nothing.
    """
