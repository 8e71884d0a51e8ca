"""How well alerts become incidents: every demo fault scenario over several seeds, plus normal days.

    python bench/incidents_eval.py [--scenarios all|a,b] [--seeds 1,2,3] [--normal-hours 24]
        [--warmup 40] [--fault 20] [--rate 3] [--normal-rate 3] [--json OUT.json]
        [--dump DIR]

Each run starts a fresh `opstrata serve` (every built-in plugin) on a temporary data directory,
sends the demo environment's telemetry (real OTLP through the OpenTelemetry SDK, simulated time,
as fast as the server takes it), waits until every consumer has caught up, then reads the alerts
and incidents back through the HTTP API and scores them against the scenario's ground truth:

- raw alert events, alerts after dedup, incidents (merged ones not counted);
- dedup compression 1 - alerts/events, correlation compression 1 - incidents/alerts, overall
  1 - incidents/events;
- the *fault incident* (the incident holding most alerts that began inside the fault window on
  entities the fault affects):
  root cause top-1 / top-3 of the ranking and of the jump baseline beside it, and the simulated
  time from the fault's first effect to that incident being open (confirmed) with an alert of
  the fault;
- false incidents: every other incident, per simulated day.

Results go to stdout as a markdown table (and to --json); docs/aiops.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opstrata.alerts import Entity
from opstrata.demo import SCENARIOS, Simulation, Truth
from tests.serverproc import ServerProcess

_NS = 1_000_000_000
_DAY = 86_400 * _NS


@dataclass
class RunResult:
    scenario: str
    seed: int
    simulated_minutes: float
    wall_seconds: float
    events: int
    alerts: int
    incidents: int
    fault_incident: bool
    top1: bool
    top3: bool
    baseline_top1: bool
    baseline_top3: bool
    detect_seconds: float | None
    false_incidents: int
    top_candidates: list[str]


def _pages(client: httpx.Client, path: str, key: str) -> list[dict]:
    found: list[dict] = []
    cursor = None
    while True:
        params = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        response = client.get(path, params=params)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:500]}")
        body = response.json()
        found += body[key]
        cursor = body.get("next_cursor")
        if not cursor:
            return found


def _caught_up(client: httpx.Client) -> bool:
    plugins = client.get("/api/v1/plugins").json()
    return all(c["lag"] == 0 for p in plugins for c in p["consumers"])


def _entity(candidate: dict) -> Entity:
    return Entity(candidate["entity"]["kind"], candidate["entity"]["name"])


def _score(scenario: str, seed: int, minutes: float, truths: list[Truth], wall: float,
           alerts: list[dict], incidents: list[dict]) -> RunResult:  # fmt: skip
    incidents = [i for i in incidents if not i.get("merged_into")]
    by_id = {a["id"]: a for a in alerts}
    fault_incidents: set[str] = set()
    top1 = top3 = base1 = base3 = False
    detect: float | None = None
    tops: list[str] = []
    for truth in truths:
        assert truth.onset_unix_nano is not None and truth.end_unix_nano is not None
        start, end = truth.onset_unix_nano - 60 * _NS, truth.end_unix_nano

        def inside(incident: dict, lo: int = start, hi: int = end) -> int:
            return sum(
                1 for alert_id in incident["alert_ids"]
                if alert_id in by_id and lo <= by_id[alert_id]["first_seen_unix_nano"] < hi
            )  # fmt: skip

        affected = {truth.root_cause, *truth.aliases, *truth.affected}

        def on_affected(
            incident: dict, lo: int = start, hi: int = end, wanted: set = affected
        ) -> int:
            return sum(
                1 for alert_id in incident["alert_ids"]
                if alert_id in by_id and lo <= by_id[alert_id]["first_seen_unix_nano"] < hi
                and _entity(by_id[alert_id]) in wanted
            )  # fmt: skip

        # The fault's incident carries the fault's symptoms: alerts on the entities it affects.
        ranked = sorted(incidents, key=lambda i: (-on_affected(i), -inside(i)))
        if not ranked or inside(ranked[0]) == 0:
            continue
        chosen = ranked[0]
        fault_incidents.add(chosen["id"])
        names = [_entity(c) for c in chosen["candidates"]]
        base = [_entity(c) for c in chosen.get("baseline_candidates", [])]
        top1 |= bool(names) and truth.matches(names[0])
        top3 |= any(truth.matches(e) for e in names[:3])
        base1 |= bool(base) and truth.matches(base[0])
        base3 |= any(truth.matches(e) for e in base[:3])
        tops += [f"{e.kind}:{e.name}" for e in names[:3]]
        # Shown to a user once it is open (confirmed) and holds an alert of the fault.
        first = min(
            by_id[a]["first_seen_unix_nano"] for a in chosen["alert_ids"]
            if a in by_id and by_id[a]["first_seen_unix_nano"] >= start
        )  # fmt: skip
        opened = min(
            (e["time_unix_nano"] for e in chosen.get("timeline", []) if e["what"] == "opened"),
            default=first,
        )
        delay = max(0, max(first, opened) - truth.onset_unix_nano) / _NS
        detect = delay if detect is None else max(detect, delay)
    events = sum(a["events"] for a in alerts)
    return RunResult(
        scenario=scenario, seed=seed,
        simulated_minutes=minutes,
        wall_seconds=round(wall, 1), events=events, alerts=len(alerts), incidents=len(incidents),
        fault_incident=bool(fault_incidents) or not truths, top1=top1, top3=top3,
        baseline_top1=base1, baseline_top3=base3, detect_seconds=detect,
        false_incidents=len([i for i in incidents if i["id"] not in fault_incidents]),
        top_candidates=tops,
    )  # fmt: skip


def run_one(scenario: str, seed: int, args: argparse.Namespace) -> RunResult:
    normal = scenario == "normal"
    duration = args.normal_hours * 60 if normal else args.warmup + args.fault
    sim = Simulation(
        scenario=scenario, seed=seed, speed=0.0, warmup_minutes=args.warmup,
        duration_minutes=duration, rate=args.normal_rate if normal else args.rate,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="opstrata-eval-") as tmp:
        server = ServerProcess(Path(tmp) / "data").start()
        try:
            began = time.monotonic()
            sim.run(server.grpc_endpoint)
            with httpx.Client(base_url=server.api_base, timeout=60) as client:
                deadline = time.monotonic() + 600
                while not _caught_up(client) and time.monotonic() < deadline:
                    time.sleep(1)
                time.sleep(3)  # the alert book folds the last events
                alerts = _pages(client, "/api/v1/alerts", "alerts")
                incidents = _pages(client, "/api/v1/incidents", "incidents")
            wall = time.monotonic() - began
        finally:
            server.stop()
        if args.dump is not None:
            _dump(args.dump / f"{scenario}-{seed}", server.data_dir, sim, alerts, incidents)
    minutes = (sim.end_unix_nano - sim.start_unix_nano) / (60 * _NS)
    return _score(scenario, seed, minutes, sim.truths, wall, alerts, incidents)


def _dump(into: Path, data_dir: Path, sim: Simulation, alerts: list[dict],
          incidents: list[dict]) -> None:  # fmt: skip
    """What a run produced, for re-correlating offline (bench/incidents_replay.py)."""
    into.mkdir(parents=True, exist_ok=True)
    (into / "alerts.json").write_text(json.dumps(alerts))
    (into / "incidents.json").write_text(json.dumps(incidents))
    (into / "run.json").write_text(json.dumps({
        "start_unix_nano": sim.start_unix_nano, "end_unix_nano": sim.end_unix_nano,
        "truths": [asdict(t) for t in sim.truths],
    }, default=msgspec.to_builtins))  # fmt: skip
    topology = data_dir / "incidents" / "topology.json"
    if topology.exists():
        (into / "topology.json").write_text(topology.read_text())


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "-"


def report(results: list[RunResult]) -> str:
    lines = [
        "| scenario | runs | events | alerts | incidents | dedup | correlation | overall "
        "| top-1 | top-3 | baseline top-1 | baseline top-3 | detect (s, max) | false inc. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario in dict.fromkeys(r.scenario for r in results):
        rs = [r for r in results if r.scenario == scenario]
        ev, al, inc = (sum(getattr(r, k) for r in rs) for k in ("events", "alerts", "incidents"))
        faulty = scenario != "normal"
        delays = [r.detect_seconds for r in rs if r.detect_seconds is not None]
        lines.append(
            f"| {scenario} | {len(rs)} | {ev} | {al} | {inc} | {_pct(ev - al, ev)} "
            f"| {_pct(al - inc, al)} | {_pct(ev - inc, ev)} "
            + (
                f"| {sum(r.top1 for r in rs)}/{len(rs)} | {sum(r.top3 for r in rs)}/{len(rs)} "
                f"| {sum(r.baseline_top1 for r in rs)}/{len(rs)} "
                f"| {sum(r.baseline_top3 for r in rs)}/{len(rs)} "
                f"| {max(delays) if delays else '-'} "
                if faulty
                else "| - | - | - | - | - "
            )
            + f"| {sum(r.false_incidents for r in rs)} |"
        )
    fault_runs = [r for r in results if r.scenario != "normal"]
    days = sum(r.simulated_minutes for r in results if r.scenario == "normal") / 1440
    false_normal = sum(r.false_incidents for r in results if r.scenario == "normal")
    ev, al, inc = (
        sum(getattr(r, k) for r in fault_runs) for k in ("events", "alerts", "incidents")
    )
    runs = len(fault_runs)

    def share(key: str) -> str:
        return _pct(sum(getattr(r, key) for r in fault_runs), runs)

    lines += [
        "",
        f"Fault runs: {runs}; top-1 {share('top1')}, top-3 {share('top3')} "
        f"(baseline {share('baseline_top1')} / {share('baseline_top3')}); "
        f"compression: dedup {_pct(ev - al, ev)}, correlation {_pct(al - inc, al)}, "
        f"overall {_pct(ev - inc, ev)}.",
    ]
    if days:
        lines.append(f"Normal traffic: {false_normal} incidents over {days:.2f} simulated days "
                     f"({false_normal / days:.2f} per day).")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="all")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--normal-hours", type=float, default=24.0)
    parser.add_argument("--warmup", type=float, default=40.0, help="simulated minutes before")
    parser.add_argument("--fault", type=float, default=20.0, help="simulated minutes of fault")
    parser.add_argument("--rate", type=float, default=3.0, help="requests per simulated second")
    parser.add_argument("--normal-rate", type=float, default=3.0,
                        help="requests per simulated second of the normal day (sparser traffic "
                        "is noisier: fewer requests behind each percentile)")  # fmt: skip
    parser.add_argument("--json", type=Path)
    parser.add_argument("--dump", type=Path, help="keep each run's alerts, incidents, truths "
                        "and topology under this directory")  # fmt: skip
    args = parser.parse_args()
    names = (
        [n for n in SCENARIOS if n != "normal"]
        if args.scenarios == "all"
        else args.scenarios.split(",")
    )
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    for name in names:
        for seed in seeds if name != "normal" else seeds[:1]:
            result = run_one(name, seed, args)
            print(
                f"{name} seed {seed}: {result.events} events, {result.alerts} alerts, "
                f"{result.incidents} incidents, top {result.top_candidates[:3]}, "
                f"top-1 {result.top1}, detect {result.detect_seconds} s, "
                f"{result.wall_seconds} s",
                flush=True,
            )
            results.append(result)
    if args.normal_hours > 0 and "normal" not in names:
        result = run_one("normal", seeds[0], args)
        print(f"normal: {result.incidents} incidents, {result.wall_seconds} s", flush=True)
        results.append(result)
    print()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
