"""Re-correlate the alerts of earlier evaluation runs offline, with the current incident engine.

    python bench/incidents_eval.py --seeds 1,2 --dump RUNS/     # once: keeps each run's alerts
    python bench/incidents_replay.py RUNS/*                     # then, after each engine change

A run of `bench/incidents_eval.py` spends a minute or more simulating and detecting; the
correlator and the root-cause ranking take milliseconds over its alerts. This replays each dumped
run's alerts through a fresh :class:`~opstrata.correlation.TopologyCorrelator` over the run's
saved topology, in event-time order, and scores the result as the evaluation does — so a change
to correlation or ranking is judged in seconds. It is an approximation of the live run: an alert
is replayed as its first event (at its onset) and its last one (at its last sighting), not every
event between; the detectors' output is the dumped one.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.incidents_eval import RunResult, _score, report
from opstrata.alerts import Alert, Entity
from opstrata.correlation import TopologyCorrelator
from opstrata.demo import Truth
from opstrata.topology import TopologyGraph

_NS = 1_000_000_000
_ENTITY_TEXT = re.compile(r"Entity\(kind='([^']*)', name='([^']*)'\)")


def _entity(value: object) -> Entity:
    if isinstance(value, dict):
        return Entity(value["kind"], value["name"])
    found = _ENTITY_TEXT.fullmatch(str(value))
    if found is None:
        raise ValueError(f"not an entity: {value!r}")
    return Entity(found[1], found[2])


def _truths(run: Path) -> tuple[list[Truth], int | None, int | None]:
    path = run / "run.json"
    if path.exists():
        saved = json.loads(path.read_text())
        raw, start, end = saved["truths"], saved["start_unix_nano"], saved["end_unix_nano"]
    else:  # the first dumps kept only the truths, entities as their repr
        raw, start, end = json.loads((run / "truths.json").read_text()), None, None
    truths = [
        Truth(
            scenario=t["scenario"],
            root_cause=_entity(t["root_cause"]) if t["root_cause"] else None,
            aliases=tuple(_entity(e) for e in t["aliases"]),
            onset_unix_nano=t["onset_unix_nano"],
            end_unix_nano=t["end_unix_nano"],
            affected=tuple(_entity(e) for e in t["affected"]),
            description=t["description"],
        )
        for t in raw
    ]
    return truths, start, end


def replay(run: Path, show: bool = False) -> RunResult:
    """The evaluation's score of ``run``'s alerts correlated afresh; ``show`` prints each
    incident with its alerts (how a false one came about)."""
    alerts = [msgspec.convert(a, Alert) for a in json.loads((run / "alerts.json").read_text())]
    graph = TopologyGraph()
    graph.load(run / "topology.json")
    engine = TopologyCorrelator(graph)
    # (time, order, alert, last): the first event raises the alert, the last one ends it.
    events: list[tuple[int, int, Alert, bool]] = []
    for i, alert in enumerate(alerts):
        events.append((alert.first_seen_unix_nano, 2 * i, alert, False))
        if alert.last_seen_unix_nano > alert.first_seen_unix_nano or alert.status == "resolved":
            events.append((alert.last_seen_unix_nano, 2 * i + 1, alert, True))
    events.sort(key=lambda e: (e[0], e[1]))
    final_status = {alert.id: alert.status for alert in alerts}
    live: dict[str, Alert] = {}
    seen: dict[str, object] = {}

    def keep(changes: list) -> None:
        for change in changes:
            seen[change.incident.id] = change.incident

    for at, _, alert, last in events:
        current = live.get(alert.id)
        if current is None:
            current = live[alert.id] = msgspec.structs.replace(
                alert, last_seen_unix_nano=at, status="firing", incident_id=None, events=1
            )
            keep(engine.on_alert(current, True))
        else:
            current.last_seen_unix_nano = at
            current.events = alert.events
            if last and final_status[alert.id] == "resolved":
                current.status = "resolved"
            else:
                keep(engine.on_alert(current, False))
        keep(engine.advance(at))
    seen.update(engine.incidents)
    if show:
        _show(run, seen.values(), {a.id: a for a in alerts})
    incidents = [msgspec.to_builtins(i) for i in seen.values()]
    truths, start, end = _truths(run)
    if start is None or end is None:
        start = min(a.first_seen_unix_nano for a in alerts)
        end = max(a.last_seen_unix_nano for a in alerts)
    scenario, _, seed = run.name.rpartition("-")
    raw = [msgspec.to_builtins(a) for a in alerts]
    return _score(scenario, int(seed), (end - start) / (60 * _NS), truths, 0.0, raw, incidents)


def _show(run: Path, incidents: object, alerts: dict[str, Alert]) -> None:
    for incident in sorted(incidents, key=lambda i: i.opened_unix_nano):
        if incident.merged_into:
            continue
        top = [f"{c.entity.kind}:{c.entity.name}" for c in incident.candidates[:2]]
        print(f"  {run.name} {incident.id} opened {incident.opened_unix_nano / _NS:.0f}, top {top}")
        for alert_id in incident.alert_ids:
            a = alerts[alert_id]
            lasted = (a.last_seen_unix_nano - a.first_seen_unix_nano) / _NS
            what = f"{a.plugin}/{a.kind} {a.entity.kind}:{a.entity.name}"
            print(
                f"    {a.first_seen_unix_nano / _NS:.0f}+{lasted:.0f}s {a.severity:8} {what}"
                f" {a.summary[:70]}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="directories written by --dump")
    parser.add_argument("--show", action="store_true", help="print each incident's alerts")
    args = parser.parse_args()
    results = []
    for run in sorted(args.runs):
        if not (run / "alerts.json").exists():
            continue
        result = replay(run, args.show)
        print(
            f"{result.scenario} seed {result.seed}: {result.alerts} alerts, "
            f"{result.incidents} incidents, top {result.top_candidates[:3]}, "
            f"top-1 {result.top1}, false {result.false_incidents}",
            flush=True,
        )
        results.append(result)
    print()
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
