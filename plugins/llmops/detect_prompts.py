"""A prompt version that made things worse: each new version of a prompt template is compared
with the version before it (by first call, event time) with the same tests as the bucket alerts
(:mod:`~opstrata.plugins.llmops.detect_stats`): its calls against the previous version's, per
call, for latency, tokens, cost and failures — significant (``alerts.p_value``) and large (the
settings' factors). A version is looked at again as its calls arrive, until it is found worse
or has ``_ENOUGH`` calls without being so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from opstrata.alerts import AlertEvent, Entity, Evidence, Layer, Severity
from opstrata.plugins.llmops.config import AlertSettings
from opstrata.plugins.llmops.detect_stats import error_p, upper_tail_p
from opstrata.plugins.llmops.prices import PICO

__all__ = ["PromptVersions"]

_SAMPLE = 2048
"""Calls kept per version (the first ones), for the per-call tests."""
_ENOUGH = 500
"""Calls after which a version found no worse is not looked at again."""
_DURATION, _TOKENS, _COST, _ERROR = range(4)
_PER_CALL = (("tokens_per_call", _TOKENS, 1), ("cost_per_call_usd", _COST, PICO))


@dataclass
class _Version:
    first_seen: int
    calls: int = 0
    parts: list[np.ndarray] = field(default_factory=list)
    """``(4, n)`` arrays: duration ms, tokens, cost (pico-USD), failed (0/1) of each call."""
    kept: int = 0
    exemplars: list[str] = field(default_factory=list)
    service: str = ""
    judged: bool = False

    def values(self) -> np.ndarray:
        return np.concatenate(self.parts, axis=1) if self.parts else np.zeros((4, 0))


class PromptVersions:
    """Feed it each batch's calls; it emits ``prompt_regression`` through ``emit``."""

    def __init__(
        self,
        settings: AlertSettings,
        emit: Callable[[AlertEvent], None],
        resource_of: Callable[[str], dict[str, str]],
    ) -> None:
        self.settings = settings
        self.emit = emit
        self.resource_of = resource_of
        self.prompts: dict[str, dict[str, _Version]] = {}

    def add(self, times: np.ndarray, cols: dict[str, np.ndarray]) -> None:
        names = cols["PromptName"]
        rows = np.flatnonzero(names != "")
        if len(rows) == 0:
            return
        prompts, prompt_codes = np.unique(names[rows].astype(str), return_inverse=True)
        versions, version_codes = np.unique(
            cols["PromptVersion"][rows].astype(str), return_inverse=True
        )
        pairs, codes = np.unique(prompt_codes * len(versions) + version_codes, return_inverse=True)
        order = np.argsort(codes, kind="stable")
        ends = np.cumsum(np.bincount(codes, minlength=len(pairs)))
        values = np.stack([cols["duration"], cols["tokens"], cols["cost"],
                           cols["IsError"]]).astype(np.float64)  # fmt: skip
        touched: set[str] = set()
        for index, pair in enumerate(pairs):
            group = rows[order[(ends[index - 1] if index else 0) : ends[index]]]
            prompt, version = (
                str(prompts[pair // len(versions)]),
                str(versions[pair % len(versions)]),
            )
            first = int(times[group].min())
            entry = self.prompts.setdefault(prompt, {}).setdefault(version, _Version(first))
            entry.first_seen = min(entry.first_seen, first)
            entry.calls += len(group)
            if entry.kept < _SAMPLE:
                entry.parts.append(values[:, group[: _SAMPLE - entry.kept]])
                entry.kept += min(len(group), _SAMPLE - entry.kept)
            worst = group[np.argsort(-(values[_DURATION, group] + values[_ERROR, group] * 1e12))]
            entry.exemplars = (entry.exemplars + [str(t) for t in cols["TraceId"][worst[:3]]])[:3]
            entry.service = entry.service or str(cols["ServiceName"][group[0]])
            touched.add(prompt)
        for prompt in touched:
            self._judge(prompt)

    def _findings(self, before: np.ndarray, after: np.ndarray) -> dict[str, tuple[float, ...]]:
        """What got worse: name -> (after, before, p-value)."""
        s = self.settings
        found: dict[str, tuple[float, ...]] = {}
        b95, a95 = np.percentile(before[_DURATION], 95), np.percentile(after[_DURATION], 95)
        if b95 > 0 and a95 >= s.latency_factor * b95:
            p = upper_tail_p(before[_DURATION], after[_DURATION])
            if p <= s.p_value:
                found["p95_latency_ms"] = (a95, b95, p)
        b_err, a_err = before[_ERROR].mean(), after[_ERROR].mean()
        if a_err >= max(s.error_rate, 2 * b_err):
            p = error_p(int(after[_ERROR].sum()), after.shape[1], float(before[_ERROR].sum()),
                        float(before.shape[1]))  # fmt: skip
            if p <= s.p_value and after[_ERROR].sum() >= s.min_errors:
                found["error_rate"] = (a_err, b_err, p)
        for name, at, scale in (
            ("tokens_per_call", _TOKENS, 1),
            ("cost_per_call_usd", _COST, PICO),
        ):
            b_mean, a_mean = before[at].mean(), after[at].mean()
            if b_mean > 0 and a_mean >= s.per_call_factor * b_mean:
                p = upper_tail_p(before[at], after[at])
                if p <= s.p_value:
                    found[name] = (a_mean / scale, b_mean / scale, p)
        return found

    def _judge(self, prompt: str) -> None:
        s = self.settings
        ordered = sorted(self.prompts[prompt].items(), key=lambda kv: kv[1].first_seen)
        for (previous, before), (version, after) in pairwise(ordered):
            if after.judged or min(after.calls, before.calls) < s.prompt_min_calls:
                continue
            findings = self._findings(before.values(), after.values())
            if not findings:
                after.judged = after.calls >= _ENOUGH
                continue
            after.judged = True
            first, (observed, expected, _) = next(iter(findings.items()))
            observed, expected = float(observed), float(expected)
            self.emit(
                AlertEvent(
                    time_unix_nano=after.first_seen,
                    kind="prompt_regression",
                    layer=Layer.LLMOPS,
                    entity=Entity("prompt", prompt),
                    summary=f"prompt {prompt} version {version} is worse than {previous}: "
                    + ", ".join(f"{k} {a:.4g} vs {b:.4g}" for k, (a, b, _) in findings.items()),
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
                            "calls": after.calls,
                            "previous_calls": before.calls,
                            "findings": {
                                k: [float(a), float(b)] for k, (a, b, _) in findings.items()
                            },
                            "p_values": {k: float(p) for k, (_, _, p) in findings.items()},
                        },
                    ),
                )
            )
