"""`headscope serve` whose analyses are slow by design, for the drain tests: every analysis first
waits HEADSCOPE_TEST_ANALYSIS_DELAY seconds in its pool thread. The variable is read here only;
the server itself has no such setting.

    python -m tests.system.slow_serve serve --model ... (the same arguments as headscope serve)
"""

from __future__ import annotations

import functools
import os
import sys
import time

from headscope.analysis.service import Runtime
from headscope.cli import main

DELAY_VARIABLE = "HEADSCOPE_TEST_ANALYSIS_DELAY"


def slowed(encoded, delay: float):
    @functools.wraps(encoded)
    def slow_encoded(self, *args, **kwargs):
        time.sleep(delay)
        return encoded(self, *args, **kwargs)

    return slow_encoded


if __name__ == "__main__":
    Runtime.encoded = slowed(Runtime.encoded, float(os.environ[DELAY_VARIABLE]))
    sys.exit(main())
