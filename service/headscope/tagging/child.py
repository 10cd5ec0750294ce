"""POS tagging in a child process, so that it does not hold the server's GIL.

Tagging is pure Python for the most part (Punkt, the Treebank rules, the perceptron's features)
and holds the GIL; under concurrent load that would serialise requests whose forward passes
(torch ops and the C kernel, which release the GIL) could otherwise run side by side.
`TaggerProcess` is a transport of the Tagger protocol (headscope.tagging.base) to a PosTagger in
a child process (`python -m headscope.tagging.child`), which never imports torch. They talk over
the child's stdin and stdout in length-prefixed `marshal` frames of tuples, lists, strings and
ints (marshal rebuilds only such plain values, unlike pickle). Requests carry ids, so several
threads wait on the child at once; a reader thread hands each answer to its Future.

A watcher thread pings the child every `heartbeat_interval`; the child answers a ping as soon as
it reads it, before any tagging it has queued. A ping unanswered for `hang_timeout` means the
child is stuck (stopped, or looping): it is killed, the requests waiting on it fail with 503 and
Retry-After, and the watcher starts a new child. A child that exits is replaced the same way.
Until a child answers again, `health` says so and requests fail at once with 503.
With the setting `tagger_process=false` the server tags in its own process.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import marshal
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from headscope.errors import NotReady, StartupError
from headscope.tagging.base import Alignment, TaggerHealth, WordSpan

log = logging.getLogger("headscope.tagging")

FRAME_HEADER = struct.Struct("<I")
# Loading nltk and the tagger's weights takes seconds; a slow or busy disk, several times that.
STARTUP_TIMEOUT_S = 120.0
# A child that answers pings answers requests: one text of at most max_tokens tags in far less
# than a second. The heartbeat catches a child that stops answering; this last bound only keeps
# a blocking caller from waiting forever should the watcher itself fail.
ANSWER_TIMEOUT_S = 120.0
# How often the child is pinged, and how long a ping may go unanswered before the child is taken
# for stuck. The child answers a ping between two texts, and one text takes a small fraction of
# the timeout even on a busy machine.
HEARTBEAT_INTERVAL_S = 0.5
HANG_TIMEOUT_S = 3.0
# Between attempts to start a new child when one fails to start.
RESTART_DELAY_S = 5.0
RETRY_AFTER = {"Retry-After": "1"}
# A pipe write of at most PIPE_BUF bytes is atomic (POSIX): without blocking, it goes in whole
# or not at all, so a prefetch or a ping never leaves half a frame in the stream.
PIPE_BUF = select.PIPE_BUF
# Prefetches the child holds while it has real requests to answer; older ones are dropped.
PREFETCH_BACKLOG = 64
PING_ID = -1


def _frame(value: Any) -> bytes:
    payload = marshal.dumps(value)
    return FRAME_HEADER.pack(len(payload)) + payload


def _write_frame(stream: IO[bytes], value: Any) -> None:
    stream.write(_frame(value))
    stream.flush()


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read_frame(stream: IO[bytes]) -> Any | None:
    """The next frame's value, or None at the end of the stream."""
    header = _read_exactly(stream, FRAME_HEADER.size)
    if header is None:
        return None
    payload = _read_exactly(stream, FRAME_HEADER.unpack(header)[0])
    return None if payload is None else marshal.loads(payload)


class _FrameReader:
    """Frames from a raw file descriptor: `read(block)` returns every whole frame that has
    arrived (waiting for at least one when `block`), or None at the end of the stream."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.poll = select.poll()
        self.poll.register(fd, select.POLLIN)

    def read(self, block: bool) -> list[Any] | None:
        frames = self._frames()
        while block and not frames or self.poll.poll(0):
            data = os.read(self.fd, 1 << 16)
            if not data:
                return None
            self.buffer += data
            frames += self._frames()
        return frames

    def _frames(self) -> list[Any]:
        frames, start = [], 0
        while len(self.buffer) - start >= FRAME_HEADER.size:
            (size,) = FRAME_HEADER.unpack_from(self.buffer, start)
            end = start + FRAME_HEADER.size + size
            if len(self.buffer) < end:
                break
            frames.append(marshal.loads(self.buffer[start + FRAME_HEADER.size : end]))
            start = end
        del self.buffer[:start]
        return frames


def _pipes(process: subprocess.Popen) -> tuple[IO[bytes], IO[bytes]]:
    """The child's stdin and stdout, which _spawn makes pipes."""
    assert process.stdin is not None and process.stdout is not None
    return process.stdin, process.stdout


