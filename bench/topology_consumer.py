"""The topology consumer alone, in one process: CPU per item on the bench's decoded requests.

    python bench/topology_consumer.py [--signal spans|logs|metrics|all] [--requests 600]
        [--group 100] [--rounds 5] [--baseline REV]

Makes ``bench/ingest.py``'s requests (100 items each, one resource per request), decodes them
with the server's decoder, and feeds them to a fresh :class:`TopologyConsumer` per round through
``consume_many``, ``--group`` batches per call, as the fan-out does under load. Prints the
process CPU time per item of each round. With ``--baseline REV`` the modules of git revision
REV (``core/topology*.py``, ``core/consumers.py``) are loaded beside the working tree's and the
two arms alternate round by round on the same batches; their learned graphs (edges, first and
last seen, per-minute call statistics, aliases) must be equal, or the bench says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from ingest import SIGNALS  # noqa: E402

from opstrata import topology, topology_consumer  # noqa: E402
from opstrata.consumers import CommittedBatch, ConsumerContext  # noqa: E402
from opstrata.otlp.decoder import Encoding, decode_request  # noqa: E402
from opstrata.otlp.limits import DecodeLimits  # noqa: E402
from opstrata.schema import Signal  # noqa: E402

_SIGNAL = {"spans": Signal.SPANS, "logs": Signal.LOG_RECORDS, "metrics": Signal.METRIC_POINTS}
_MODULES = ("consumers", "topology", "topology_spans", "topology_runs", "topology_consumer")


def load_revision(rev: str) -> types.ModuleType:
    """The topology consumer module of git revision ``rev``, with its own copies of the
    topology modules (imported under ``base_<name>``)."""
    loaded: dict[str, types.ModuleType] = {}
    for name in _MODULES:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:core/{name}.py"],
            capture_output=True,
            text=True,
            check=False,
        )
        if source.returncode:
            continue  # a module that revision did not have
        text = source.stdout
        for other in _MODULES:
            text = text.replace(f"opstrata.{other} ", f"base_{other} ")
            text = text.replace(f"opstrata.{other}\n", f"base_{other}\n")
        spec = importlib.util.spec_from_loader(f"base_{name}", loader=None)
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"base_{name}"] = module
        exec(compile(text, f"{rev}:core/{name}.py", "exec"), module.__dict__)
        loaded[name] = module
    return loaded["topology_consumer"], loaded["topology"]


def decoded_batches(signal: str, requests: int) -> list[CommittedBatch]:
    rnd = random.Random(signal)
    limits = DecodeLimits()
    batches = []
    for seq in range(1, requests + 1):
        body = SIGNALS[signal].make(rnd)
        decoded = decode_request(_SIGNAL[signal], body, Encoding.PROTOBUF, limits)
        batches.append(CommittedBatch.of(seq, decoded.batches))
    return batches


def run(consumer_module, graph_module, batches, group: int, state_dir: Path):
    consumer = consumer_module.TopologyConsumer(graph_module.TopologyGraph())
    ctx = ConsumerContext("opstrata", "topology", state_dir, lambda *_: None, None, {})
    started = time.process_time()
    for start in range(0, len(batches), group):
        consumer.consume_many(batches[start : start + group], ctx)
    return time.process_time() - started, consumer.graph


def graph_state(graph) -> tuple:
    edges = {
        (str(kind), source, target): (state.first_seen, state.last_seen, dict(state.minutes))
        for (kind, source, target), state in graph._edges.items()
    }
    return edges, dict(graph._aliases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signal", choices=[*_SIGNAL, "all"], default="all")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--group", type=int, default=100, help="batches per consume_many call")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", help="a git revision to compare with, interleaved")
    args = parser.parse_args()
    arms = {"now": (topology_consumer, topology)}
    if args.baseline:
        arms = {args.baseline: load_revision(args.baseline), **arms}
    signals = list(_SIGNAL) if args.signal == "all" else [args.signal]
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    with tempfile.TemporaryDirectory(prefix="opstrata-topology-") as tmp:
        for signal in signals:
            batches = decoded_batches(signal, args.requests)
            items = sum(batch.rows for batch in batches)
            per_item: dict[str, list[float]] = {arm: [] for arm in arms}
            graphs = {}
            for _ in range(args.rounds):
                for arm, (consumer_module, graph_module) in arms.items():
                    seconds, graph = run(
                        consumer_module, graph_module, batches, args.group, Path(tmp)
                    )
                    per_item[arm].append(seconds / items * 1e6)
                    graphs[arm] = graph_state(graph)
            print(f"{signal}: {len(batches)} requests, {items:,} items, {args.group} per call")
            for arm, values in per_item.items():
                runs = " ".join(f"{v:.2f}" for v in values)
                print(
                    f"  {arm:>10}: median {statistics.median(values):.2f} µs/item "
                    f"(min {min(values):.2f}; rounds {runs})"
                )
            states = list(graphs.values())
            if len(states) == 2:
                same = states[0] == states[1]
                print(f"  same graph as {args.baseline}: {'yes' if same else 'NO'}")
            edges = len(states[-1][0])
            print(f"  {edges} edges, {len(states[-1][1])} aliases")


if __name__ == "__main__":
    main()
