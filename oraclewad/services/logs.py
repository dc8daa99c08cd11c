"""JSON-lines logging for child processes: one object per line on stdout, secrets scrubbed.

Every line carries `ts` (RFC 3339 UTC, ms), `level`, `channel`, `msg`, `tenant`, `service`, plus the
`extra={...}` fields of the call. The daemon splits the stream into per-channel files by `channel`.
Services log through `channel_logger("webhook")` (logger `oraclewad.services.webhook`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit, urlunsplit

ROOT = "oraclewad.services"
LEVELS = ("debug", "info", "warning", "error", "critical")

# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName",
}
# Third-party loggers mapped onto channels; everything else lands in "runtime".
_FOREIGN_CHANNELS = {"hypercorn": "http"}
# Shorter strings would blank out ordinary words if a test or dev config used them as passwords.
_MIN_SECRET_LEN = 4
_SECRET_KEY = re.compile(r"pass|secret|token|key|dsn|credential", re.IGNORECASE)
# Compiled at import: in the fork template, so no forked child compiles it again.
_DSN_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def channel_logger(channel: str) -> logging.Logger:
    return logging.getLogger(f"{ROOT}.{channel}")


def channel_of(logger_name: str) -> str:
    if logger_name.startswith(ROOT + "."):
        return logger_name[len(ROOT) + 1:].split(".", 1)[0]
    return _FOREIGN_CHANNELS.get(logger_name.split(".", 1)[0], "runtime")


class Redactor:
    """Replaces known secret strings (raw and JSON-escaped forms) with '***'."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._needles: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            if not isinstance(secret, str) or len(secret) < _MIN_SECRET_LEN:
                continue
            for form in (secret, json.dumps(secret)[1:-1]):
                if form not in self._needles:
                    self._needles.append(form)
        # Longest first, so a secret containing another is replaced whole.
        self._needles.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, "***")
        return text


class JsonFormatter(logging.Formatter):
    def __init__(self, static: Mapping[str, Any], redact: Redactor) -> None:
        super().__init__()
        self.static = static  # by reference: the runtime fills in the tenant once the config is read
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        obj: dict[str, Any] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "channel": channel_of(record.name),
            "msg": record.getMessage(),
            **self.static,
        }
        if not record.name.startswith(ROOT):
            obj["logger"] = record.name
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                obj[key] = value
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return self.redact(json.dumps(obj, default=str, ensure_ascii=False))


def setup_logging(static: Mapping[str, Any], redact: Redactor, level: str = "info",
                  stream: TextIO | None = None) -> None:
    """Route every logger (ours and third-party) to stdout as JSON; stderr keeps raw tracebacks."""
    handler = logging.StreamHandler(stream or sys.stdout)  # flushes after each record
    handler.setFormatter(JsonFormatter(static, redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("hypercorn.access").disabled = True  # requests are logged by our middleware
    logging.captureWarnings(True)
    _install_excepthook(redact)


def _install_excepthook(redact: Redactor) -> None:
    # Uncaught exceptions stay plain tracebacks on stderr (the daemon keeps raw stderr), minus secrets.
    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        sys.stderr.write(redact("".join(traceback.format_exception(kind, value, tb))))
        sys.stderr.flush()

    sys.excepthook = hook


def secrets_in(config: Any, key: str = "") -> list[str]:
    """Every string in `config` that must not be logged: values under secret-looking keys, and the
    passwords inside DSNs/URLs anywhere."""
    found: list[str] = []
    if isinstance(config, Mapping):
        for k, v in config.items():
            found += secrets_in(v, str(k))
    elif isinstance(config, list):
        for v in config:
            found += secrets_in(v, key)
    elif isinstance(config, str):
        password = _password_of(config)
        if password:
            found += [password, unquote(password)]  # URLs may percent-encode it
        if _SECRET_KEY.search(key) and not _looks_like_url(config):
            found.append(config)
    return found


def _looks_like_url(value: str) -> bool:
    return "://" in value


def _password_of(value: str) -> str | None:
    if _looks_like_url(value):
        try:
            return urlsplit(value).password
        except ValueError:
            return None
    match = _DSN_PASSWORD.search(value)
    if match:
        return match.group(1).strip("'")
    return None


def redact_url(value: str) -> str:
    """A DSN or URL fit for logs: the password replaced by '***' (key=value DSNs too)."""
    if _looks_like_url(value):
        try:
            parts = urlsplit(value)
        except ValueError:
            return "<unparseable url>"
        if parts.password is not None:
            netloc = parts.netloc.rsplit("@", 1)
            userinfo = netloc[0].split(":", 1)[0]
            parts = parts._replace(netloc=f"{userinfo}:***@{netloc[1]}")
        # The query string can carry a password too (?password=...): drop its values.
        query = re.sub(r"(password|secret|token)=[^&]*", r"\1=***", parts.query, flags=re.IGNORECASE)
        return urlunsplit(parts._replace(query=query))
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", value)
