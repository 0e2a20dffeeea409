"""What the panel says about a model call's results (Qt-free): the status line after a prompt, and the doubts that
head the panel's draft report. The wording is the engine's (``medvlsam2.cli.segment.not_found_line``,
``medvlsam2.plausibility.vet.withheld``, ``medvlsam2.report.writer``), so the panel and the CLI say the same thing.
"""

from __future__ import annotations

from typing import Iterable

from medvlsam2.cli.segment import not_found_line
from medvlsam2.plausibility.vet import withheld
from medvlsam2.report.writer import MARK


def warnings_of(found: Iterable) -> list[str]:
    """The delivered results' warnings (clicks outside the mask, box too small, unverified, out of domain), once each."""
    return list(dict.fromkeys(w for r in found for w in (getattr(r, "warnings", None) or []) if w))


def status_line(found: Iterable = (), not_found: Iterable = ()) -> str:
    """"Not delivered: 'X': why; ..." for targets the checks withheld, "Not found: X (reason); ..." for targets the
    model said are absent, "⚠ warning; ..." for the delivered results' warnings; "" when there is nothing to say."""
    not_found = list(not_found)
    held = [not_found_line(n) for n in not_found if withheld(n)]
    absent = [f"{n.target} ({n.reason})" for n in not_found if not withheld(n)]
    warnings = warnings_of(found)
    parts = ([f"Not delivered: {'; '.join(held)}"] if held else []) + \
            ([f"Not found: {'; '.join(absent)}"] if absent else []) + \
            ([f"{MARK} {'; '.join(warnings)}"] if warnings else [])
    return " | ".join(parts)


def not_delivered(not_found: Iterable) -> list[str]:
    """Report warnings for the targets the checks withheld (as ``medvlsam2 report`` words them)."""
    return [f"not delivered: {not_found_line(n)}" for n in not_found if withheld(n)]
