"""docs/plugins.md documents every hook with an example that runs, and every hook is exercised.

Each ```python block under a ``### opstrata_<hook>`` heading is executed as a module, registered
with a pluggy PluginManager that has the opstrata hookspecs (which validates the hookimpl
signatures), wired the way the kernel wires plugins (configure first, then the register hooks),
and what it registers is checked and used: consumers consume a batch, detectors score points,
routes answer, notifiers notify, stores open.
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pluggy
import pyarrow as pa
import pytest
from litestar import Litestar, Router
from litestar.di import Provide
from litestar.testing import TestClient

import opstrata.hookspecs
from opstrata import (
    AlertEvent,
    CommittedBatch,
    Consumer,
    ConsumerContext,
    Entity,
    Incident,
    IncidentChange,
    Notifier,
    Severity,
    Signal,
    Table,
)
from opstrata.alerts import IncidentStatus
from opstrata.kernel import WIRING_HOOKS, Registry, wire_plugins
from opstrata.runtime import Runtime
from opstrata.schema import LOGS, METRICS_GAUGE, TRACES
from opstrata.settings import Settings
from opstrata.storage.duckdb_store import DuckDBStore

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugins.md"
SAMPLE = Path(__file__).parent / "sample_plugin" / "opstrata_sample.py"
PLUGIN_TESTS = Path(__file__).parent / "test_plugins.py"
SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND


def hook_names() -> list[str]:
    """Every hookspec in opstrata.hookspecs."""
    pm = pluggy.PluginManager(opstrata.hookspecs.PROJECT)
    return sorted(
        name
        for name in dir(opstrata.hookspecs)
        if pm.parse_hookspec_opts(opstrata.hookspecs, name) is not None
    )


HOOKS = hook_names()


def doc_sections(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """(headings, python blocks by the ``#``-``###`` heading they are under)."""
    headings: list[str] = []
    blocks: dict[str, list[str]] = {}
    current = ""
    fence: str | None = None
    code: list[str] = []
    for line in text.splitlines():
        if fence is not None:
            if line.strip() == "```":
                if fence == "python":
                    blocks.setdefault(current, []).append("\n".join(code) + "\n")
                fence = None
            else:
                code.append(line)
            continue
        if line.startswith("```"):
            fence, code = line[3:].strip(), []
            continue
        heading = re.match(r"(#{1,3}) (.+?)\s*$", line)
        if heading:
            current = heading.group(2)
            headings.append(line.rstrip())
    assert fence is None, "docs/plugins.md has an unclosed code block"
    return headings, blocks


HEADINGS, BLOCKS = doc_sections(DOC.read_text())


def hook_examples() -> list[tuple[str, int, str]]:
    return [(hook, i, source) for hook in HOOKS for i, source in enumerate(BLOCKS.get(hook, []))]


@pytest.fixture
def load_module() -> Iterator[Callable[[str, str], types.ModuleType]]:
    """Executes source as a fresh module (in sys.modules while the test runs, as an imported
    module would be: msgspec and Litestar resolve annotations through it)."""
    names: list[str] = []

    def load(source: str, name: str) -> types.ModuleType:
        name = "plugins_md_" + re.sub(r"\W", "_", name)
        module = types.ModuleType(name)
        module.__file__ = f"docs/plugins.md <{name}>"
        sys.modules[name] = module
        names.append(name)
        exec(compile(source, module.__file__, "exec"), module.__dict__)
        return module

    yield load
    for name in names:
        sys.modules.pop(name, None)


def plugin_manager(module: types.ModuleType, name: str = "example") -> pluggy.PluginManager:
    pm = pluggy.PluginManager(opstrata.hookspecs.PROJECT)
    pm.add_hookspecs(opstrata.hookspecs)
    pm.register(module, name=name)  # validates each hookimpl's arguments against its hookspec
    pm.check_pending()  # a @hookimpl whose name is no hook
    return pm


# -- what the kernel hands a plugin's objects --------------------------------------------------


def _span(i: int) -> dict[str, Any]:
    failed = i % 2 == 0
    return {
        "Timestamp": T0 + i * SECOND,
        "TraceId": f"{i:032x}",
        "SpanId": f"{i:016x}",
        "ParentSpanId": "",
        "TraceState": "",
        "SpanName": "POST /checkout",
        "SpanKind": "Server",
        "ServiceName": "checkout",
        "ResourceAttributes": [("service.name", "checkout")],
        "ScopeName": "tests",
        "ScopeVersion": "1",
        "SpanAttributes": [("http.route", "/checkout")],
        "Duration": (3_000 if failed else 40) * 1_000_000,
        "StatusCode": "Error" if failed else "Ok",
        "StatusMessage": "boom" if failed else "",
        "Events": [],
        "Links": [],
        "ScopeAttributes": [],
        "TraceFlags": 1,
    }


def sample_batches() -> dict[Signal, CommittedBatch]:
    """One batch per signal. The spans are slow and half of them failed: what span examples
    alert on."""
    spans = pa.RecordBatch.from_pylist([_span(i) for i in range(40)], schema=TRACES)
    logs = pa.RecordBatch.from_pylist(
        [
            {
                "Timestamp": T0 + i,
                "ObservedTimestamp": T0 + i,
                "TraceId": "",
                "SpanId": "",
                "TraceFlags": 0,
                "SeverityText": "ERROR",
                "SeverityNumber": 17,
                "ServiceName": "checkout",
                "Body": "payment declined",
                "ResourceAttributes": [("service.name", "checkout")],
                "LogAttributes": [],
                "ScopeAttributes": [],
                "EventName": "",
            }
            for i in range(3)
        ],
        schema=LOGS,
    )
    gauge = pa.RecordBatch.from_pylist(
        [
            {
                "ServiceName": "checkout",
                "MetricName": "queue.depth",
                "Attributes": [],
                "ResourceAttributes": [("service.name", "checkout")],
                "StartTimeUnix": T0,
                "TimeUnix": T0 + i * SECOND,
                "Value": float(i),
                "Flags": 0,
                "Exemplars": [],
            }
            for i in range(3)
        ],
        schema=METRICS_GAUGE,
    )
    return {
        Signal.SPANS: CommittedBatch.of(1, [(Table.TRACES, spans)]),
        Signal.LOG_RECORDS: CommittedBatch.of(2, [(Table.LOGS, logs)]),
        Signal.METRIC_POINTS: CommittedBatch.of(3, [(Table.METRICS_GAUGE, gauge)]),
    }


def sample_change() -> IncidentChange:
    incident = Incident(
        id="inc_0018bcfe56800922fac4be6",
        title="service checkout: 50% of 40 spans failed",
        status=IncidentStatus.OPEN,
        severity=Severity.ERROR,
        opened_unix_nano=T0,
        updated_unix_nano=T0,
        alert_ids=["alr_0018bcfe56800dd3e00b4b8"],
        entities=[Entity("service", "checkout")],
        services=["checkout"],
    )
    return IncidentChange("opened", incident)


class Wiring:
    """What one plugin module registered, hook by hook, through recording register functions."""

    def __init__(self, pm: pluggy.PluginManager, settings: Settings, config: dict[str, Any]):
        self.hooks = {caller.name for caller in pm.get_hookcallers(pm.get_plugin("example"))}
        self.registered: dict[str, list[tuple[Any, ...]]] = {hook: [] for hook in WIRING_HOOKS}
        if "opstrata_configure" in self.hooks:
            pm.hook.opstrata_configure(config=config, settings=settings)
        for hook in WIRING_HOOKS:
            if hook in self.hooks:
                record = self.registered[hook].append
                getattr(pm.hook, hook)(register=lambda *args, _record=record: _record(args))


# -- the tests ---------------------------------------------------------------------------------


def test_every_hookspec_has_a_section_in_the_plugin_docs() -> None:
    assert HOOKS, "no hookspecs found in opstrata.hookspecs"
    missing = [hook for hook in HOOKS if f"### {hook}" not in HEADINGS]
    assert not missing, f"docs/plugins.md has no '### <hook>' section for {missing}"
    stale = {h[4:] for h in HEADINGS if h.startswith("### opstrata_")} - set(HOOKS)
    assert not stale, f"docs/plugins.md has sections for hooks that do not exist: {stale}"
    without_example = [hook for hook in HOOKS if not BLOCKS.get(hook)]
    assert not without_example, f"no ```python example under {without_example}"


def test_the_sample_plugin_implements_every_hook() -> None:
    """tests/test_plugins.py pip-installs the sample plugin and drives it end to end through a
    server, so a hook it implements is a hook that a test exercises."""
    assert "sample_plugin" in PLUGIN_TESTS.read_text(), "test_plugins.py no longer uses it"
    source = SAMPLE.read_text()
    module = types.ModuleType("opstrata_sample_under_test")
    exec(compile(source, str(SAMPLE), "exec"), module.__dict__)
    pm = plugin_manager(module, name="sample")
    implemented = {caller.name for caller in pm.get_hookcallers(module)}
    missing = sorted(set(HOOKS) - implemented)
    assert not missing, f"tests/sample_plugin/opstrata_sample.py does not implement {missing}"


@pytest.mark.parametrize(
    ("hook", "index", "source"),
    hook_examples(),
    ids=[f"{hook}-{index}" for hook, index, _ in hook_examples()],
)
def test_hook_example_runs(
    hook: str,
    index: int,
    source: str,
    load_module: Callable[[str, str], types.ModuleType],
    tmp_path: Path,
) -> None:
    module = load_module(source, f"{hook}_{index}")
    pm = plugin_manager(module)
    settings = Settings(data_dir=str(tmp_path / "data"))
    wiring = Wiring(pm, settings, config={})
    assert hook in wiring.hooks, f"the example under '### {hook}' does not implement {hook}"
    check = CHECKS[hook]
    check(module, wiring, settings, tmp_path)
    # And the kernel wires it too (with its own type checks on what is registered).
    wire_plugins(plugin_manager(module), settings)


def check_configure(
    module: types.ModuleType, wiring: Wiring, settings: Settings, tmp_path: Path
) -> None:
    module.opstrata_configure(config={}, settings=Settings())
    with pytest.raises(ValueError, match="plugins\\."):
        module.opstrata_configure(config={"no_such_key": 1}, settings=Settings())


def check_consumers(
    module: types.ModuleType, wiring: Wiring, settings: Settings, tmp_path: Path
) -> None:
    consumers = [args[0] for args in wiring.registered["opstrata_register_consumers"]]
    assert consumers, "nothing registered"
    batches = sample_batches()
    for consumer in consumers:
        assert isinstance(consumer, Consumer)
        assert consumer.signals and consumer.signals <= set(Signal)
        emitted: list[tuple[str, Any]] = []
        state_dir = tmp_path / "data" / "plugins" / "example"
        state_dir.mkdir(parents=True, exist_ok=True)
        ctx = ConsumerContext(
            "example",
            consumer.name,
            state_dir,
            lambda plugin, event, _out=emitted: _out.append((plugin, event)),
            None,
            {},
        )
        consumer.start(ctx)
        for signal in sorted(consumer.signals):
            consumer.consume(batches[signal], ctx)
        consumer.stop(ctx)
        consumer.start(ctx)  # state saved by stop() loads again
        assert all(isinstance(event, AlertEvent) for _, event in emitted)
        if Signal.SPANS in consumer.signals:
            assert emitted, f"{consumer.name} raised no alert on failing, slow spans"
        for _, event in emitted:
            msgspec.json.encode(event)


def check_detectors(
    module: types.ModuleType, wiring: Wiring, settings: Settings, tmp_path: Path
) -> None:
    detectors = wiring.registered["opstrata_register_detectors"]
    assert detectors, "nothing registered"
    rng = np.random.default_rng(7)
    series = np.tile(np.arange(3), 100)
    times = T0 + np.arange(series.size, dtype=np.int64) * SECOND
    values = rng.normal(10.0, 1.0, series.size)
    values[-1] = 1000.0
    for name, factory in detectors:
        assert isinstance(name, str) and name
        assert callable(factory)
        detector = factory({})
        scores = np.asarray(detector.update(series, times, values))
        assert scores.shape == values.shape
        assert np.all((scores >= 0) & (scores <= 1)), f"{name}: scores outside [0, 1]"


def check_routes(
    module: types.ModuleType, wiring: Wiring, settings: Settings, tmp_path: Path
) -> None:
    registered = wiring.registered["opstrata_register_routes"]
    assert registered, "nothing registered"
    handlers = [handler for (group,) in registered for handler in group]
    assert handlers, "an empty list of routes"
    store = open_duckdb(tmp_path / "routes-store")
    try:
        runtime = Runtime(
            settings=settings,
            store=store,
            metrics=None,  # type: ignore[arg-type]
            pipeline=None,  # type: ignore[arg-type]
            registry=Registry(),
        )
        app = Litestar(
            route_handlers=[Router(path="/api/v1/example", route_handlers=handlers)],
            dependencies={"runtime": Provide(lambda: runtime, sync_to_thread=False)},
        )
        paths = [
            route.path
            for route in app.routes
            if "GET" in getattr(route, "methods", ())
            and route.path.startswith("/api/v1/example")
            and "{" not in route.path
        ]
        assert paths, "no GET route without path parameters to try"
        with TestClient(app) as client:
            for path in paths:
                reply = client.get(path)
                assert reply.status_code == 200, (path, reply.text)
    finally:
        store.shutdown()


def check_notifiers(
    module: types.ModuleType, wiring: Wiring, settings: Settings, tmp_path: Path
) -> None:
    notifiers = [args[0] for args in wiring.registered["opstrata_register_notifiers"]]
    assert notifiers, "nothing registered"
    for notifier in notifiers:
        assert isinstance(notifier, Notifier)
        assert isinstance(notifier.name, str) and notifier.name
        notifier.notify(sample_change())


def check_stores(
    module: types.ModuleType, wiring: Wiring, settings: Settings, tmp_path: Path
) -> None:
    stores = wiring.registered["opstrata_register_stores"]
    assert stores, "nothing registered"
    for name, factory in stores:
        assert isinstance(name, str) and name
        assert callable(factory)
        store = factory(settings)
        store.start()
        try:
            assert store.last_sequence() == 0
        finally:
            store.shutdown()


def open_duckdb(path: Path) -> DuckDBStore:
    store = DuckDBStore(path, memory_limit="256MB", threads=1)
    store.start()
    return store


CHECKS: dict[str, Callable[[types.ModuleType, Wiring, Settings, Path], None]] = {
    "opstrata_configure": check_configure,
    "opstrata_register_consumers": check_consumers,
    "opstrata_register_detectors": check_detectors,
    "opstrata_register_routes": check_routes,
    "opstrata_register_notifiers": check_notifiers,
    "opstrata_register_stores": check_stores,
}


def test_every_hook_has_a_check() -> None:
    assert set(CHECKS) == set(HOOKS), "a new hook needs a check of what it registers"


def test_every_python_block_of_the_plugin_docs_runs(
    load_module: Callable[[str, str], types.ModuleType],
) -> None:
    """Also the blocks outside the hook sections (the one-file plugin, the signature check)."""
    for heading, sources in BLOCKS.items():
        for index, source in enumerate(sources):
            module = load_module(source, f"{heading}_{index}")
            if any(name.startswith("opstrata_") for name in vars(module)):
                wire_plugins(plugin_manager(module), Settings())
