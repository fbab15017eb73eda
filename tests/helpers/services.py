"""The real services some tests need (Mosquitto, PostgreSQL, a headless browser) and one rule for when one is
missing: under CI (``CI=true``, set by .ci/run) the test FAILS, since CI must never pass by skipping; elsewhere it
skips with the install hint.

Use the marker ``@pytest.mark.needs("mosquitto", "postgres")`` (or ``pytestmark = pytest.mark.needs(...)``) on a
test or module, or call :func:`require` from a fixture; the ``broker`` fixture in tests/conftest.py does so."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.common import in_ci


def _mosquitto() -> bool:
    return shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()


def _postgres() -> bool:
    from tests.helpers.postgres import postgres_bindir

    return postgres_bindir() is not None


def _chromium() -> bool:
    from tests.helpers.browser import find_chromium

    return find_chromium() is not None


SERVICES: dict[str, tuple[Callable[[], bool], str]] = {
    "mosquitto": (_mosquitto, "Mosquitto is not installed (apt-get install mosquitto; scripts/dev.sh setup does it)"),
    "postgres": (_postgres, "PostgreSQL is not installed (apt-get install postgresql; scripts/dev.sh setup does it)"),
    "chromium": (_chromium, "no headless browser: install Debian's `chromium` (scripts/dev.sh setup does it)"),
}


def missing(why: str) -> None:
    """Fail under CI, skip elsewhere: the one rule for a missing service, venv or rig."""
    if in_ci():
        pytest.fail(f"{why} — CI must install it (.ci/run), never skip")
    pytest.skip(why, allow_module_level=True)  # also from a test module's top level


def require(*names: str) -> None:
    """Fail (CI) or skip (elsewhere) unless every named service is installed."""
    for name in names:
        if name not in SERVICES:
            raise ValueError(f"unknown service {name!r}: one of {sorted(SERVICES)}")
        available, why = SERVICES[name]
        if not available():
            missing(why)


def require_module(name: str, why: str = ""):  # noqa: ANN201
    """Import ``name`` for a test module: missing, it fails under CI and skips elsewhere (like a service)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"{name} is not installed{': ' + why if why else ''} (scripts/dev.sh setup installs it)")
