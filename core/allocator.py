"""Arrow's memory pool settings, which must be in the environment before pyarrow loads.

Arrow's default pool here is mimalloc (``pa.default_memory_pool().backend_name``). mimalloc
hands pages freed by a pass back to the OS 10 ms later (its ``purge_delay``), so every batch of
the next pass faults fresh pages in, which the kernel must zero first: 36 % of the topology
consumer's samples under load were the kernel zeroing pages (docs/performance.md, "Ingest,
eighth round: consumers' CPU per item"). A longer delay lets the pages be reused. mimalloc
reads its options from the environment once, when it starts, and pyarrow exposes no call to
change them later; ``import opstrata`` already loads pyarrow, so ``opstrata serve`` sets the
variables it lacks and executes itself again, once, with the same arguments and process id
(``reexec_with_pool_env``). A value the user set is kept (docs/configuration.md, "Memory").
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

__all__ = ["POOL_ENV", "pool_settings", "reexec_with_pool_env"]

POOL_ENV: Mapping[str, str] = {"MIMALLOC_PURGE_DELAY": "2000"}
"""The pool settings ``opstrata serve`` runs with unless the environment sets them (the
measurements: docs/performance.md, "Ingest, ninth round: allocator and bench")."""

# mimalloc before 2.1 called purge_delay reset_delay; it still reads the old name.
_ALIASES = {"MIMALLOC_PURGE_DELAY": ("MIMALLOC_RESET_DELAY",)}


def _missing(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings of POOL_ENV that neither their name nor an older alias sets."""
    return {
        name: value
        for name, value in POOL_ENV.items()
        if name not in environ and not any(alias in environ for alias in _ALIASES.get(name, ()))
    }


def reexec_with_pool_env() -> None:
    """Execute this process again with POOL_ENV's missing variables set; return if none is
    missing (also after the re-execution) or the process cannot be re-executed.

    Only for a process started as ``opstrata serve`` from the command line: the interpreter's
    own command line (``sys.orig_argv``) is run again, so options such as ``-X`` are kept.
    """
    missing = _missing(os.environ)
    if not missing or not hasattr(os, "execve") or not getattr(sys, "orig_argv", None):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **missing})


def pool_settings() -> dict[str, str]:
    """Arrow's pool and the settings it runs with, for ``/metrics``: its backend and, for
    mimalloc, the purge delay in ms (``default`` when the environment does not set it; ``n/a``
    for another backend)."""
    import pyarrow as pa

    backend = pa.default_memory_pool().backend_name
    delay = "n/a"
    if backend == "mimalloc":
        delay = "default"
        for name in ("MIMALLOC_PURGE_DELAY", *_ALIASES["MIMALLOC_PURGE_DELAY"]):
            if name in os.environ:
                delay = os.environ[name]
                break
    return {"backend": backend, "purge_delay_ms": delay}
