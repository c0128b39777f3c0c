"""Is the dataset hub usable? One decision shared by zero-shot tasks and perplexity texts."""

from __future__ import annotations

import functools
import os
import urllib.request

HUB_PROBE = "/api/datasets/allenai/ai2_arc"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick HTTP request to the dataset hub (honours HF_ENDPOINT), made once per endpoint and process:
    ``hywia eval`` asks for its perplexity texts and again for its tasks."""
    return _probe(os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/"), timeout)


@functools.cache
def _probe(endpoint: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(endpoint + HUB_PROBE, timeout=timeout) as response:
            return response.status == 200
    except Exception:  # no network, DNS failure, proxy refusal, HTTP error: all mean "not reachable"
        return False


def decide_offline(mode: str = "auto") -> tuple[bool, str]:
    """``offline`` / ``online`` force; ``auto`` reads HF_DATASETS_OFFLINE / HF_HUB_OFFLINE, then probes the hub.

    Returns (offline?, why) -- the reason is printed next to the results.
    """
    if mode == "offline":
        return True, "--offline"
    if mode == "online":
        return False, "--online"
    for variable in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if _truthy(os.environ.get(variable)):
            return True, f"{variable}={os.environ[variable]}"
    if hub_reachable():
        return False, "hub reachable"
    return True, "hub not reachable"
