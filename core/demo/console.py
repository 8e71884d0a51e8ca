"""``opstrata demo``: run the simulated shop against a server and show what opstrata finds.

Starts its own server (free loopback ports, a temporary data directory) unless ``--server``
names one, runs warm-up traffic, injects the scenario's fault, and prints, as they appear, the
alerts (``GET /api/v1/alerts``) and incidents with their root-cause candidates
(``GET /api/v1/incidents``), then a verdict against the scenario's ground truth.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from opstrata.alerts import Entity

if TYPE_CHECKING:  # the simulation loads the OpenTelemetry SDK: only when the demo runs
    from opstrata.demo.faults import Truth
    from opstrata.demo.simulation import Progress, Simulation

__all__ = ["add_arguments", "run"]

_NS = 1_000_000_000
_LISTEN = re.compile(r"opstrata: (OTLP/gRPC|OTLP/HTTP|API) listening on (\S+)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        default="gpu-node-trouble",
        metavar="NAME",
        help="a scenario of docs/demo.md (normal, slow-database, bad-deploy, "
        "host-cpu-pressure, host-memory-pressure, gpu-node-trouble, "
        "dependency-outage, model-input-drift, llm-cost-spike) or 'all' "
        "(default gpu-node-trouble)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument(
        "--speed",
        type=float,
        default=60.0,
        help="simulated seconds per real second (60; 0: as fast as possible)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=2.0,
        help="requests per simulated second (2; about 12 spans each)",
    )
    parser.add_argument(
        "--warmup-minutes",
        type=float,
        default=60.0,
        help="simulated minutes of normal traffic before the fault (60)",
    )
    parser.add_argument(
        "--fault-minutes",
        type=float,
        default=25.0,
        help="simulated minutes of traffic after the fault starts (25)",
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        help="API of a running server (http://127.0.0.1:8080); "
        "default: start one on free ports in a temporary data directory",
    )
    parser.add_argument(
        "--otlp",
        metavar="ENDPOINT",
        help="OTLP endpoint with --server: host:port for gRPC (default: the "
        "server's host, port 4317) or an http:// base URL for OTLP/HTTP",
    )
    parser.add_argument(
        "--data-dir",
        metavar="PATH",
        help="data directory of the server it starts (kept afterwards; "
        "default: a temporary one, removed)",
    )


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from opstrata.demo.faults import SCENARIOS

    if args.scenario != "all" and args.scenario not in SCENARIOS:
        print(
            f"opstrata: unknown scenario {args.scenario!r}; one of: {', '.join(SCENARIOS)}, all",
            file=sys.stderr,
        )
        return 2
    names = [n for n in SCENARIOS if n != "normal"] if args.scenario == "all" else [args.scenario]
    try:
        with _server(args) as (api, otlp):
            return _run_all(names, args, api, otlp, out)
    except (RuntimeError, OSError) as exc:
        print(f"opstrata: demo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the server it started is stopped on the way out
        print("opstrata demo: interrupted", file=sys.stderr)
        return 130


@contextmanager
def _server(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """(API base URL, OTLP endpoint) of the given server, or of one started for the demo."""
    if args.server:
        api = args.server.rstrip("/")
        host = urllib.parse.urlsplit(api).hostname or "127.0.0.1"
        yield api, args.otlp or f"{host}:4317"
        return
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="opstrata-demo-")
    cmd = [
        sys.executable,
        "-m",
        "opstrata.cli",
        "serve",
        "--otlp-grpc",
        "127.0.0.1:0",
        "--otlp-http",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--data-dir",
        data_dir,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy()
    )
    lines: list[str] = []
    addresses: dict[str, str] = {}
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if match := _LISTEN.search(line):
                addresses[match.group(1)] = match.group(2)
            if "opstrata: ready" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while not ready.wait(0.1):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start:\n" + "".join(lines[-20:]))
        print(
            f"opstrata demo: started a server (API http://{addresses['API']}, "
            f"OTLP/gRPC {addresses['OTLP/gRPC']}, data in {data_dir})",
            flush=True,
        )
        yield "http://" + addresses["API"], addresses["OTLP/gRPC"]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
        if not args.data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


def _get(api: str, path: str, **params: object) -> dict[str, Any]:
    url = f"{api}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as reply:
        return json.loads(reply.read())


def _plan(names: list[str], args: argparse.Namespace) -> list[Simulation]:
    """One simulation per scenario on one continuous clock; later ones get a quiet lead-in
    long enough for the previous incident to resolve (the default quiet period is 10 min)."""
    from opstrata.demo.simulation import Simulation

    lead = [args.warmup_minutes] + [20.0] * (len(names) - 1)
    total = sum(lead) + args.fault_minutes * len(names)
    start = time.time_ns() // (60 * _NS) * 60 * _NS - int(total * 60 * _NS)
    sims = []
    for name, warmup in zip(names, lead, strict=True):
        duration = warmup + args.fault_minutes
        sims.append(
            Simulation(
                name,
                seed=args.seed,
                speed=args.speed,
                rate=args.rate,
                warmup_minutes=warmup,
                duration_minutes=duration,
                start_unix_nano=start,
            )
        )
        start += int(duration * 60 * _NS)
    return sims


def _run_all(names: list[str], args: argparse.Namespace, api: str, otlp: str, out: TextIO) -> int:
    watcher = _Watcher(api, out)
    status = 0
    for sim in _plan(names, args):
        status = max(status, _run_one(sim, otlp, watcher, out))
    return status


def _clock(ns: int) -> str:
    return datetime.fromtimestamp(ns / _NS, UTC).strftime("%H:%M")


def _entity(e: dict[str, Any] | Entity) -> str:
    if isinstance(e, Entity):
        return f"{e.kind} {e.name}"
    return f"{e.get('kind', '?')} {e.get('name', '?')}"


def _follow(
    worker: threading.Thread, latest: list[Progress], watcher: _Watcher, truth: Truth, out: TextIO
) -> None:
    """Print progress and what the API shows until the simulation thread ends."""
    shown_phase, shown_minute = "", -10.0
    while worker.is_alive():
        worker.join(1.0)
        watcher.poll()
        if latest:
            p = latest[-1]
            if p.phase != shown_phase or p.elapsed_minutes - shown_minute >= 10:
                if p.phase == "fault" and shown_phase == "warmup":
                    print(f"--> fault injected: {truth.scenario}", file=out)
                shown_phase, shown_minute = p.phase, p.elapsed_minutes
                lag = f", {p.behind_seconds:.0f} s behind" if p.behind_seconds >= 5 else ""
                print(
                    f"[{_clock(p.sim_time_unix_nano)}] {p.phase:6} "
                    f"{p.elapsed_minutes:3.0f}/{p.duration_minutes:g} min  "
                    f"{p.spans:,} spans, {p.log_records:,} logs, {p.metric_points:,} points"
                    f"{lag}",
                    file=out,
                    flush=True,
                )


def _run_one(sim: Simulation, otlp: str, watcher: _Watcher, out: TextIO) -> int:
    truth = sim.truth
    print(f"\n=== scenario {truth.scenario}: {truth.description}", file=out)
    if truth.root_cause is not None:
        print(
            f"    fault at {_clock(sim.onset_unix_nano)} simulated "
            f"({sim.fault_at_minutes:g} min in); injected root cause: "
            f"{_entity(truth.root_cause)}",
            file=out,
        )
    print(
        f"    {sim.duration_minutes:g} simulated minutes "
        f"{f'at {sim.speed:g}x' if sim.speed > 0 else 'as fast as the server takes them'}, "
        f"{sim.rate:g} requests/s, seed {sim.seed}",
        file=out,
        flush=True,
    )
    watcher.onset = sim.onset_unix_nano if truth.root_cause else None
    latest: list[Progress] = []
    result: list[object] = []
    stop = threading.Event()

    def work() -> None:
        try:
            result.append(sim.run(otlp, progress=latest.append, stop=stop))
        except Exception as exc:  # shown below; the watcher keeps the console alive
            result.append(exc)

    worker = threading.Thread(target=work, name="demo-simulation", daemon=True)
    worker.start()
    try:
        _follow(worker, latest, watcher, truth, out)
    except KeyboardInterrupt:
        stop.set()  # the run sends what it generated and closes its exporters
        worker.join(30)
        raise
    outcome = result[0] if result else RuntimeError("the simulation ended without a result")
    if isinstance(outcome, BaseException):
        print(f"opstrata demo: the simulation failed: {outcome}", file=out)
        return 1
    watcher.settle()
    print(
        f"sent {outcome.spans:,} spans, {outcome.log_records:,} log records and "
        f"{outcome.metric_points:,} metric points in {outcome.wall_seconds:.0f} s"
        + (
            f"; {outcome.failed_exports} of {outcome.exports} exports failed"
            if outcome.failed_exports
            else ""
        ),
        file=out,
    )
    watcher.verdict(truth, sim.start_unix_nano, sim.end_unix_nano)
    # A few failed exports (a timeout) still make a demo; most failing means no server took it.
    return 1 if outcome.failed_exports * 10 > outcome.exports else 0


class _Watcher:
    """Polls the API and prints alerts and incident changes once each."""

    def __init__(self, api: str, out: TextIO) -> None:
        self.api = api
        self.out = out
        self.onset: int | None = None
        self.alerts: dict[str, dict[str, Any]] = {}
        self.incidents: dict[str, dict[str, Any]] = {}
        self._shown_incidents: dict[str, tuple[str, int, str]] = {}
        """Incident id -> (status, bit length of its alert count, top cause) last printed."""
        self.errors = 0

    def _when(self, ns: int) -> str:
        if self.onset is None:
            return _clock(ns)
        minutes = (ns - self.onset) / 60 / _NS
        return f"{_clock(ns)} (T{minutes:+.1f} min)"

    def poll(self) -> int:
        """Fetch alerts and incidents; print what is new; the number of new things."""
        try:
            alerts = _get(self.api, "/api/v1/alerts", limit=1000).get("alerts", [])
            incidents = _get(self.api, "/api/v1/incidents", limit=200).get("incidents", [])
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.errors += 1
            if self.errors in (1, 10):
                print(f"   (API not answering: {exc})", file=self.out)
            return 0
        fresh = 0
        for alert in sorted(alerts, key=lambda a: a.get("first_seen_unix_nano", 0)):
            if alert["id"] not in self.alerts:
                fresh += 1
                print(
                    f"  ALERT    {self._when(alert.get('first_seen_unix_nano', 0))}  "
                    f"{alert.get('layer', '?'):6} {alert.get('kind', '?'):18} "
                    f"{_entity(alert.get('entity', {}))}: {alert.get('summary', '')}",
                    file=self.out,
                    flush=True,
                )
            self.alerts[alert["id"]] = alert
        for inc in sorted(incidents, key=lambda i: i.get("opened_unix_nano", 0)):
            self.incidents[inc["id"]] = inc
            top = inc.get("candidates") or []
            # A line when it opens, changes status or top cause, or its alerts double: an
            # alert flood shows as a handful of lines, not one per alert.
            count = len(inc.get("alert_ids", []))
            key = (
                inc.get("status", ""),
                count.bit_length(),
                _entity(top[0]["entity"]) if top else "",
            )
            before = self._shown_incidents.get(inc["id"])
            if before == key:
                continue
            fresh += 1
            self._shown_incidents[inc["id"]] = key
            what = "opened" if before is None else inc.get("status", "changed")
            print(
                f"  INCIDENT {self._when(inc.get('updated_unix_nano', 0))}  {inc['id']} "
                f"{what}: {inc.get('title', '')} ({count} alerts"
                + (f"; top cause {key[2]}" if key[2] else "")
                + ")",
                file=self.out,
                flush=True,
            )
        return fresh

    def _lag(self) -> int:
        """Committed batches the plugins' consumers have yet to process (0 if unknown)."""
        try:
            with urllib.request.urlopen(f"{self.api}/api/v1/plugins", timeout=30) as reply:
                plugins = json.loads(reply.read())
        except (urllib.error.URLError, OSError, ValueError):
            return 0
        return sum(int(c.get("lag", 0)) for p in plugins for c in p.get("consumers", []))

    def settle(self, quiet: float = 4.0, limit: float = 90.0) -> None:
        """Poll until the plugins have consumed everything sent and nothing new has shown for
        ``quiet`` seconds (at most ``limit`` seconds)."""
        deadline = time.monotonic() + limit
        last_news = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(1.0)
            if self.poll():
                last_news = time.monotonic()
            if time.monotonic() - last_news >= quiet and self._lag() == 0:
                break

    def verdict(self, truth: Truth, start: int, end: int) -> None:
        """The run's incidents with their top candidates, checked against the truth."""
        # Incidents this run touched: open during it and changed since it began.
        mine = [
            i
            for i in self.incidents.values()
            if i.get("opened_unix_nano", 0) <= end and i.get("updated_unix_nano", 0) >= start
        ]
        alerts = [
            a for a in self.alerts.values() if start <= a.get("first_seen_unix_nano", 0) <= end
        ]
        layers: dict[str, int] = {}
        for alert in alerts:
            layers[alert.get("layer", "?")] = layers.get(alert.get("layer", "?"), 0) + 1
        split = ""
        if truth.onset_unix_nano is not None:
            early = sum(a.get("first_seen_unix_nano", 0) < truth.onset_unix_nano for a in alerts)
            split = f", {early} of them before the fault"
        shown = ", ".join(f"{k} {v}" for k, v in sorted(layers.items()))
        print(
            f"{len(alerts)} new alerts in this run ({shown or 'none'}{split}); "
            f"{len(mine)} incidents touched by it",
            file=self.out,
        )
        found: int | None = None
        for inc in mine:
            print(f"  {inc['id']} [{inc.get('status', '?')}] {inc.get('title', '')}", file=self.out)
            print(
                f"    layers {', '.join(inc.get('layers', [])) or '-'}; "
                f"{len(inc.get('alert_ids', []))} alerts; services "
                f"{', '.join(inc.get('services', [])) or '-'}; models "
                f"{', '.join(inc.get('models', [])) or '-'}",
                file=self.out,
            )
            for rank, cand in enumerate((inc.get("candidates") or [])[:3], 1):
                entity = cand.get("entity", {})
                hit = truth.matches(Entity(entity.get("kind", ""), entity.get("name", "")))
                if hit and (found is None or rank < found):
                    found = rank
                print(
                    f"    {rank}. {_entity(entity)} (score {cand.get('score', 0):.2f})"
                    f"{'  <- injected' if hit else ''}: {cand.get('reason', '')}",
                    file=self.out,
                )
        if truth.root_cause is None:
            print(
                "verdict: no fault was injected"
                + ("; every incident above is a false alarm" if mine else ""),
                file=self.out,
            )
        elif found is not None:
            print(
                f"verdict: the injected root cause ({_entity(truth.root_cause)}) is candidate "
                f"#{found}",
                file=self.out,
            )
        else:
            print(
                f"verdict: the injected root cause ({_entity(truth.root_cause)}) is not among "
                "the top candidates",
                file=self.out,
            )
        self.out.flush()
