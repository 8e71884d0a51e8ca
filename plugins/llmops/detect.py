"""Alerts from LLM calls, in event time: spikes, regressions, error bursts, prompt versions that
made things worse, budgets.

Calls are kept by event-time bucket (``alerts.bucket_seconds``) and judged per LLM model (the
requested model, so failed calls count with it) and per service once event time has moved a
whole bucket past the bucket's end (late calls still count); the tests themselves are in
:mod:`~opstrata.plugins.llmops.detect_buckets`. Budgets are checked call by call (cumulative
cost per period); a prompt version is compared with the version before it as soon as both have
enough calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import pyarrow as pa

from opstrata.alerts import AlertEvent, Entity, Evidence, Layer, Severity
from opstrata.plugins.llmops.config import AlertSettings, Budget
from opstrata.plugins.llmops.detect_buckets import BucketJudge, bucket_calls
from opstrata.plugins.llmops.prices import PICO

__all__ = ["CallAlerts"]

_SAMPLE = 2048  # latencies kept per prompt version, for percentiles
_DIMENSIONS = (("llm_model", "ModelKey"), ("service", "ServiceName"))


_KEPT = ("Model", "RequestModel", "ServiceName", "IsError", "TraceId", "PromptName",
         "PromptVersion", "UserId", "SessionId")  # fmt: skip


@dataclass
class _Version:
    first_seen: int
    calls: int = 0
    errors: int = 0
    tokens: int = 0
    cost: int = 0
    durations: list[np.ndarray] = field(default_factory=list)
    exemplars: list[str] = field(default_factory=list)
    service: str = ""
    judged: bool = False


def _p95(parts: list[np.ndarray]) -> float:
    values = np.concatenate(parts) if parts else np.zeros(0)
    return float(np.percentile(values, 95)) if len(values) else 0.0


_BUDGET_COLUMN = {"user": "UserId", "service": "ServiceName", "session": "SessionId",
                  "model": "Model"}  # fmt: skip
_PERIOD_UNIT = {"hour": "h", "day": "D", "month": "M"}


def _period_starts(times: np.ndarray, period: str) -> np.ndarray:
    """Start (Unix ns, UTC) of the hour, day or calendar month of each time."""
    unit = _PERIOD_UNIT[period]
    return (
        times.astype("datetime64[ns]")
        .astype(f"datetime64[{unit}]")
        .astype("datetime64[ns]")
        .astype(np.int64)
    )


class CallAlerts:
    """Feed it each batch of calls (costs filled in); it emits through ``emit``."""

    def __init__(
        self,
        settings: AlertSettings,
        budgets: list[Budget],
        emit: Callable[[AlertEvent], None],
        resource_of: Callable[[str], dict[str, str]],
    ) -> None:
        self.settings = settings
        self.budgets = budgets
        self.emit = emit
        self.resource_of = resource_of
        self.bucket_ns = settings.bucket_seconds * 1_000_000_000
        self.now = 0
        self.open: dict[int, list[dict[str, np.ndarray]]] = {}
        self.judge = BucketJudge(settings, emit, resource_of, tuple(k for k, _ in _DIMENSIONS))
        self.spent: dict[tuple[int, str, int], int] = {}
        self.prompts: dict[str, dict[str, _Version]] = {}

    # -- intake -------------------------------------------------------------------------------

    def add(self, calls: pa.Table) -> None:
        """Keep a batch's calls with their bucket (column slices, no per-call work); buckets
        are summed when they close, budgets and prompt versions are updated now."""
        if calls.num_rows == 0:
            return

        def column(name: str) -> np.ndarray:
            return calls.column(name).to_numpy(zero_copy_only=False)

        cols = {name: column(name) for name in _KEPT}
        # The model the call asked for: a failed call has no response model, and must count
        # with the calls that succeeded (else a model's failures form an entity of their own).
        requested = cols.pop("RequestModel")
        cols["ModelKey"] = np.where((requested != "") & (requested != None), requested,  # noqa: E711
                                    cols["Model"])  # fmt: skip
        cols["IsError"] = cols["IsError"].astype(bool)
        cols["cost"] = calls.column("CostPicoUsd").fill_null(0).to_numpy(zero_copy_only=False)
        cols["tokens"] = calls.column("TotalTokens").fill_null(0).to_numpy(zero_copy_only=False)
        cols["duration"] = column("Duration") / 1e6
        ttft = calls.column("Ttft").cast(pa.float64()).fill_null(np.nan)
        cols["ttft"] = ttft.to_numpy(zero_copy_only=False) / 1e6
        times = calls.column("Timestamp").cast(pa.int64()).to_numpy(zero_copy_only=False)
        buckets = times // self.bucket_ns * self.bucket_ns
        first, last = int(buckets.min()), int(buckets.max())
        if first == last:
            self.open.setdefault(first, []).append(cols)
        else:
            for bucket in np.unique(buckets):
                rows = buckets == bucket
                self.open.setdefault(int(bucket), []).append({k: v[rows] for k, v in cols.items()})
        self._budgets(times, cols)
        self._prompts(times, cols)
        self.now = max(self.now, int(times.max()))
        self._close_buckets()

    def _close_buckets(self) -> None:
        for start in sorted(self.open):
            if start + 2 * self.bucket_ns > self.now:
                break
            self._close(start, self.open.pop(start))

    def flush(self) -> None:
        """Judge every open bucket (at shutdown)."""
        for start in sorted(self.open):
            self._close(start, self.open.pop(start))

    def _close(self, start: int, parts: list[dict[str, np.ndarray]]) -> None:
        cols = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
        for kind, column in _DIMENSIONS:
            names, codes = np.unique(cols[column].astype(str), return_inverse=True)
            order = np.argsort(codes, kind="stable")
            ends = np.cumsum(np.bincount(codes, minlength=len(names)))
            for index, name in enumerate(names):
                rows = order[(ends[index - 1] if index else 0) : ends[index]]
                self.judge.judge(start, kind, str(name), bucket_calls(rows, cols))

    # -- budgets --------------------------------------------------------------------------------

    def _budgets(self, times: np.ndarray, cols: dict[str, np.ndarray]) -> None:
        """Cumulative cost per budgeted name and period; the call that crosses the limit is the
        onset. Sums are per (name, period) group of the batch, in time order, column-wise."""
        if not self.budgets:
            return
        cost = cols["cost"]
        for number, budget in enumerate(self.budgets):
            names = cols[_BUDGET_COLUMN[budget.kind]]
            chosen = (cost > 0) & (names != "")
            if budget.name != "*":
                chosen &= names == budget.name
            rows = np.flatnonzero(chosen)
            if len(rows) == 0:
                continue
            periods = _period_starts(times[rows], budget.period)
            _, codes = np.unique(
                np.char.add(names[rows].astype(str), periods.astype(str)), return_inverse=True
            )
            order = np.lexsort((times[rows], codes))
            rows, codes, periods = rows[order], codes[order], periods[order]
            running = np.cumsum(cost[rows])
            starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
            limit = round(budget.usd * PICO)
            for at, end in zip(starts, np.r_[starts[1:], len(rows)], strict=True):
                name, period = str(names[rows[at]]), int(periods[at])
                key = (number, name, period)
                before = self.spent.get(key, 0)
                base = running[at - 1] if at else 0
                totals = before + running[at:end] - base
                self.spent[key] = int(totals[-1])
                if before > limit or totals[-1] <= limit:
                    continue
                first_over = int(np.argmax(totals > limit))
                crossing = rows[at + first_over]
                self._emit_budget(budget, name, period, int(times[crossing]),
                                  int(totals[first_over]), cols, crossing)  # fmt: skip

    def _emit_budget(self, budget: Budget, name: str, period: int, time: int, spent: int,
                     cols: dict[str, np.ndarray], row: int) -> None:  # fmt: skip
        self.emit(
            AlertEvent(
                time_unix_nano=time,
                kind="budget_exceeded",
                layer=Layer.LLMOPS,
                entity=Entity(budget.kind, name),
                summary=f"{budget.kind} {name} spent over ${budget.usd:g} this {budget.period}",
                severity=Severity.ERROR,
                score=1.0,
                resource=self.resource_of(str(cols["ServiceName"][row])),
                key=f"llmops/budget_exceeded/{budget.kind}/{name}/{period}",
                evidence=Evidence(
                    series=f"USD per {budget.period}",
                    observed=spent / PICO,
                    upper=budget.usd,
                    exemplar_trace_ids=[str(cols["TraceId"][row])],
                    details={"period_start_unix_nano": period},
                ),
            )
        )

    # -- prompt versions ------------------------------------------------------------------------

    def _prompts(self, times: np.ndarray, cols: dict[str, np.ndarray]) -> None:
        cost, tokens, duration = cols["cost"], cols["tokens"], cols["duration"]
        errors = cols["IsError"]
        names = cols["PromptName"]
        with_prompt = np.flatnonzero(names != "")
        if len(with_prompt) == 0:
            return
        versions = cols["PromptVersion"]
        touched: set[str] = set()
        pairs: dict[tuple[str, str], list[int]] = {}
        for row in with_prompt:
            pairs.setdefault((str(names[row]), str(versions[row])), []).append(int(row))
        for (prompt, version), listed in pairs.items():
            rows = np.array(listed)
            known = self.prompts.setdefault(prompt, {})
            entry = known.get(version)
            if entry is None:
                entry = known[version] = _Version(first_seen=int(times[rows].min()))
            entry.first_seen = min(entry.first_seen, int(times[rows].min()))
            entry.calls += len(rows)
            entry.errors += int(errors[rows].sum())
            entry.tokens += int(tokens[rows].sum())
            entry.cost += int(cost[rows].sum())
            if sum(len(d) for d in entry.durations) < _SAMPLE:
                entry.durations.append(duration[rows])
            worst = rows[np.argsort(-(duration[rows] + errors[rows] * 1e12))]
            entry.exemplars = (entry.exemplars + [str(t) for t in cols["TraceId"][worst[:3]]])[:3]
            entry.service = entry.service or str(cols["ServiceName"][rows[0]])
            touched.add(prompt)
        for prompt in touched:
            self._judge_prompt(prompt)

    def _judge_prompt(self, prompt: str) -> None:
        s = self.settings
        ordered = sorted(self.prompts[prompt].items(), key=lambda kv: kv[1].first_seen)
        for (_, before), (version, after) in pairwise(ordered):
            if after.judged or after.calls < s.prompt_min_calls:
                continue
            if before.calls < s.prompt_min_calls:
                continue
            after.judged = True
            findings = {}
            p_before, p_after = _p95(before.durations), _p95(after.durations)
            if p_before and p_after > s.latency_factor * p_before:
                findings["p95_latency_ms"] = (p_after, p_before)
            e_before, e_after = before.errors / before.calls, after.errors / after.calls
            if e_after > max(s.error_rate, 2 * e_before):
                findings["error_rate"] = (e_after, e_before)
            t_before, t_after = before.tokens / before.calls, after.tokens / after.calls
            if t_before and t_after > s.latency_factor * t_before:
                findings["tokens_per_call"] = (t_after, t_before)
            c_before, c_after = before.cost / before.calls / PICO, after.cost / after.calls / PICO
            if c_before and c_after > s.latency_factor * c_before:
                findings["cost_per_call_usd"] = (c_after, c_before)
            if not findings:
                continue
            first, pair = next(iter(findings.items()))
            observed, expected = float(pair[0]), float(pair[1])
            previous = next(v for v, e in ordered if e is before)
            self.emit(
                AlertEvent(
                    time_unix_nano=after.first_seen,
                    kind="prompt_regression",
                    layer=Layer.LLMOPS,
                    entity=Entity("prompt", prompt),
                    summary=f"prompt {prompt} version {version} is worse than {previous}: "
                    + ", ".join(f"{k} {a:.4g} vs {b:.4g}" for k, (a, b) in findings.items()),
                    severity=Severity.WARNING,
                    score=min(1.0, observed / (observed + expected)) if expected else 1.0,
                    resource=self.resource_of(after.service),
                    key=f"llmops/prompt_regression/prompt/{prompt}/{version}",
                    evidence=Evidence(
                        series=first,
                        observed=observed,
                        expected=expected,
                        exemplar_trace_ids=after.exemplars,
                        details={
                            "version": version,
                            "previous_version": previous,
                            "findings": {k: [float(a), float(b)] for k, (a, b) in findings.items()},
                        },
                    ),
                )
            )
