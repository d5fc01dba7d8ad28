"""The process's secrets, and one redactor over everything this process logs.

A secret becomes known here the moment it enters the process (a target's secrets resolved
in tasks/config.py, the secrets a command line was given), and from then on every log
record the process creates is redacted as it is made: a log record factory, so that a
line written through any logger, Prefect's run loggers included (and with them the run's
Logs tab, the terminal, and Prefect's own "Finished in state ..." lines), cannot carry a
secret, whatever the caller remembered. URL credentials are masked in any case.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Iterable
from typing import Any

from pydantic import SecretStr

from service_health.redaction import Redactor

_lock = threading.Lock()
_secrets: set[str] = set()
_redactor = Redactor([])


def remember(secrets: Iterable[str | SecretStr | None]) -> Redactor:
    """Add secret values to those this process redacts; the redactor over all of them."""
    global _redactor
    values = {
        s.get_secret_value() if isinstance(s, SecretStr) else s for s in secrets if s is not None
    }
    values.discard("")
    with _lock:
        if not values <= _secrets:
            _secrets.update(values)
            _redactor = Redactor(_secrets)
        _install()
        return _redactor


def redactor() -> Redactor:
    """The redactor over every secret this process has met so far."""
    return _redactor


_installed = False


def _install() -> None:
    global _installed
    if _installed:
        return
    make = logging.getLogRecordFactory()

    def redacted_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        _redact(record)
        return record

    logging.setLogRecordFactory(redacted_record)
    _installed = True


def _redact(record: logging.LogRecord) -> None:
    clean = _redactor
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it; still never the args
        message, record.args = str(record.msg), ()
    text = clean.text(message)
    if text != message:
        # Formatted here, redacted; a record without secrets keeps its arguments (some
        # formatters, uvicorn's access log for one, read them).
        record.msg, record.args = text, ()
    if record.exc_info and not record.exc_text:
        # The traceback text is cached on the record, which formatters then use as is.
        record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    if record.exc_text:
        record.exc_text = clean.text(record.exc_text)
    if record.stack_info:
        record.stack_info = clean.text(record.stack_info)
