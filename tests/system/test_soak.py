"""Promise 10, soak (short version): scripts/soak.py sends 600 mixed requests, 30 % malformed,
from 6 concurrent clients to a real `headscope serve` process with probes loaded: no 5xx, every
valid request answered 2xx and every malformed one 4xx, and the server's memory flat from
mid-run to the end. The full run: `python scripts/soak.py --model DIR --requests 10000`."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO, server_env


def test_short_soak(processes):
    server = processes[0]["soak"]
    soak = [sys.executable, str(REPO / "scripts" / "soak.py"), "--url", server.base_url]
    soak += ["--pid", str(server.process.pid), "--requests", "600", "--clients", "6"]
    soak += ["--max-seconds", "300", "--json"]
    result = subprocess.run(soak, env=server_env(), capture_output=True, text=True, timeout=400)
    assert result.stdout, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print("soak:", json.dumps(figures))
    assert figures["requests"] == 600, figures
    assert 120 <= figures["malformed"] <= 240, figures
    assert figures["statuses"].get("2xx", 0) >= 300, figures
    assert figures["server_errors"] == 0, figures["server_error_examples"]
    assert figures["unexpected"] == {}, figures["unexpected"]
    assert figures["rss_growth_mid_to_end"] < 0.10, figures["rss_mib"]
    assert result.returncode == 0, result.stdout
