"""`headscope serve` whose analyses are slow by design, for the drain and disconnect tests: every
analysis first waits HEADSCOPE_TEST_ANALYSIS_DELAY seconds in its pool thread, then, when
HEADSCOPE_TEST_ANALYSIS_LOG names a file, appends a line to it (so a test can count the analyses
that ran). The variables are read here only; the server itself has no such settings.

    python -m tests.system.slow_serve serve --model ... (the same arguments as headscope serve)
"""

from __future__ import annotations

import functools
import os
import sys
import time

from headscope.analysis.service import Runtime
from headscope.cli import main


def slowed(encoded, delay: float, log: str | None):
    @functools.wraps(encoded)
    def slow_encoded(self, *args, **kwargs):
        time.sleep(delay)
        if log:
            with open(log, "a") as handle:
                handle.write("analysis\n")
        return encoded(self, *args, **kwargs)

    return slow_encoded


if __name__ == "__main__":
    delay = float(os.environ["HEADSCOPE_TEST_ANALYSIS_DELAY"])
    Runtime.encoded = slowed(Runtime.encoded, delay, os.environ.get("HEADSCOPE_TEST_ANALYSIS_LOG"))
    sys.exit(main())
