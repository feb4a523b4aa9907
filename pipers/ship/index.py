"""Which index a message goes to: a template over its fields and its time.

``monitoring-{type}-{date:%Y.%m.%d}`` takes ``type`` from the message and
formats ``date`` (the message's time, UTC) with strftime codes. Nested fields
are reached with dots (``{meta.kind}``). A message that lacks a field of the
template, or whose field is not a string or number, goes to the default index.
The name is lower-cased (the search engine refuses capitals); anything else it
refuses comes back as a per-document 400 and the message goes to ``errors/``.

The message's time must be the same on every send, or a resend after a crash
could land in another day's index and duplicate the document. So it is, in
order: the ``--time-field`` value (epoch seconds or milliseconds, or ISO 8601),
the creation time encoded in the message name (kept through the whole chain),
and the file's modification time (kept by renames).
"""

from __future__ import annotations

import string
from datetime import UTC, datetime
from typing import Any

DATE = "date"  # the template field that stands for the message's time
_SCALARS = (str, int, float)
_MS_THRESHOLD = 1e11  # larger epoch numbers are milliseconds (year 5138 in seconds)


class TemplateError(ValueError):
    pass


class _Formatter(string.Formatter):
    def get_field(self, field_name: str, args, kwargs) -> tuple[Any, str]:
        if field_name == DATE:
            return kwargs[DATE], field_name
        value: Any = kwargs["message"]
        for part in field_name.split("."):
            if not isinstance(value, dict) or part not in value:
                raise KeyError(field_name)
            value = value[part]
        if isinstance(value, _Probe):
            return _AnyValue(), field_name
        if isinstance(value, bool) or not isinstance(value, _SCALARS):
            raise KeyError(field_name)
        return value, field_name


_FORMATTER = _Formatter()


def template_fields(template: str) -> list[str]:
    """The field names a template uses; TemplateError when it does not parse."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as e:
        raise TemplateError(f"index template {template!r}: {e}") from None
    fields = []
    for _, field, _, conversion in parsed:
        if field is None:
            continue
        if not field or field.isdigit():
            raise TemplateError(f"index template {template!r}: fields need names, e.g. {{type}}")
        if "[" in field:
            raise TemplateError(f"index template {template!r}: use dots for nested fields")
        if conversion:
            raise TemplateError(f"index template {template!r}: no !{conversion} conversions")
        fields.append(field)
    return fields


def parse_time(value: Any) -> float | None:
    """Epoch seconds from a number (seconds or milliseconds) or an ISO 8601 string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        t = float(value)
        return t / 1000.0 if abs(t) > _MS_THRESHOLD else t
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    return None


class IndexNamer:
    """``namer(message, fallback_time) -> index name``."""

    def __init__(self, template: str | None, default: str, time_field: str | None = None):
        if not default:
            raise TemplateError("the default index cannot be empty")
        self.template = template or None
        self.default = default.lower()
        self.time_field = time_field or None
        self.fields = template_fields(self.template) if self.template else []
        self.uses_date = DATE in self.fields
        if self.template:  # fail at start-up, not per message, on a bad date format
            try:
                _FORMATTER.vformat(self.template, (), {
                    "message": _Probe(), DATE: datetime.fromtimestamp(0, UTC)
                })
            except (ValueError, TypeError) as e:
                raise TemplateError(f"index template {self.template!r}: {e}") from None
        self._date_cache: tuple[int, datetime] | None = None

    def message_time(self, message: dict, fallback: float) -> float:
        if self.time_field:
            value: Any = message
            for part in self.time_field.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            t = parse_time(value)
            if t is not None:
                return t
        return fallback

    def __call__(self, message: dict, fallback_time: float) -> str:
        if not self.template:
            return self.default
        kwargs: dict[str, Any] = {"message": message}
        if self.uses_date:
            t = self.message_time(message, fallback_time)
            try:
                kwargs[DATE] = datetime.fromtimestamp(t, UTC)
            except (OverflowError, OSError, ValueError):
                return self.default
        try:
            name = _FORMATTER.vformat(self.template, (), kwargs)
        except (KeyError, ValueError, TypeError, IndexError):
            return self.default
        return name.lower() or self.default


class _AnyValue(str):
    """A field value that takes any format spec (only the date's spec is checked)."""

    def __format__(self, spec: str) -> str:
        return "x"


class _Probe(dict):
    """Stands for any message while a template is checked at start-up."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: Any) -> Any:
        return self

    def __format__(self, spec: str) -> str:
        return "x"
