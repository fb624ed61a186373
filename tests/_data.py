"""The one rule for tests that need the shared data (../shared/data beside the repository).

Missing data skips the test with the path in the reason, except under
``SR_DEPLOY_REQUIRE_DATA=1`` (set by `.ci/run`): then it fails, so that CI can never pass with
part of the suite skipped for want of data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REQUIRE_DATA = os.environ.get("SR_DEPLOY_REQUIRE_DATA", "") not in ("", "0")


def missing(reason: str) -> None:
    """Skip (or, with SR_DEPLOY_REQUIRE_DATA=1, fail) the current test for data that is not there."""
    if REQUIRE_DATA:
        pytest.fail(f"{reason} (SR_DEPLOY_REQUIRE_DATA=1: missing data is a failure)", pytrace=False)
    pytest.skip(reason)


def need(path: Path, what: str = "real test data") -> Path:
    """`path` when it exists; else `missing`."""
    if not path.exists():
        missing(f"{what} not found at {path} (../shared/data beside the repository)")
    return path
