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


def progress(message: str, *args: object) -> None:
    log.info(message, *args)
