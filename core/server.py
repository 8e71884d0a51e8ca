"""Run a server: store, pipeline, OTLP receivers and the API in one asyncio loop.

Components start downstream first (store → pipeline → receivers → API) and stop upstream first
(receivers → pipeline drain → store flush), so nothing accepted is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import signal
import socket
import sys
from collections.abc import Iterator

import uvicorn

from opstrata.alertbook import AlertBook
from opstrata.api.app import create_app
from opstrata.consumers import CommittedBatch, ConsumerContext, latest_event_time
from opstrata.correlation import TopologyCorrelator
from opstrata.fanout import ConsumerRunner
from opstrata.ingest import IngestPipeline
from opstrata.kernel import PluginError, Registry, build_plugin_manager, wire_plugins
from opstrata.memstats import MemoryCollector
from opstrata.notifiers import NotifierRunner
from opstrata.onset_history import OnsetHistory
from opstrata.otlp.grpc_receiver import GrpcReceiver
from opstrata.otlp.http_receiver import OtlpHttpServer
from opstrata.readafterack import ReadAfterAck
from opstrata.runtime import Runtime
from opstrata.selfmetrics import SelfMetrics
from opstrata.settings import Settings, parse_address
from opstrata.storage.base import Store, StoreError
from opstrata.topology import TopologyGraph
from opstrata.topology_consumer import TopologyConsumer

__all__ = ["open_store", "serve"]

log = logging.getLogger("opstrata")


class _Uvicorn(uvicorn.Server):
    """A uvicorn server that leaves signal handling to us: several run in one loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(address: tuple[str, int]) -> socket.socket:
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


def _announce(what: str, sock_or_addr: socket.socket | tuple[str, int]) -> None:
    if isinstance(sock_or_addr, socket.socket):
        host, port = sock_or_addr.getsockname()[:2]
    else:
        host, port = sock_or_addr
    shown = f"[{host}]" if ":" in host else host
    print(f"opstrata: {what} listening on {shown}:{port}", flush=True)


_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


def _keep_heap_under_load(trim_bytes: int) -> None:
    """Stop glibc from shrinking the heap after every wave of frees and growing it again.

    The decoder's buffers (a few MiB a second under load) are malloc'd on the event loop and
    freed in waves after each commit of the backlog; with glibc's dynamic thresholds the heap
    top was handed back and re-faulted page by page: page faults in ``malloc`` and ``memmove``
    were ~9 % of the event loop's CPU (perf, spans). A trim threshold of ``heap_trim_mib``
    keeps that much free heap mapped; the heap trimmer (``opstrata.memstats``) still returns
    it once the backlog is drained. A fixed mmap threshold (8 MiB) keeps request-sized buffers
    in the heap instead of fresh mappings, and turns off glibc's threshold adjustment.
    """
    if trim_bytes <= 0:
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt(_M_TRIM_THRESHOLD, trim_bytes)
        libc.mallopt(_M_MMAP_THRESHOLD, 8 * 1024 * 1024)
    except (OSError, AttributeError):  # not glibc: its own defaults
        return


def open_store(settings: Settings, registry: Registry) -> Store:
    """The store ``storage.backend`` names, from those plugins registered."""
    try:
        _, factory = registry.stores[settings.storage.backend]
    except KeyError:
        known = ", ".join(sorted(registry.stores)) or "none"
        raise PluginError(
            f"storage.backend: no store named {settings.storage.backend!r} (known: {known})"
        ) from None
    return factory(settings)


def _uvicorn(app: object, name: str) -> _Uvicorn:
    config = uvicorn.Config(
        app,
        loop="none",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
        timeout_keep_alive=30,
    )
    server = _Uvicorn(config)
    server.config.__dict__["_opstrata_name"] = name
    return server


async def _retention(runtime: Runtime) -> None:
    hours = runtime.settings.storage.retention_hours
    if hours <= 0:
        return
    import time

    while True:
        cutoff = time.time_ns() - int(hours * 3600 * 1e9)
        try:
            deleted = await asyncio.to_thread(runtime.store.delete_before, cutoff)
        except Exception:
            log.exception("retention failed; trying again in 5 minutes")
        else:
            if deleted:
                log.info("retention: deleted %d rows older than %.1f h", deleted, hours)
        await asyncio.sleep(300)


def _consumer_runners(
    settings: Settings, registry: Registry, store: Store, alertbook: AlertBook
) -> list[ConsumerRunner]:
    runners = []
    for plugin, consumer in registry.consumers:
        state_dir = settings.data_path / "plugins" / plugin
        state_dir.mkdir(parents=True, exist_ok=True)
        ctx = ConsumerContext(
            plugin, consumer.name, state_dir, alertbook.emit, store, registry.configs[plugin]
        )
        runners.append(
            ConsumerRunner(plugin, consumer, store, ctx, settings.data_path / "consumers")
        )
    return runners


def _topology_runner(
    settings: Settings, graph: TopologyGraph, store: Store, alertbook: AlertBook
) -> ConsumerRunner:
    """The incident engine's own consumer: it learns the topology the correlator walks."""
    state_dir = settings.data_path / "incidents"
    state_dir.mkdir(parents=True, exist_ok=True)
    consumer = TopologyConsumer(graph)
    ctx = ConsumerContext("opstrata", consumer.name, state_dir, alertbook.emit, store, {})
    return ConsumerRunner("opstrata", consumer, store, ctx, settings.data_path / "consumers")


