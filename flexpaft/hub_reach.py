"""Hub lookups that fail in seconds when the hub cannot be reached.

Offline, ``datasets.load_dataset("owner/name")`` asks the hub with five retries and backoff
(about 25 s, 23 lines of "Retrying in 8s" on stderr) before it says it cannot reach it. One
quick probe of the endpoint first tells an offline machine apart; the lookup then runs in the
libraries' offline mode, so a dataset already in the local cache still loads, and one that is
not gives one line naming what to do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from flexpaft.errors import FlexpaftError

# Long enough for a slow but working network to answer a HEAD, short enough that an offline
# run stops well inside 5 s (a refused connection or an unknown host answers at once; only a
# network that drops packets waits this long).
PROBE_TIMEOUT = 3.0
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_unreachable() -> tuple[str, str] | None:
    """Why the hub cannot be asked now (offline mode, or no answer from its endpoint) and what
    would let it be asked, or None when it answers."""
    from huggingface_hub import constants

    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{name} is set", f"unset {name} to download it"
    if constants.is_offline_mode():
        return "huggingface_hub is in offline mode", "unset HF_HUB_OFFLINE to download it"
    from huggingface_hub.utils import get_session

    try:
        # Any HTTP answer, even an error status, means the hub is there to ask. No redirect
        # keyword: the session is requests' before huggingface_hub 1.0 and httpx's after, and a
        # HEAD follows no redirect in either by default.
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT)
    except Exception as e:  # httpx's connect, timeout, TLS and proxy errors, and anything else
        detail = (str(e).strip().splitlines() or [""])[0][:120]
        return (
            f"the hub at {constants.ENDPOINT} cannot be reached ({type(e).__name__}: {detail})",
            "connect to the network (or check HF_ENDPOINT)",
        )
    return None


@contextmanager
def hub_lookup(what: str, fix: str) -> Iterator[None]:
    """Run a hub lookup of ``what`` (``"dataset 'owner/name'"``) inside; any failure becomes one
    line, and an unreachable hub a quick one that says ``fix``."""
    unreachable = hub_unreachable()
    if unreachable is None:
        try:
            yield
        except FlexpaftError:
            raise
        except Exception as e:
            raise FlexpaftError(f"cannot load {what} from the hub: {_first_line(e)}") from None
        return
    why, remedy = unreachable
    kind = what.split()[0]
    with _offline_mode(), _quiet_hub_logs():
        try:
            yield
        except Exception as e:
            if isinstance(e, ConnectionError) or "offline" in str(e).lower():
                raise FlexpaftError(
                    f"cannot load {what} from the hub: {why} and the {kind} is not in the "
                    f"local cache: {remedy}, or {fix}"
                ) from None
            # The cached copy was found but something else is wrong (a split it lacks).
            raise FlexpaftError(
                f"cannot load {what} from the local cache: {_first_line(e)}"
            ) from None


@contextmanager
def _offline_mode() -> Iterator[None]:
    """huggingface_hub's and datasets' offline switches, on for the lookup only (both read them
    at call time; the environment variables were read once, at import)."""
    import datasets.config
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


@contextmanager
def _quiet_hub_logs() -> Iterator[None]:
    """No retry or cache warnings from huggingface_hub while the answer is known to be no."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
