"""``opstrata detect`` and ``opstrata templates``: the streaming code, run over a file.

``detect`` feeds the rows of a ``timestamp,value`` CSV through the same :class:`SeriesScorer`
(and so the same detector and alert rules) a live series goes through, in chunks of rows;
``templates`` feeds the lines of a log file through the same :class:`TemplateMiner`.
"""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from opstrata import Entity
from opstrata.plugins.aiops.config import AiopsConfig, parse_config
from opstrata.plugins.aiops.drain import TemplateMiner
from opstrata.plugins.aiops.engine import RobustSeasonalDetector
from opstrata.plugins.aiops.scorer import SeriesScorer
from opstrata.plugins.aiops.series import SeriesMeta

__all__ = ["detect_file", "parse_time", "templates_file"]

CHUNK = 4096


def parse_time(text: str) -> int:
    """Unix nanoseconds from RFC 3339 / ISO 8601 text (UTC if no zone) or a Unix number in
    seconds, milliseconds, microseconds or nanoseconds (told apart by size)."""
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            from datetime import UTC

            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp()) * 10**9 + moment.microsecond * 1000
    magnitude = abs(number)
    if magnitude >= 1e17:
        return int(text) if text.isdigit() else int(number)
    if magnitude >= 1e14:
        return int(number * 1e3)
    if magnitude >= 1e11:
        return int(number * 1e6)
    return round(number * 1e9)


class _Progress:
    """A progress line on stderr for long inputs (only when it is a terminal or forced)."""

    def __init__(self, total: int, what: str, out: IO[str] | None) -> None:
        self.total, self.what, self.out = total, what, out
        self.started = time.monotonic()
        self.last = 0.0

    def update(self, done: int, final: bool = False) -> None:
        if self.out is None:
            return
        now = time.monotonic()
        if not final and now - self.last < 0.5:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        share = f"{100 * done / self.total:5.1f}% " if self.total else ""
        end = "\n" if final else "\r"
        print(
            f"{self.what}: {share}{done}/{self.total} ({rate:,.0f}/s)",
            end=end,
            file=self.out,
            flush=True,
        )


def _read_series(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise ValueError(f"{path}: empty")
    header = [h.strip().lower() for h in rows[0]]
    start = 0
    t_col, v_col = 0, 1
    if "timestamp" in header or "value" in header:
        start = 1
        t_col = header.index("timestamp") if "timestamp" in header else 0
        v_col = header.index("value") if "value" in header else 1
    texts, times, values = [], [], []
    for number, row in enumerate(rows[start:], start=start + 1):
        if not row or not any(cell.strip() for cell in row):
            continue
        try:
            times.append(parse_time(row[t_col]))
            values.append(float(row[v_col]) if row[v_col].strip() else np.nan)
        except (ValueError, IndexError) as exc:
            raise ValueError(f"{path}:{number}: {exc}") from exc
        texts.append(row[t_col])
    return texts, np.array(times, np.int64), np.array(values, np.float64)


def detect_file(
    path: Path,
    output: IO[str],
    config: dict[str, Any] | None = None,
    progress: IO[str] | None = None,
) -> int:
    """Score every row of ``path``; write ``timestamp,value,anomaly_score,label`` rows."""
    settings: AiopsConfig = parse_config(dict(config or {}))
    texts, times, values = _read_series(path)
    params = {"warmup": settings.warmup, **settings.detector_params}
    scorer = SeriesScorer(settings, RobustSeasonalDetector(params), emit=lambda event: None)
    name = path.stem
    ids = scorer.registry.ids(
        [name],
        lambda i, key: SeriesMeta(
            id=0, key=key, name=name, kind="metric_anomaly", entity=Entity("metric", name)
        ),
    )
    series = np.full(times.size, ids[0], np.int64)
    writer = csv.writer(output, lineterminator="\n")
    writer.writerow(["timestamp", "value", "anomaly_score", "label"])
    meter = _Progress(times.size, "detect", progress)
    for start in range(0, times.size, CHUNK):
        end = min(start + CHUNK, times.size)
        scores, labels = scorer.feed(series[start:end], times[start:end], values[start:end])
        for i in range(start, end):
            writer.writerow(
                [
                    texts[i],
                    repr(float(values[i])),
                    repr(float(scores[i - start])),
                    int(labels[i - start]),
                ]
            )
        meter.update(end)
    meter.update(times.size, final=True)
    return times.size


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            yield line.rstrip("\r\n")


def templates_file(
    path: Path,
    output: IO[str],
    config: dict[str, Any] | None = None,
    progress: IO[str] | None = None,
) -> int:
    """Mine templates over every line of ``path``; write ``line,template_id,template`` rows
    with each line's final template (templates generalise as lines arrive)."""
    settings = parse_config(dict(config or {}))
    miner = TemplateMiner(similarity=settings.template_similarity, depth=settings.template_depth)
    total = path.stat().st_size
    meter = _Progress(total, "templates (bytes)", progress)
    ids: list[np.ndarray] = []
    done = 0
    chunk: list[str] = []
    for line in _lines(path):
        chunk.append(line)
        done += len(line) + 1
        if len(chunk) >= CHUNK:
            ids.append(miner.add(chunk))
            chunk = []
            meter.update(done)
    if chunk:
        ids.append(miner.add(chunk))
    meter.update(total, final=True)
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    writer = csv.writer(output, lineterminator="\n")
    writer.writerow(["line", "template_id", "template"])
    templates = miner.templates()
    for number, template_id in enumerate(all_ids.tolist(), start=1):
        writer.writerow([number, template_id, templates[template_id]])
    return int(all_ids.size)


def open_output(path: str | None) -> IO[str]:
    return sys.stdout if path in (None, "-") else open(path, "w", newline="")


def run_command(args: Any) -> int:
    """``opstrata detect`` / ``opstrata templates`` (arguments parsed by ``opstrata.cli``)."""
    from opstrata.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.config, {})
        config = dict(settings.plugins.get("aiops", {}))
        parse_config(config)
    except (SettingsError, ValueError) as exc:
        print(f"opstrata: {exc}", file=sys.stderr)
        return 2
    path = Path(args.input)
    if not path.is_file():
        print(f"opstrata: {path}: no such file", file=sys.stderr)
        return 2
    show = sys.stderr.isatty() if args.progress is None else args.progress
    output = open_output(args.output)
    try:
        run = detect_file if args.command == "detect" else templates_file
        run(path, output, config, sys.stderr if show else None)
    except ValueError as exc:
        print(f"opstrata: {exc}", file=sys.stderr)
        return 2
    finally:
        if output is not sys.stdout:
            output.close()
    return 0
