"""`headscope serve` in a child process on a free loopback port, ready when /readyz answers 200:
the one way the benchmarks, the soak and replay scripts and the tests start a real server.

    with serve_process("--model", str(model_dir), ready_timeout=120) as (base_url, process):
        httpx.get(f"{base_url}/v1/model")

A start that fails raises `ServerExited` (the process ended before it was ready, with what it
wrote to a pipe) or `TimeoutError`; either way the process is stopped before the error leaves.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import IO, TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    import psutil

HOST = "127.0.0.1"
# The checkout this interpreter has installed.
HEADSCOPE = (sys.executable, "-m", "headscope.cli")
OUTPUT_TAIL = 2000


class ServerExited(RuntimeError):
    """The server process ended before it was ready."""

    def __init__(self, returncode: int, output: str) -> None:
        message = f"`headscope serve` exited with code {returncode} before it was ready"
        if output:
            message += f"; its last output:\n{output[-OUTPUT_TAIL:]}"
        super().__init__(message)
        self.returncode = returncode
        self.output = output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def piped_output(process: subprocess.Popen) -> str:
    """What an ended process wrote to its pipes. Bounded in time: a child of the server (the
    tagger process) may still hold a pipe open."""
    try:
        stdout, stderr = process.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        return "(its output pipe is still held open by another process)"
    return "".join(part for part in (stdout, stderr) if isinstance(part, str))


def wait_until_ready(
    base_url: str,
    timeout: float = 60.0,
    process: subprocess.Popen | None = None,
    poll_interval: float = 0.1,
) -> None:
    """Return once GET /readyz answers 200; raise `ServerExited` if `process` ends first, or
    `TimeoutError` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerExited(process.returncode, piped_output(process))
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(poll_interval)
    raise TimeoutError(f"{base_url} not ready after {timeout} s")


def stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM (the server drains), then SIGKILL if it is still there after `timeout` s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def serve_process(
    *args: str,
    command: Sequence[str] = HEADSCOPE,
    env: Mapping[str, str] | None = None,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.STDOUT,
    ready_timeout: float = 60.0,
    poll_interval: float = 0.1,
    stop_timeout: float = 15.0,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`command serve --host 127.0.0.1 --port <free> *args`, ready; yields (base_url, process)
    and stops it at the end. `env` None inherits this process's environment."""
    port = free_port()
    process = subprocess.Popen(
        [*command, "serve", "--host", HOST, "--port", str(port), *args],
        env=None if env is None else dict(env),
        stdout=stdout,
        stderr=stderr,
        text=True,
    )
    base_url = f"http://{HOST}:{port}"
    try:
        wait_until_ready(base_url, ready_timeout, process, poll_interval)
        yield base_url, process
    finally:
        stop(process, stop_timeout)


def start_or_exit(
    stack: contextlib.ExitStack,
    server: AbstractContextManager[tuple[str, subprocess.Popen]],
    context: str,
) -> tuple[str, subprocess.Popen]:
    """For scripts: enter `server` (a `serve_process`) on `stack`; a start that fails ends the
    script with `context` and the reason instead of a traceback."""
    try:
        return stack.enter_context(server)
    except (ServerExited, TimeoutError) as error:
        sys.exit(f"{context}: {error}")


def total_rss(process: psutil.Process) -> int:
    """Bytes resident in a process and its children (the server's tagger process), added up: an
    upper bound, since pages they share (libraries) count twice. Needs psutil (the test and
    bench extras)."""
    import psutil

    total = process.memory_info().rss
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total
