"""Store URLs: parsing and the options every backend understands."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ConfigError
from ..quota import DEFAULT_RESERVATION_TTL, MAX_RESERVATION_TTL

__all__ = ["URL_FORMS", "StoreURL", "parse_store_url", "redact"]

#: the store URLs accepted, in words, for error messages (one list, said once)
URL_FORMS = "memory://, sqlite:///path/to/file.db, redis://host:6379/0 or rediss://host:6379/0"

#: the largest number of seconds a URL option takes (reservation_ttl, timeout)
MAX_SECONDS = MAX_RESERVATION_TTL

# Query options and what they accept, for the error message of a typo.
COMMON_OPTIONS = {
    "tz": "an IANA timezone for the quota day, e.g. tz=Europe/Paris (default UTC)",
    "reservation_ttl": "seconds a reservation lives without max_job_duration (default 3600)",
}


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL; ``options`` holds the query string."""

    raw: str
    scheme: str
    netloc: str
    path: str
    options: dict[str, str] = field(default_factory=dict)

    def take(self, allowed: dict[str, str]) -> dict[str, str]:
        """The options, after checking each is known to the backend (common or
        ``allowed``) and that the common ones are valid: every opener calls this, so
        each refuses what the allowance opener refuses (one store_url opens them all),
        those that do not use them too (a registry, a task store, an event log)."""
        known = {**COMMON_OPTIONS, **allowed}
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            accepted = "; ".join(f"{k}: {v}" for k, v in sorted(known.items()))
            raise ConfigError(
                f"store URL {self.redacted()!r}: unknown option(s) {', '.join(unknown)}."
                f" Accepted: {accepted}"
            )
        self.check_common()
        return dict(self.options)

    def check_common(self) -> None:
        """Refuse a bad ``tz`` or ``reservation_ttl`` (a ConfigError saying which)."""
        self.tz()
        self.reservation_ttl()

    def redacted(self) -> str:
        """The URL with any password replaced, fit for messages and logs."""
        return redact(self.raw)

    def tz(self) -> tzinfo:
        name = self.options.get("tz", "")
        if not name or name.upper() == "UTC":
            return UTC
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(
                f"store URL {self.redacted()!r}: unknown timezone tz={name!r};"
                " use an IANA name such as UTC or Europe/Paris"
            ) from exc

    def reservation_ttl(self) -> float:
        return self.number("reservation_ttl", DEFAULT_RESERVATION_TTL, minimum=0.001)

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        """A number of seconds, from ``minimum`` to MAX_SECONDS (no inf: the
        expiries and deadlines made from it must stay times, and time_t)."""
        raw = self.options.get(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not minimum <= value <= MAX_SECONDS:
            raise ConfigError(
                f"store URL {self.redacted()!r}: {key}={raw!r} must be a number of seconds"
                f" >= {minimum} and <= {MAX_SECONDS:.0f}"
            )
        return value


def redact(url: str) -> str:
    """``url`` with any password replaced, fit for messages and logs; also a URL
    that does not parse (its password is whatever lies between ``user:`` and ``@``)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # an unclosed "[" of an IPv6 host, a port that is no number
        return _PASSWORD.sub(r"\1***@", url)
    if password:
        netloc = parts.netloc.replace(f":{password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


_PASSWORD = re.compile(r"(//[^/@:]*:)[^/@]*@")


def parse_store_url(url: str) -> StoreURL:
    """Split a store URL; the scheme is checked by the caller against its table."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"store URL {url!r} is not a URL: use {URL_FORMS}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": an unclosed "[" of the host
        raise ConfigError(f"store URL {redact(url)!r}: {exc}; use {URL_FORMS}") from None
    options: dict[str, str] = {}
    try:
        for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
            options[key] = value
    except ValueError as exc:  # pragma: no cover - parse_qsl is lenient
        raise ConfigError(f"store URL {url!r}: bad query string") from exc
    return StoreURL(url, parts.scheme.lower(), parts.netloc, parts.path, options)
