"""headscope.launcher: a start that fails is an error that says why, and leaves no process behind.
The happy path is every test that starts `headscope serve` (tests/system, tests/viewer)."""

from __future__ import annotations

import contextlib
import sys

import psutil
import pytest

from headscope.launcher import ServerExited, serve_process, start_or_exit

# Stand-ins for `headscope serve` that can never become ready (they ignore the serve arguments
# appended to them), so neither test depends on how fast a real server starts.
EXITS_AT_ONCE = (sys.executable, "-c", "import sys; print('no model in /nowhere'); sys.exit(3)")
NEVER_LISTENS = (sys.executable, "-c", "import time; time.sleep(600)")


def children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def test_a_server_that_exits_before_ready_raises_with_its_code_and_output():
    with pytest.raises(ServerExited) as caught, serve_process(command=EXITS_AT_ONCE):
        pytest.fail("a process that exited was taken for a ready server")
    assert caught.value.returncode == 3
    assert "no model in /nowhere" in caught.value.output
    assert "no model in /nowhere" in str(caught.value)


def test_a_server_not_ready_in_time_is_stopped_before_the_error():
    before = children()
    with pytest.raises(TimeoutError), serve_process(command=NEVER_LISTENS, ready_timeout=0.5):
        pytest.fail("a process that never listened was taken for a ready server")
    assert children() <= before


def test_a_script_whose_server_fails_to_start_exits_saying_why():
    with contextlib.ExitStack() as stack, pytest.raises(SystemExit) as caught:
        start_or_exit(stack, serve_process(command=EXITS_AT_ONCE), "soak")
    message = str(caught.value.code)
    assert message.startswith("soak: `headscope serve` exited with code 3"), message
    assert "no model in /nowhere" in message
