"""Progress lines for people running orderhub: one logger, quiet unless the CLI turns it on."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("orderhub")


def enable(verbose: bool = False) -> None:
    """Print our progress lines to stderr (stdout carries the summary)."""
    if any(getattr(h, "_orderhub", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("  %(message)s"))
    handler._orderhub = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    # Retries after 429/5xx are normal operation (the client honours Retry-After); show them
    # only when asked. A source that stays down still ends in one clear error line.
    logging.getLogger("orderhub.http").setLevel(logging.DEBUG if verbose else logging.ERROR)
    # Great Expectations announces its temporary docs folder at INFO: not our users' business.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def progress(message: str, *args: object) -> None:
    log.info(message, *args)
