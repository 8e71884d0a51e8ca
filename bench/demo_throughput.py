"""How fast the simulated shop produces and sends telemetry.

    python bench/demo_throughput.py [--minutes 20] [--rate 3] [--plugins] [--target HOST:PORT]

Two phases on the same run (scenario ``normal``, seed 1, fixed start):

1. generation only (``Simulation.ticks()``): spans, log records and metric points per second of
   the client's CPU time;
2. generation and export at full speed (``speed=0``) through the real OTLP/gRPC exporters to a
   server (started on free ports in a temporary data directory, detector plugins disabled unless
   ``--plugins``; or ``--target``): spans per wall-clock second, with the client's CPU time.

The second figure is what bounds ``--speed`` times ``--rate`` in ``opstrata demo``: a run that
needs more spans per second than the server takes falls behind the requested speed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opstrata.demo import Simulation
from tests.serverproc import ServerProcess

START = 1_700_000_040 * 1_000_000_000


def _points(data: object) -> int:
    if data is None:
        return 0
    return sum(
        len(m.data.data_points)
        for rm in data.resource_metrics  # type: ignore[attr-defined]
        for sm in rm.scope_metrics
        for m in sm.metrics
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="simulated minutes (20)")
    parser.add_argument("--rate", type=float, default=3.0, help="requests per simulated second")
    parser.add_argument("--plugins", action="store_true", help="keep the detector plugins on")
    parser.add_argument("--target", metavar="HOST:PORT", help="OTLP/gRPC of a running server")
    args = parser.parse_args()

    def sim() -> Simulation:
        return Simulation(
            "normal",
            seed=1,
            speed=0,
            warmup_minutes=args.minutes,
            duration_minutes=args.minutes,
            rate=args.rate,
            start_unix_nano=START,
        )

    cpu = time.process_time()
    spans = logs = points = 0
    for tick in sim().ticks():
        spans += len(tick.spans)
        logs += len(tick.log_records)
        points += _points(tick.metrics)
    cpu = time.process_time() - cpu
    print(
        f"generation: {spans:,} spans, {logs:,} log records, {points:,} metric points in "
        f"{cpu:.2f} CPU s: {spans / cpu:,.0f} spans/CPU-s "
        f"({(spans + logs + points) / cpu:,.0f} items/CPU-s)"
    )

    server = None
    target = args.target
    if target is None:
        env = {} if args.plugins else {"OPSTRATA_DISABLED_PLUGINS": '["aiops", "mlops", "llmops"]'}
        server = ServerProcess(Path(tempfile.mkdtemp()) / "data", env=env).start()
        target = server.grpc_endpoint
    try:
        wall, cpu = time.monotonic(), time.process_time()
        stats = sim().run(target)
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    finally:
        if server is not None:
            server.stop()
    plugins = "plugins on" if args.plugins or args.target else "detector plugins off"
    print(
        f"export ({plugins}): {stats.spans:,} spans in {wall:.1f} s: "
        f"{stats.spans / wall:,.0f} spans/s, client {cpu:.1f} CPU s "
        f"({stats.spans / cpu:,.0f} spans/CPU-s), {stats.failed_exports} failed exports; "
        f"speed x rate up to {args.minutes * 60 * args.rate / wall:,.0f} keeps up"
    )
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
