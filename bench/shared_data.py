"""Where the benchmarks find the shared test data (face photos, videos).

``$VCOUNTER_TEST_DATA``, else ``../shared/data`` beside the checkout, else the
workplace copy ``/work/shared/data``: the same places the tests look.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def find_data() -> Path:
    """The shared data folder; exits with a clear message if there is none."""
    if "VCOUNTER_TEST_DATA" in os.environ:
        return Path(os.environ["VCOUNTER_TEST_DATA"])
    for candidate in (REPO.parent / "shared" / "data", Path("/work/shared/data")):
        if candidate.is_dir():
            return candidate
    raise SystemExit("test data not found: set VCOUNTER_TEST_DATA to the shared data folder")
