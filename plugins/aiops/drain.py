"""Streaming log template mining, Drain-style (He et al., ICWS 2017), over whole batches.

A line is first *masked*: ids, numbers, addresses become ``<UUID>``, ``<IP>``, ``<HEX>``,
``<NUM>``. The masking runs as a few regular-expression passes over the whole batch joined into
one string (C speed), not line by line. Masked lines already seen map to their template through
a dictionary: most lines of a real service are repeats once masked. Only the rest walk the
Drain tree — by token count, then the first ``depth - 2`` tokens — to the clusters of that leaf,
join the most similar one when at least ``similarity`` of the tokens agree (its differing
positions become ``<*>``), or start a new cluster. A cluster's id never changes as its template
generalises, so ids can be stored with every record.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

__all__ = ["TemplateMiner", "mask"]

WILDCARD = "<*>"
_SEP = "\x00"
_MASKS = (
    (
        re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"),
        "<UUID>",
    ),
    (re.compile(r"(?<![\w.:])\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?(?![\w.])"), "<IP>"),
    (
        re.compile(
            r"(?<!\w)(?:0x[0-9a-fA-F]+|(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])"
            r"[0-9a-fA-F]{8,})(?!\w)"
        ),
        "<HEX>",
    ),
    (
        re.compile(
            r"(?<![A-Za-z0-9_.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
            r"(?:ms|us|ns|s|m|h|[kKMG]i?B|B|%)?(?![A-Za-z0-9_])"
        ),
        "<NUM>",
    ),
)
_CACHE_LIMIT = 200_000


def mask(lines: list[str]) -> list[str]:
    """The lines with variable parts replaced by typed placeholders."""
    text = _SEP.join(line.replace(_SEP, " ") for line in lines) if lines else ""
    for pattern, placeholder in _MASKS:
        text = pattern.sub(placeholder, text)
    return text.split(_SEP)


def _is_variable(token: str) -> bool:
    return token.startswith("<") or any(c.isdigit() for c in token)


class TemplateMiner:
    """Templates of log lines; ``add`` a batch of lines, get one template id per line."""

    def __init__(self, similarity: float = 0.5, depth: int = 4, max_children: int = 100) -> None:
        self.similarity = similarity
        self.prefix = max(depth - 2, 1)
        self.max_children = max_children
        self.tokens: dict[int, list[str]] = {}
        self.sizes: dict[int, int] = {}
        self.tree: dict[int, dict] = {}
        self.cache: dict[str, int] = {}
        self.by_shape: dict[tuple[int, str], list[int]] = {}
        """(token count, first token) -> clusters, the fallback when the prefix path misses."""
        self.next_id = 1
        self.changed: set[int] = set()
        """Templates created or generalised since the last :meth:`take_changed`."""
        self.last_new: dict[int, int] = {}
        """Templates created by the last ``add``: id -> index of the line that created it."""

    def add(self, lines: list[str]) -> np.ndarray:
        masked = mask(lines)
        cache = self.cache
        ids = [cache.get(line, 0) for line in masked]
        self.last_new = {}
        if 0 in ids:
            if len(cache) > _CACHE_LIMIT:
                cache.clear()
            for i, cid in enumerate(ids):
                if cid == 0:
                    line = masked[i]
                    cid = cache.get(line, 0) or self._place(line.split(), i)
                    cache[line] = cid
                    ids[i] = cid
        out = np.array(ids, np.int64)
        counts = np.bincount(out)
        for cid in np.flatnonzero(counts).tolist():
            self.sizes[cid] = self.sizes.get(cid, 0) + int(counts[cid])
        return out

    def _leaf(self, tokens: list[str], create: bool) -> list[int] | None:
        node = self.tree.get(len(tokens))
        if node is None:
            if not create:
                return None
            node = self.tree[len(tokens)] = {}
        for token in tokens[: self.prefix]:
            key = WILDCARD if _is_variable(token) else token
            child = node.get(key)
            if child is None:
                child = node.get(WILDCARD)
                if child is None or (create and key != WILDCARD and len(node) < self.max_children):
                    if not create:
                        return None
                    if len(node) >= self.max_children:
                        key = WILDCARD
                    child = node.setdefault(key, {})
            node = child
        if not create and "" not in node:
            return None
        return node.setdefault("", [])

    def _best(self, candidates: list[int], tokens: list[str]) -> tuple[int, float]:
        """The most similar cluster (share of equal tokens; ties: more wildcards)."""
        best, best_sim, best_params = 0, -1.0, -1
        n = len(tokens)
        for cid in candidates:
            same = 0
            params = 0
            for a, b in zip(self.tokens[cid], tokens, strict=True):
                if a == WILDCARD:
                    params += 1
                elif a == b:
                    same += 1
            sim = same / n
            if sim > best_sim or (sim == best_sim and params > best_params):
                best, best_sim, best_params = cid, sim, params
        return best, best_sim

    def _place(self, tokens: list[str], index: int) -> int:
        if not tokens:
            tokens = [""]
        leaf = self._leaf(tokens, create=False)
        best, best_sim = self._best(leaf or [], tokens)
        shape = (len(tokens), tokens[0])
        if not (best and best_sim >= self.similarity):
            # A variable token among the first ones sends a line down another branch (plain
            # Drain then splits the template): also try the clusters of the same length and
            # first token, and file the match under this branch too.
            recent = [c for c in self.by_shape.get(shape, [])[-200:] if not leaf or c not in leaf]
            best, best_sim = self._best(recent, tokens)
            if best and best_sim >= self.similarity:
                branch = self._leaf(tokens, create=True)
                assert branch is not None
                branch.append(best)
        if best and best_sim >= self.similarity:
            template = self.tokens[best]
            merged = [a if a == b else WILDCARD for a, b in zip(template, tokens, strict=True)]
            if merged != template:
                self.tokens[best] = merged
                self.changed.add(best)
            return best
        cid = self.next_id
        self.next_id += 1
        self.tokens[cid] = list(tokens)
        self.sizes[cid] = 0
        self.changed.add(cid)
        self.last_new[cid] = index
        leaf = self._leaf(tokens, create=True)
        assert leaf is not None
        leaf.append(cid)
        self.by_shape.setdefault(shape, []).append(cid)
        return cid

    def template(self, cid: int) -> str:
        return " ".join(self.tokens.get(cid, ()))

    def templates(self) -> dict[int, str]:
        return {cid: " ".join(tokens) for cid, tokens in self.tokens.items()}

    def take_changed(self) -> set[int]:
        changed, self.changed = self.changed, set()
        return changed

    def state(self) -> dict[str, Any]:
        return {
            "next_id": self.next_id,
            "sizes": self.sizes,
            "tokens": {str(k): v for k, v in self.tokens.items()},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.tokens, self.sizes, self.tree, self.cache = {}, {}, {}, {}
        self.by_shape = {}
        for key, tokens in state.get("tokens", {}).items():
            cid = int(key)
            self.tokens[cid] = list(tokens)
            self.by_shape.setdefault((len(tokens), tokens[0] if tokens else ""), []).append(cid)
            leaf = self._leaf(self.tokens[cid], create=True)
            assert leaf is not None
            leaf.append(cid)
        self.sizes = {int(k): int(v) for k, v in state.get("sizes", {}).items()}
        self.next_id = max(int(state.get("next_id", 1)), max(self.tokens, default=0) + 1)
