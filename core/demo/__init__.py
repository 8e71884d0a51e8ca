"""A simulated shop that sends real OTLP, with named faults and their ground truth.

Ten services (``frontend`` → ``api-gateway`` → ``catalog``/``cart``/``checkout``/``payment``/
``shipping``/``recommendation`` → ``postgresql``/``redis``/``kafka``/``stripe``), a model server
(``fraud-model`` version ``3`` on ``gpu-node-1``) and an LLM gateway (``gpt-4o-mini``,
``gpt-4o``) run on four Kubernetes nodes. Simulated time runs faster than real time; every span,
log record and metric point carries simulated timestamps and goes out through the real
OpenTelemetry SDK exporters (OTLP/gRPC to ``host:port``, OTLP/HTTP to an ``http://`` base URL).

Use::

    from opstrata.demo import SCENARIOS, Simulation

    sim = Simulation(scenario="slow-database", seed=1, speed=60.0, warmup_minutes=30,
                     duration_minutes=50)
    stats = sim.run("127.0.0.1:4317", progress=lambda p: print(p.phase, p.spans))
    sim.truth.root_cause          # Entity(kind="service", name="postgresql")
    sim.truth.onset_unix_nano     # simulated time of the fault's first effect
    sim.truth.matches(candidate)  # the root cause or one of its aliases

``scenario`` is a name from :data:`SCENARIOS` (``normal`` injects nothing), ``"a+b"`` or a list
for simultaneous faults (``sim.truths`` has one :class:`Truth` each). ``fault_at_minutes``
defaults to ``warmup_minutes``; ``fault_minutes`` (default: to the end) ends the fault early.
``speed`` is simulated seconds per real second (0: as fast as the server takes it); ``rate`` is
requests per simulated second (about 12 spans each); ``start_unix_nano`` fixes the simulated
start (default: so that the run ends at the current minute), and with it every byte sent: runs
with the same arguments and seed send the same telemetry. ``stop`` (a ``threading.Event``)
ends a run early. ``sim.ticks()`` yields the same telemetry tick by tick (SDK spans, log
records, ``MetricsData`` every 30 simulated seconds) without sending it. What is emitted,
signal by signal, is listed in ``docs/demo.md``.
"""

from __future__ import annotations

from opstrata.demo.faults import SCENARIOS, Effects, Scenario, Truth
from opstrata.demo.simulation import Progress, RunStats, Simulation, Tick

__all__ = [
    "SCENARIOS",
    "Effects",
    "Progress",
    "RunStats",
    "Scenario",
    "Simulation",
    "Tick",
    "Truth",
]