@dataclass(eq=False)
class _Child:
    process: subprocess.Popen
    pending: dict[int, Future] = field(default_factory=dict)
    ping_since: float | None = None  # when the ping now unanswered was due
    ping_sent: bool = False  # whether that ping is in the pipe (a full pipe takes none)

    @property
    def stdin_fd(self) -> int:
        return _pipes(self.process)[0].fileno()


def _stopped_error(why: str) -> NotReady:
    return NotReady(f"The tagger process {why}; a new one is starting. Retry.", headers=RETRY_AFTER)


class TaggerProcess:
    """A PosTagger in a child process, behind the Tagger protocol.

    The constructor starts the child and returns at once, so the model can load meanwhile;
    `wait_ready()` waits for the child's tagger (StartupError, with the child's message, if it
    cannot load) and starts the watcher.
    """

    def __init__(
        self,
        cache_bytes: int,
        *,
        native_cache: Path | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_S,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        hang_timeout: float = HANG_TIMEOUT_S,
    ) -> None:
        self.cache_bytes = cache_bytes
        self.native_cache = native_cache
        self.startup_timeout = startup_timeout
        self.heartbeat_interval = heartbeat_interval
        self.hang_timeout = hang_timeout
        self.identity: dict[str, str] = {}
        self._classes: set[str] = set()
        self._lock = threading.Lock()  # guards the fields below and each child's pending/ping
        self._write_lock = threading.Lock()  # one frame at a time into the child's stdin
        self._ids = itertools.count()
        self._closed = False
        self._health: TaggerHealth = "starting"
        self._child: _Child | None = None
        self._starting: subprocess.Popen | None = self._spawn()
        self._wake = threading.Event()  # the watcher acts now: a child stopped, or close()

    @property
    def classes(self) -> set[str]:
        return self._classes

    @property
    def health(self) -> TaggerHealth:
        return self._health

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.process.pid if child else None

    # -- starting, watching and stopping children --------------------------------------------

    def _spawn(self) -> subprocess.Popen:
        package_root = str(Path(__file__).resolve().parents[2])
        python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headscope.tagging.child",
                str(self.cache_bytes),
                *([str(self.native_cache)] if self.native_cache else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": python_path},
        )

    def _await_ready(self, process: subprocess.Popen) -> _Child:
        """The started child once its tagger has loaded; StartupError if it cannot."""
        _, stdout = _pipes(process)
        ready, _, _ = select.select([stdout], [], [], self.startup_timeout)
        hello = _read_frame(stdout) if ready else None
        if not (isinstance(hello, tuple) and hello and hello[0] == "ready"):
            process.kill()
            process.wait()
            if isinstance(hello, tuple) and hello and hello[0] == "failed":
                raise StartupError(hello[1])
            why = "did not start in time" if not ready else f"exited ({process.returncode})"
            raise StartupError(f"The tagger process {why}; its errors are in the log above.")
        _, self.identity, classes = hello
        self._classes = set(classes)
        return _Child(process)

    def _install(self, child: _Child) -> bool:
        """Make `child` the one requests go to, and read its answers; False once closed."""
        with self._lock:
            if self._closed:
                return False
            self._child, self._starting, self._health = child, None, "ready"
        threading.Thread(
            target=self._read_answers, args=(child,), name="tagger-answers", daemon=True
        ).start()
        return True

    def wait_ready(self) -> None:
        """Wait for the first child, then watch it (and its successors)."""
        with self._lock:
            process = self._starting
        if process is None or self._child is not None:
            return
        try:
            child = self._await_ready(process)
        except StartupError:
            with self._lock:
                self._starting = None
            raise
        if not self._install(child):
            self._stop_process(child.process)
            return
        threading.Thread(target=self._watch, name="tagger-watcher", daemon=True).start()

    def _watch(self) -> None:
        while not self._closed:
            self._wake.wait(self.heartbeat_interval)
            self._wake.clear()
            child = self._child
            if self._closed:
                return
            if child is None:
                self._start_replacement()
            else:
                self._heartbeat(child)

    def _heartbeat(self, child: _Child) -> None:
        """Ping the child if no ping is out; replace it if the one out is overdue."""
        now = time.monotonic()
        with self._lock:
            if child.ping_since is None:
                child.ping_since, child.ping_sent = now, False
            overdue = now - child.ping_since > self.hang_timeout
        if overdue:
            self._drop(child, "unresponsive", f"answered no ping for {self.hang_timeout:g} s")
        elif not child.ping_sent:
            child.ping_sent = self._send_nowait(child, _frame((PING_ID, "ping", ())))

    def _drop(self, child: _Child, health: TaggerHealth, why: str) -> None:
        """Stop using `child` (killed if running), fail what waits on it, have it replaced."""
        with self._lock:
            if self._child is not child:
                return  # dropped already
            self._child, self._health = None, health
            waiting = list(child.pending.values())
            child.pending.clear()
        if not self._closed:
            log.error("The tagger process (pid %d) %s; starting a new one", child.process.pid, why)
        child.process.kill()  # a stopped process dies all the same
        error = _stopped_error(why)
        for future in waiting:
            future.set_exception(error)
        self._wake.set()

    def _start_replacement(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._health = "starting"
            process = self._starting = self._spawn()
        try:
            child = self._await_ready(process)
        except StartupError as err:
            with self._lock:
                self._starting = None
                if self._closed:
                    return  # close() stopped it
            log.error("A new tagger process could not start: %s", err)
            self._wake.wait(RESTART_DELAY_S)  # close() cuts it short
            return
        if self._install(child):
            log.warning("Started a new tagger process (pid %d)", child.process.pid)
        else:
            self._stop_process(child.process)

    @staticmethod
    def _stop_process(process: subprocess.Popen) -> None:
        """Close its stdin, on which it exits; kill it if it does not."""
        with contextlib.suppress(OSError):  # a broken pipe: the child is gone already
            _pipes(process)[0].close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop the child and the watcher; later requests get 503."""
        with self._lock:
            self._closed, self._health = True, "stopped"
            child, self._child = self._child, None
            starting, self._starting = self._starting, None
        self._wake.set()
        if starting is not None:
            starting.kill()
            starting.wait()
        if child is not None:
            self._stop_process(child.process)

    # -- requests ---------------------------------------------------------------------------

    def _read_answers(self, child: _Child) -> None:
        _, stdout = _pipes(child.process)
        try:
            while (frame := _read_frame(stdout)) is not None:
                request_id, ok, result = frame
                with self._lock:
                    if request_id == PING_ID:
                        child.ping_since = None
                        continue
                    future = child.pending.pop(request_id, None)
                if future is not None and ok:
                    future.set_result(result)
                elif future is not None:
                    future.set_exception(RuntimeError(f"Tagging failed in the child: {result}"))
        except (OSError, ValueError, EOFError) as err:
            log.error("Reading from the tagger process failed: %s", err)
        self._drop(child, "starting", "stopped")
        child.process.wait()

    def _ready_child(self) -> _Child:
        """The child to send to (called with _lock held); NotReady if none answers now."""
        if self._closed:
            raise NotReady("The server is shutting down.", headers=RETRY_AFTER)
        if self._child is None:
            why = "stopped answering" if self._health == "unresponsive" else "is starting"
            raise NotReady(f"The tagger process {why}. Retry shortly.", headers=RETRY_AFTER)
        return self._child

    def _submit(self, method: str, *args: Any) -> Future:
        request_id = next(self._ids)
        frame = _frame((request_id, method, args))
        future: Future = Future()
        # Running from now on, as far as concurrent.futures knows: cancel() then fails, so an
        # asyncio waiter that is cancelled (its client gone) leaves the future to the reader.
        future.set_running_or_notify_cancel()
        with self._lock:
            child = self._ready_child()
            child.pending[request_id] = future
        try:
            with self._write_lock:
                _send_all(child.stdin_fd, frame)
        except (OSError, ValueError):
            with self._lock:
                child.pending.pop(request_id, None)
            raise _stopped_error("stopped") from None
        return future

    def _send_nowait(self, child: _Child, frame: bytes) -> bool:
        """Write a frame of at most PIPE_BUF bytes whole, or nothing if that would block."""
        if len(frame) > PIPE_BUF or not self._write_lock.acquire(blocking=False):
            return False
        try:
            fd = child.stdin_fd
            os.set_blocking(fd, False)
            try:
                os.write(fd, frame)  # all or nothing (<= PIPE_BUF)
            finally:
                os.set_blocking(fd, True)
            return True
        except (OSError, ValueError):  # the pipe is full (BlockingIOError), or the child is gone
            return False
        finally:
            self._write_lock.release()

    @staticmethod
    def _result(future: Future) -> Any:
        try:
            return future.result(timeout=ANSWER_TIMEOUT_S)
        except FutureTimeout:
            raise NotReady("Tagging took too long. Retry shortly.", headers=RETRY_AFTER) from None

    def submit_tag_tokens(
        self, text: str, offsets: Sequence[tuple[int, int]], alignment: Alignment = "overlap"
    ) -> Future[list[str]]:
        return self._submit("tag_tokens", text, [tuple(pair) for pair in offsets], alignment)

    def tag_tokens(
        self, text: str, offsets: Sequence[tuple[int, int]], alignment: Alignment = "overlap"
    ) -> list[str]:
        return self._result(self.submit_tag_tokens(text, offsets, alignment))

    def word_spans(self, text: str) -> list[WordSpan]:
        bounds, tags = self._result(self._submit("word_spans", text))
        return [WordSpan(start, end, tag) for (start, end), tag in zip(bounds, tags, strict=True)]

    def cache_counts(self) -> tuple[int, int]:
        """The child's word-span cache: (hits, misses) so far."""
        hits, misses = self._result(self._submit("cache_counts"))
        return hits, misses

    def prefetch(self, text: str) -> bool:
        """Have the child tag the text's words now, ahead of the tag_tokens call that will ask
        for them (answered from its cache then). Called on the event loop as a request arrives,
        so that the child tags the texts queued for the analysis threads while they run forward
        passes. Never blocks and never fails: when another thread is writing, there is no child,
        its pipe is full or the frame too long to go in whole, it does nothing (False)."""
        if not self.cache_bytes:
            return False  # nowhere to keep the words
        child = self._child
        if child is None or self._closed:
            return False
        return self._send_nowait(child, _frame((None, "prefetch", (text,))))


def _send_all(fd: int, data: bytes) -> None:
    """Write all of `data` to a blocking file descriptor."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _serve(tagger: Any, requests_fd: int, answers: IO[bytes]) -> None:
    """The child's loop: answer each request frame until stdin closes.

    Pings are answered as soon as they are read. Requests that a server thread waits for come
    next; prefetches (request id None, no answer) fill the time in between, oldest first, and
    only tag words into the cache.
    """

    def word_spans(text: str) -> tuple[list[tuple[int, int]], list[str]]:
        bounds, tags = tagger.word_span_arrays(text)
        return [tuple(pair) for pair in bounds.tolist()], list(tags)

    methods = {
        "tag_tokens": tagger.tag_tokens,
        "word_spans": word_spans,
        "prefetch": tagger.word_span_arrays,
        "cache_counts": lambda: (tagger.cache.hits, tagger.cache.misses),
    }
    reader = _FrameReader(requests_fd)
    waited_for: collections.deque = collections.deque()
    prefetches: collections.deque = collections.deque(maxlen=PREFETCH_BACKLOG)
    while (frames := reader.read(block=not (waited_for or prefetches))) is not None:
        for frame in frames:
            if frame[0] == PING_ID:
                _write_frame(answers, (PING_ID, True, None))
            else:
                (prefetches if frame[0] is None else waited_for).append(frame)
        if not (waited_for or prefetches):
            continue
        request_id, method, args = (waited_for or prefetches).popleft()
        try:
            answer = (request_id, True, methods[method](*args))
        except Exception as err:  # noqa: BLE001 - reported to the request that waits for it
            answer = (request_id, False, f"{type(err).__name__}: {err}")
        if request_id is not None:
            _write_frame(answers, answer)


def main() -> int:
    # Ctrl-C in a terminal reaches the whole process group, and systemd (or `timeout`) sends
    # SIGTERM to every process of the service: the server decides when this child stops (by
    # closing its stdin), after the analyses in flight have their tags. If the server dies, its
    # end of the pipe closes and the child exits all the same.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt frames
    logging.basicConfig(level=logging.INFO, format="tagger process: %(levelname)s %(message)s")
    try:
        from headscope.tagging.nltk_tagger import PosTagger

        native_cache = Path(sys.argv[2]) if len(sys.argv) > 2 else None
        tagger = PosTagger(cache_bytes=int(sys.argv[1]), native_cache=native_cache)
    except StartupError as err:
        _write_frame(answers, ("failed", str(err)))
        return 1
    except Exception as err:  # noqa: BLE001 - any load failure is reported to the server
        _write_frame(answers, ("failed", f"The tagger could not load: {type(err).__name__}: {err}"))
        return 1
    _write_frame(answers, ("ready", tagger.identity, sorted(tagger.classes)))
    _serve(tagger, sys.stdin.fileno(), answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
