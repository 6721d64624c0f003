"""The process's open-files limit: every streaming client holds a socket."""

from __future__ import annotations

import logging
import resource

logger = logging.getLogger(__name__)


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (worker processes inherit it); says so
    in the log and returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as exc:
            logger.warning("could not raise the open-files limit from %d: %s", soft, exc)
    logger.info(
        "open-files limit: %d (hard limit %s)",
        soft,
        "unlimited" if hard == resource.RLIM_INFINITY else hard,
        extra={"action": "open_files_limit"},
    )
    return soft
