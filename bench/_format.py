"""Pure helpers shared by the suite (``bench/_common.py``, its terminal summary) and the report
(``bench/report.py``), which must not import ``bench._common`` before it sets its environment:
time formatting, speed-ups and the choice of each group's fastest implementation."""

from __future__ import annotations

import re

__all__ = ["BASELINES", "format_seconds", "parse_seconds", "speedups", "fastest"]

# implementations that are yardsticks, not candidates (a copy of the input: the bandwidth bound)
BASELINES = ("copy",)


def format_seconds(s: float) -> str:
    """``1.23 s``, ``4.56 ms`` or ``7.8 us``."""
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def parse_seconds(text: str) -> float:
    """Inverse of :func:`format_seconds` (to the digits printed): ``"4.56 ms"`` -> 0.00456."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*(s|ms|us)\s*", text)
    if m is None:
        raise ValueError(f"not a time as format_seconds writes it: {text!r}")
    return float(m.group(1)) * {"s": 1.0, "ms": 1e-3, "us": 1e-6}[m.group(2)]


def speedups(times: dict[str, float]) -> dict[str, tuple[float | None, float | None]]:
    """impl -> (speed-up vs the eager reference, vs torch.compile of the reference), None where not measured."""
    ref, comp = times.get("reference"), times.get("compiled_reference")
    return {impl: (ref / t if ref else None, comp / t if comp else None) for impl, t in times.items()}


def fastest(times: dict[str, float]) -> str:
    """The implementation with the smallest median among all measured ones, the eager reference
    included (so an implementation slower than eager is never "fastest"); baselines
    (:data:`BASELINES`) only when nothing else was measured."""
    candidates = {impl: t for impl, t in times.items() if impl not in BASELINES} or dict(times)
    return min(candidates, key=candidates.__getitem__)
