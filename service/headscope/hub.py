"""Hugging Face hub lookups that answer within seconds: the local cache first, then the network
only when it is allowed and reachable, and one message naming what to set when neither works.

huggingface_hub on a machine without network retries each request before giving up, so an
offline start used to spend tens of seconds per file. Here, a lookup the cache can answer never
touches the network; `HF_HUB_OFFLINE=1` (or `HEADSCOPE_OFFLINE=1`) stops at the cache; otherwise
the hub's host must accept a connection within REACH_SECONDS before huggingface_hub is asked.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from headscope.errors import StartupError

REACH_SECONDS = 2.0
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HEADSCOPE_OFFLINE")


def _set(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def offline() -> bool:
    return any(_set(name) for name in OFFLINE_VARIABLES)


def _cache_folder() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def reachable(url: str, seconds: float = REACH_SECONDS) -> bool:
    """Whether `url`'s host accepts a TCP connection within `seconds`, name lookup included
    (getaddrinfo has no timeout of its own, so the attempt runs in a thread we stop waiting for)."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    outcome: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((parsed.hostname, port), timeout=seconds):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(seconds)
    return bool(outcome and outcome[0])


def _unavailable(what: str, why: str, fix: str) -> StartupError:
    return StartupError(f"Could not get {what} from the Hugging Face hub: {why}. {fix}")


def _check_network(what: str, fix: str) -> None:
    if offline():
        names = " and ".join(f"{name}=1" for name in OFFLINE_VARIABLES if _set(name))
        raise _unavailable(
            what,
            f"offline ({names}) and not in the Hugging Face cache "
            f"({_cache_folder()}; HF_HOME moves it)",
            fix,
        )
    endpoint = _endpoint()
    if not reachable(endpoint):
        raise _unavailable(
            what,
            f"{endpoint} is not reachable within {REACH_SECONDS:g} s and it is not in the cache "
            f"({_cache_folder()}). Set HF_HUB_OFFLINE=1 to use the cache only",
            fix,
        )


def snapshot(repo_id: str, allow_patterns: list[str], fix: str) -> Path:
    """A model repository's folder: from the cache, else downloaded."""
    from huggingface_hub import snapshot_download

    what = f"'{repo_id}'"
    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=allow_patterns, local_files_only=True)
        )
    except Exception:  # noqa: BLE001 - not (wholly) cached: try the network below
        pass
    _check_network(what, fix)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    except Exception as err:  # noqa: BLE001 - every hub failure becomes one clear message
        detail = str(err).splitlines()[0] if str(err) else "no detail"
        raise _unavailable(what, f"{type(err).__name__}: {detail}", fix) from err


def dataset_file(repo_id: str, filename: str, fix: str) -> Path:
    """One file of a dataset repository: from the cache, else downloaded."""
    from huggingface_hub import hf_hub_download

    what = f"{repo_id}/{filename}"
    try:
        return Path(hf_hub_download(repo_id, filename, repo_type="dataset", local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: try the network below
        pass
    _check_network(what, fix)
    try:
        return Path(hf_hub_download(repo_id, filename, repo_type="dataset"))
    except Exception as err:  # noqa: BLE001 - every hub failure becomes one clear message
        detail = str(err).splitlines()[0] if str(err) else "no detail"
        raise _unavailable(what, f"{type(err).__name__}: {detail}", fix) from err
