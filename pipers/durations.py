"""Durations as seconds (``10``, ``0.5``) or ``HHH:MM:SS`` (``00:05:00``)."""

from __future__ import annotations


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``12``, ``1.5``, ``MM:SS`` or ``HHH:MM:SS``; ValueError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip()
        parts = s.split(":")
        if not s or len(parts) > 3:
            raise ValueError(f"{text!r} is not a duration (seconds or HHH:MM:SS)")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"{text!r} is not a duration (seconds or HHH:MM:SS)") from None
        if any(v < 0 for v in values) or (len(parts) > 1 and any(v >= 60 for v in values[1:])):
            raise ValueError(f"{text!r}: minutes and seconds must be from 0 to 59")
        seconds = 0.0
        for v in values:
            seconds = seconds * 60 + v
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"{text!r}: a duration cannot be negative")
    return seconds
