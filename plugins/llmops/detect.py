"""Alerts from LLM calls, in event time: spikes, regressions, error bursts, prompt versions that
made things worse, budgets.

Calls are kept by event-time bucket (``alerts.bucket_seconds``) and judged per LLM model (the
requested model, so failed calls count with it) and per service once event time has moved a
whole bucket past the bucket's end (late calls still count); the tests themselves are in
:mod:`~opstrata.plugins.llmops.detect_buckets`. Budgets are checked call by call (cumulative
cost per period); a prompt version is compared with the version before it as its calls arrive
(:mod:`~opstrata.plugins.llmops.detect_prompts`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opstrata.alerts import AlertEvent, Entity, Evidence, Layer, Severity
from opstrata.plugins.llmops.config import AlertSettings, Budget
from opstrata.plugins.llmops.detect_buckets import BucketJudge, bucket_calls
from opstrata.plugins.llmops.detect_prompts import PromptVersions
from opstrata.plugins.llmops.prices import PICO

__all__ = ["CallAlerts"]

_DIMENSIONS = (("llm_model", "ModelKey"), ("service", "ServiceName"))


_KEPT = ("ServiceName", "IsError", "TraceId")
"""Columns every call's bucket needs (with the model key and the numbers); the others are made
Python values only when something reads them: strings cost a Python object per call."""
_PROMPT_COLUMNS = ("PromptName", "PromptVersion")
_BUDGET_COLUMNS = ("Model", "UserId", "SessionId")


_BUDGET_COLUMN = {"user": "UserId", "service": "ServiceName", "session": "SessionId",
                  "model": "Model"}  # fmt: skip
_EMPTY = pa.scalar("", pa.string())  # typed: a bare "" costs pyarrow a failed import
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
        self.prompts = PromptVersions(settings, emit, resource_of)
        self.names: list[str] = []  # service and model names, numbered as first seen
        self.number_of: dict[str, int] = {}

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
        requested = calls.column("RequestModel")
        asked = pc.fill_null(pc.not_equal(requested, _EMPTY), False)
        key = pc.if_else(asked, requested, calls.column("Model"))
        # Each dimension's names as numbers (few distinct names: encoded once per batch), so a
        # closing bucket groups integers instead of sorting a string per call.
        cols["ModelKeyNumber"] = self._numbers(key)
        cols["ServiceNameNumber"] = self._numbers(calls.column("ServiceName"))
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
        if self.budgets:
            self._budgets(times, cols | {name: column(name) for name in _BUDGET_COLUMNS})
        if pc.any(pc.not_equal(calls.column("PromptName"), _EMPTY)).as_py():
            self.prompts.add(times, cols | {name: column(name) for name in _PROMPT_COLUMNS})
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
        # Services numbered once per bucket: each entity's calls count theirs by number.
        services, cols["ServiceCode"] = self._sorted(cols["ServiceNameNumber"])
        for kind, column in _DIMENSIONS:
            if column == "ServiceName":
                names, codes = services, cols["ServiceCode"]
            else:
                names, codes = self._sorted(cols[column + "Number"])
            order = np.argsort(codes, kind="stable")
            ends = np.cumsum(np.bincount(codes, minlength=len(names)))
            for index, name in enumerate(names):
                rows = order[(ends[index - 1] if index else 0) : ends[index]]
                self.judge.judge(start, kind, str(name), bucket_calls(rows, cols, services))

    def _numbers(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Each value's number in :attr:`names` (new names are added)."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        encoded = pc.dictionary_encode(values, null_encoding="encode")
        # str(): as the names were read before (a null is "None").
        local = [self._number(str(name)) for name in encoded.dictionary.to_pylist()]
        return np.asarray(local, dtype=np.int64)[
            encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        ]

    def _number(self, name: str) -> int:
        number = self.number_of.get(name)
        if number is None:
            number = self.number_of[name] = len(self.names)
            self.names.append(name)
        return number

    def _sorted(self, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The distinct names of ``numbers``, sorted (a string array), and each call's index in
        them: what ``np.unique`` of the names gave, from integers."""
        distinct, inverse = np.unique(numbers, return_inverse=True)
        names = np.array([self.names[n] for n in distinct], dtype=str)
        order = np.argsort(names, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        return names[order], rank[inverse.ravel()]

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
