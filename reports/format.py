"""Numbers as people read them, the same in the terminal table and the HTML page."""

from __future__ import annotations


def pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def count(n: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.1f}{suffix}"
    return f"{n:.0f}"


def judged(feedback: dict[str, int]) -> str:
    """Hits apps reported false / confirmed (POST /v1/cache/feedback)."""
    return f"{count(feedback['false_hits'])}/{count(feedback['confirmed_hits'])}"


def duration(ms: float) -> str:
    seconds = ms / 1000
    if seconds < 1:
        return f"{ms:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def usd(amount: float) -> str:
    if amount and abs(amount) < 0.01:
        return f"${amount:.4f}"
    return f"${amount:,.2f}"
