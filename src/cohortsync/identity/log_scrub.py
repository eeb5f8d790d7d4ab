"""Loggers whose lines never carry an email, a phone number or a secret.

cohortsync's own loggers, and httpx's (whose INFO lines hold request URLs, which for the Graph
API carry `access_token`), get a filter that rewrites each record before any handler formats
it: the message and the traceback text are scrubbed of identifiers (`scrub_identifiers`) and
secret parameters (`access_token=…` and the like) are masked.
"""

from __future__ import annotations

import logging
import re
import traceback

from cohortsync.identity.pii import scrub_identifiers

SECRET_NAMES = ("access_token", "api_key", "api_secret", "appsecret_proof", "writeKey")
_SECRET = re.compile(rf"\b({'|'.join(SECRET_NAMES)})=[^&\s\"']+")


def scrub_line(text: str) -> str:
    """`text` with every identifier replaced and every secret parameter's value masked."""
    return scrub_identifiers(_SECRET.sub(r"\1=***", text))


class ScrubFilter(logging.Filter):
    """Rewrites a record's message and traceback text, scrubbed; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub_line(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = scrub_line(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub_line(record.stack_info)
        return True


_FILTER = ScrubFilter()


def scrubbed_logger(name: str) -> logging.Logger:
    """The logger `name`, its records scrubbed (a filter on a logger sees only the records
    logged on it, not its children's, so each logger gets its own)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