async def serve(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM; return the exit status."""
    # DuckDB's Python binding takes the GIL back many times during an insert; with the event
    # loop busy, each wait is one full switch interval (5 ms by default). A short interval made
    # group commits about three times faster under load (docs/performance.md).
    sys.setswitchinterval(0.0002)
    _keep_heap_under_load(settings.ingest.heap_trim_mib * 1024 * 1024)
    pm = build_plugin_manager(settings)
    registry = wire_plugins(pm, settings)
    metrics = SelfMetrics()
    store = open_store(settings, registry)
    store.start()
    metrics.watch_store(lambda: store.stats)
    notifiers = [NotifierRunner(plugin, notifier) for plugin, notifier in registry.notifiers]
    for notifier in notifiers:
        notifier.start()
    graph = TopologyGraph()
    engine = TopologyCorrelator(
        graph,
        quiet_seconds=settings.incidents.quiet_seconds,
        reopen_seconds=settings.incidents.reopen_seconds,
        confirm_seconds=settings.incidents.confirm_seconds,
        history=OnsetHistory(
            window_seconds=settings.incidents.chronic_window_seconds,
            chronic_onsets=settings.incidents.chronic_onsets,
        ),
    )
    alertbook = AlertBook(store, engine, notifiers)
    alertbook.start()
    runners = _consumer_runners(settings, registry, store, alertbook)
    runners.append(_topology_runner(settings, graph, store, alertbook))
    for runner in runners:
        runner.start()
    metrics.watch_kernel(runners, notifiers, alertbook)

    # Acknowledged requests are durable in the ingest log; the store loads them behind it.
    pipeline = IngestPipeline(
        settings.ingest,
        store,
        metrics,
        log_dir=settings.data_path / "ingest-log" if settings.ingest.log else None,
    )

    loop = asyncio.get_running_loop()
    newest: list[CommittedBatch] = []

    def observe_newest() -> None:
        alertbook.observe(latest_event_time(newest.pop()))

    def fan_out(seq: int, batches: list, nbytes: int | None) -> None:
        # ``of`` works the batch's event time out once for every consumer and the alert clock
        # (built without it, each consumer worked it out again for every batch); the pipeline
        # has the buffers' size already (admission counted them), so they are not measured
        # again.
        committed = CommittedBatch.of(seq, batches, nbytes)
        for runner in runners:
            runner.publish(committed)
        # The event-time clock moves once per pass of the event loop, to the newest commit's
        # time: a store commit settles hundreds of requests in one pass, and observing each
        # one is work for nothing.
        if not newest:
            loop.call_soon(observe_newest)
            newest.append(committed)
        else:
            newest[0] = committed

    pipeline.on_commit = fan_out
    metrics.registry.register(MemoryCollector(pipeline, store, runners))
    pipeline.start()
    runtime = Runtime(
        settings=settings,
        store=store,
        metrics=metrics,
        pipeline=pipeline,
        registry=registry,
        consumers=runners,
        notifiers=notifiers,
        alertbook=alertbook,
    )

    grpc_receiver = GrpcReceiver(
        pipeline, parse_address(settings.otlp_grpc, "otlp_grpc"), settings.ingest.max_request_bytes
    )
    http_sock = _listen(parse_address(settings.otlp_http, "otlp_http"))
    api_sock = _listen(parse_address(settings.api, "api"))
    otlp_http = OtlpHttpServer(pipeline, settings.ingest.max_request_bytes)
    api = _uvicorn(ReadAfterAck(create_app(runtime), pipeline), "api")

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    grpc_bound = await grpc_receiver.start()
    await otlp_http.start(http_sock)
    tasks = [asyncio.create_task(api.serve(sockets=[api_sock]), name="api")]
    retention = asyncio.create_task(_retention(runtime), name="retention")
    while not api.started:
        if any(task.done() for task in tasks):
            break
        await asyncio.sleep(0.01)
    _announce("OTLP/gRPC", grpc_bound)
    _announce("OTLP/HTTP", http_sock)
    _announce("API", api_sock)
    runtime.ready = True
    # What start-up made lives as long as the server: out of the collector's way. A young
    # generation of 20,000 objects instead of 700 collects less often (a request of 100 items
    # allocates hundreds); gc was ~2-3 % of the event loop's CPU under load.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    print("opstrata: ready", flush=True)

    done_early = asyncio.create_task(asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED))
    await asyncio.wait(
        [asyncio.create_task(stop.wait()), done_early], return_when="FIRST_COMPLETED"
    )

    runtime.ready = False
    print("opstrata: stopping", flush=True)
    retention.cancel()
    otlp_http.close()
    await grpc_receiver.stop(grace=10.0)
    await pipeline.shutdown(timeout=30.0)
    await otlp_http.wait_closed()
    api.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    for runner in runners:
        await asyncio.to_thread(runner.stop)
    await asyncio.to_thread(alertbook.stop)
    for notifier in notifiers:
        await asyncio.to_thread(notifier.stop)
    await asyncio.to_thread(store.shutdown)
    print("opstrata: stopped", flush=True)
    return 0


def run(settings: Settings) -> int:
    """Blocking entry point for the CLI."""
    logging.basicConfig(level=logging.INFO, format="opstrata: %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        return uvloop.run(serve(settings))
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(serve(settings))
    except (OSError, PluginError, StoreError) as exc:
        print(f"opstrata: cannot start: {exc}", file=sys.stderr)
        return 1
