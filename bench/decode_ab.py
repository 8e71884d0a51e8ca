"""Two or more builds of the C decoder (``_wire``) side by side in one process, interleaved.

    python bench/decode_ab.py OLD.so NEW.so [--rounds 21] [--signal spans logs metrics]

Build the old one from another checkout (or ``git show REV:otlp/<file>`` into a directory) with
the flags ``pip install`` uses, e.g. ``gcc -pthread -DNDEBUG -g -fwrapv -O3 -Wall -fPIC -O2
-I$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])') -shared
DIR/_wire.c -o DIR/_wire.cpython-311-x86_64-linux-gnu.so``. Every build loads as its own module
object; the rounds alternate between them (in reversed order every other round), so a busy
machine's load falls on all of them alike. The requests are ``bench/ingest.py``'s (100 items
each). Per request, CPU time of this thread, median and best round:

- ``decode``: the C decoder alone, its result dropped (its buffers freed);
- ``+import``: the same and the import of every table into a pyarrow ``RecordBatch`` (and their
  release), what ``decode_*_bytes`` does beyond a few Python lines.

Only the call's signature is assumed of a build, not the shape of its result (the position of
the capsules' addresses differs between versions).
"""

from __future__ import annotations

import argparse
import functools
import importlib.machinery
import importlib.util
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pyarrow as pa

from opstrata.otlp.decode_metrics import _TABLES as METRIC_TABLES
from opstrata.otlp.decode_traces import complex_renderer
from opstrata.otlp.limits import DecodeLimits
from opstrata.schema import LOGS, TRACES

sys.path.insert(0, str(Path(__file__).parent))
import ingest as bench_ingest  # bench/ingest.py: its request generators

_FUNCTIONS = {"spans": "decode_traces", "logs": "decode_logs", "metrics": "decode_metrics"}
_import_batch = pa.RecordBatch._import_from_c


def load(path: str) -> ModuleType:
    """One build as its own module object (extension modules are cached by file path)."""
    loader = importlib.machinery.ExtensionFileLoader("opstrata.otlp._wire", path)
    spec = importlib.util.spec_from_loader("opstrata.otlp._wire", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _import_all(signal: str, result: tuple) -> None:
    """Import what a result holds, whatever the build's tuple shape: the address follows the
    capsule (spans, logs), or each table's item is (index, capsule, address, ...)."""
    if signal == "metrics":
        for item in result[3]:
            _import_batch(item[2], METRIC_TABLES[item[0]][1])
        return
    for i, value in enumerate(result):
        if type(value).__name__ == "PyCapsule":
            _import_batch(result[i + 1], TRACES if signal == "spans" else LOGS)
            return


def parse_args(description: str, rounds: int, requests: int) -> argparse.Namespace:
    """The arguments every interleaved decoder bench takes: builds, rounds, requests, signals."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("builds", nargs="+", help="paths of _wire shared objects")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--requests", type=int, default=requests)
    parser.add_argument("--signal", nargs="+", default=list(_FUNCTIONS), choices=_FUNCTIONS)
    return parser.parse_args()


def load_builds(paths: list[str]) -> dict[str, ModuleType]:
    """Each build by a label (its index and directory), loaded side by side."""
    return {f"{i}:{Path(path).parent.name}": load(path) for i, path in enumerate(paths)}


def interleaved(
    builds: dict[str, ModuleType], rounds: int, measure: Callable[[ModuleType], float]
) -> dict[str, list[float]]:
    """``measure(build)`` of every build each round, the order reversed every other round (a
    busy machine's load falls on all of them alike); each build's figures by round."""
    times: dict[str, list[float]] = {name: [] for name in builds}
    order = list(builds.items())
    for r in range(rounds):
        for name, module in order if r % 2 == 0 else order[::-1]:
            times[name].append(measure(module))
    return times


def report(signal: str, label: str, times: dict[str, list[float]], width: int = 8) -> None:
    cells = "  ".join(
        f"{name} {statistics.median(t):6.1f} (best {min(t):6.1f})" for name, t in times.items()
    )
    print(f"{signal:<8} {label:<{width}} us/request: {cells}", flush=True)


_LIMITS = DecodeLimits()
_RENDER = complex_renderer(_LIMITS)


def decode_args() -> tuple[int, int, object]:
    """What the server passes the C decoder beside a request: its limits and renderer."""
    return _LIMITS.max_attributes, _LIMITS.max_value_chars, _RENDER


def _decode_time(
    module: ModuleType, signal: str, payloads: list[bytes], with_import: bool
) -> float:
    """µs of this thread's CPU per request decoding ``payloads`` (and importing the tables)."""
    decode, extra = getattr(module, _FUNCTIONS[signal]), decode_args()
    t0 = time.thread_time()
    for payload in payloads:
        result = decode(payload, *extra)
        if with_import:
            _import_all(signal, result)
    return (time.thread_time() - t0) / len(payloads) * 1e6


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], rounds=21, requests=200)
    builds = load_builds(args.builds)
    for signal in args.signal:
        rnd = random.Random(signal)
        payloads = [bench_ingest.SIGNALS[signal].make(rnd) for _ in range(args.requests)]
        for label, with_import in (("decode", False), ("+import", True)):
            measure = functools.partial(
                _decode_time, signal=signal, payloads=payloads, with_import=with_import
            )
            report(signal, label, interleaved(builds, args.rounds, measure))


if __name__ == "__main__":
    main()
