"""POS tagging in a child process, so that it does not hold the server's GIL.

Tagging is pure Python (Punkt, the Treebank rules, the perceptron's word-by-word loop): about
3 ms of a 128-token /v1/analyze, all of it holding the GIL. Under concurrent load that
serialises requests whose forward passes (torch ops and the C kernel, which release the GIL)
could otherwise run side by side. `TaggerProcess` runs a PosTagger in a child process
(`python -m headscope.tagging.child`), which never imports torch, and talks to it over
the child's stdin and stdout in length-prefixed `marshal` frames of tuples, lists, strings and
ints (marshal rebuilds only such plain values, unlike pickle). Requests carry ids, so several
analysis threads wait on the child at once; a reader thread hands each answer to its Future.

If the child dies, the requests waiting on it fail with 503 (retry), and the next request starts
a new child. With the setting `tagger_process=false` the server tags in its own process.
"""

from __future__ import annotations

import collections
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
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from headscope.errors import NotReady, StartupError
from headscope.tagging.nltk_tagger import WordSpan

log = logging.getLogger("headscope.tagging")

FRAME_HEADER = struct.Struct("<I")
# Loading nltk and the tagger's weights takes 1-2 s; a slow or busy disk, several times that.
STARTUP_TIMEOUT_S = 120.0
# The longest text (max_tokens 512 by default) tags in well under a second; an answer this late
# means the child is stuck, and it is replaced.
ANSWER_TIMEOUT_S = 120.0
RETRY_AFTER = {"Retry-After": "1"}
# A pipe write of at most PIPE_BUF bytes is atomic (POSIX): without blocking, it goes in whole
# or not at all, so a prefetch never leaves half a frame in the stream.
PIPE_BUF = select.PIPE_BUF
# Prefetches the child holds while it has real requests to answer; older ones are dropped.
PREFETCH_BACKLOG = 64


def _write_frame(stream: IO[bytes], value: Any) -> None:
    payload = marshal.dumps(value)
    stream.write(FRAME_HEADER.pack(len(payload)) + payload)
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


class _Answer:
    """Tags on their way from the child: `result()` waits for them."""

    def __init__(self, future: Future, owner: TaggerProcess, child: _Child) -> None:
        self._future, self._owner, self._child = future, owner, child

    def result(self) -> list[str]:
        try:
            return self._future.result(timeout=self._owner.answer_timeout)
        except FutureTimeout:
            self._owner._replace(self._child, "it answered nothing for a long time")
            raise NotReady(
                "Tagging took too long; the tagger process is being restarted. Retry shortly.",
                headers=RETRY_AFTER,
            ) from None


@dataclass(eq=False)
class _Child:
    process: subprocess.Popen
    pending: dict[int, Future] = field(default_factory=dict)


class TaggerProcess:
    """A PosTagger in a child process, with PosTagger's methods the server uses.

    The constructor starts the child and returns at once, so the model can load meanwhile;
    `wait_ready()` waits for the child's tagger (StartupError, with the child's message, if it
    cannot load).
    """

    def __init__(
        self,
        cache_bytes: int,
        *,
        native_cache: Path | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_S,
        answer_timeout: float = ANSWER_TIMEOUT_S,
    ) -> None:
        self.cache_bytes = cache_bytes
        self.native_cache = native_cache
        self.startup_timeout = startup_timeout
        self.answer_timeout = answer_timeout
        self.identity: dict[str, str] = {}
        self.classes: set[str] = set()
        self._lock = threading.Lock()  # guards _child and the writes to its stdin
        self._ids = itertools.count()
        self._closed = False
        self._child: _Child | None = None
        self._starting: subprocess.Popen | None = self._spawn()

    # -- starting and stopping ---------------------------------------------------------------

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
        ready, _, _ = select.select([process.stdout], [], [], self.startup_timeout)
        hello = _read_frame(process.stdout) if ready else None
        if not (isinstance(hello, tuple) and hello and hello[0] == "ready"):
            process.kill()
            process.wait()
            if isinstance(hello, tuple) and hello and hello[0] == "failed":
                raise StartupError(hello[1])
            why = "did not start in time" if not ready else f"exited ({process.returncode})"
            raise StartupError(f"The tagger process {why}; its errors are in the log above.")
        _, self.identity, classes = hello
        self.classes = set(classes)
        child = _Child(process)
        threading.Thread(
            target=self._read_answers, args=(child,), name="tagger-answers", daemon=True
        ).start()
        return child

    def wait_ready(self) -> None:
        with self._lock:
            if self._starting is not None:
                process, self._starting = self._starting, None
                self._child = self._await_ready(process)

    def _current_child(self) -> _Child:
        """The running child, started anew if the last one died (called with _lock held)."""
        if self._closed:
            raise NotReady("The server is shutting down.", headers=RETRY_AFTER)
        if self._child is None:
            process, self._starting = self._starting or self._spawn(), None
            try:
                self._child = self._await_ready(process)
            except StartupError as err:
                raise NotReady(
                    f"The tagger process could not be restarted: {err}", headers=RETRY_AFTER
                ) from err
            log.warning("Started a new tagger process (pid %d)", self._child.process.pid)
        return self._child

    def _replace(self, child: _Child, why: str) -> None:
        log.error("Stopping the tagger process (pid %d): %s", child.process.pid, why)
        child.process.kill()  # its reader sees the end of the stream and fails what waits

    def close(self) -> None:
        """Stop the child: it exits when its stdin closes (killed if it does not)."""
        with self._lock:
            self._closed = True
            children = [self._child.process] if self._child else []
            children += [self._starting] if self._starting else []
            self._child = self._starting = None
        for process in children:
            process.stdin.close()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    @property
    def pid(self) -> int | None:
        return self._child.process.pid if self._child else None

    # -- requests ---------------------------------------------------------------------------

    def _read_answers(self, child: _Child) -> None:
        try:
            while (frame := _read_frame(child.process.stdout)) is not None:
                request_id, ok, result = frame
                future = child.pending.pop(request_id, None)
                if future is not None and ok:
                    future.set_result(result)
                elif future is not None:
                    future.set_exception(RuntimeError(f"Tagging failed in the child: {result}"))
        except (OSError, ValueError, EOFError) as err:
            log.error("Reading from the tagger process failed: %s", err)
        with self._lock:
            if self._child is child:
                self._child = None
        child.process.wait()
        if not self._closed:
            log.error("The tagger process (pid %d) stopped", child.process.pid)
        for future in list(child.pending.values()):
            future.set_exception(
                NotReady(
                    "The tagger process stopped while tagging this text; it restarts on the "
                    "next request. Retry.",
                    headers=RETRY_AFTER,
                )
            )
        child.pending.clear()

    def _submit(self, method: str, *args: Any) -> tuple[Future, _Child]:
        future: Future = Future()
        with self._lock:
            child = self._current_child()
            request_id = next(self._ids)
            child.pending[request_id] = future
            try:
                _write_frame(child.process.stdin, (request_id, method, args))
            except (OSError, ValueError):
                child.pending.pop(request_id, None)
                raise NotReady(
                    "The tagger process stopped; it restarts on the next request. Retry.",
                    headers=RETRY_AFTER,
                ) from None
        return future, child

    def submit_tag_tokens(
        self, text: str, offsets: list[tuple[int, int]], alignment: str = "overlap"
    ) -> _Answer:
        """Start tagging; the answer's `result()` is PosTagger.tag_tokens's list of tags."""
        future, child = self._submit(
            "tag_tokens", text, [tuple(pair) for pair in offsets], alignment
        )
        return _Answer(future, self, child)

    def tag_tokens(
        self, text: str, offsets: list[tuple[int, int]], alignment: str = "overlap"
    ) -> list[str]:
        return self.submit_tag_tokens(text, offsets, alignment).result()

    def cache_counts(self) -> tuple[int, int]:
        """The child's word-span cache: (hits, misses) so far."""
        future, child = self._submit("cache_counts")
        hits, misses = _Answer(future, self, child).result()
        return hits, misses

    def prefetch(self, text: str) -> bool:
        """Have the child tag the text's words now, ahead of the tag_tokens call that will ask
        for them (answered from its cache then). Called on the event loop as a request arrives,
        so that the child tags the texts queued for the analysis threads while they run forward
        passes. Never blocks and never fails: when the child is busy writing, missing, or its
        pipe is full, or the frame is too long to go in whole, it does nothing (False)."""
        if not self.cache_bytes:
            return False  # nowhere to keep the words
        frame = marshal.dumps((None, "prefetch", (text,)))
        frame = FRAME_HEADER.pack(len(frame)) + frame
        if len(frame) > PIPE_BUF or not self._lock.acquire(blocking=False):
            return False
        try:
            child = self._child
            if child is None or self._closed:
                return False
            fd = child.process.stdin.fileno()
            os.set_blocking(fd, False)
            try:
                os.write(fd, frame)  # all or nothing (<= PIPE_BUF); the writer's buffer is empty
            except OSError:  # the pipe is full (BlockingIOError), or the child is gone
                return False
            finally:
                os.set_blocking(fd, True)
            return True
        finally:
            self._lock.release()

    def word_spans(self, text: str) -> list[WordSpan]:
        future, child = self._submit("word_spans", text)
        bounds, tags = _Answer(future, self, child).result()
        return [WordSpan(start, end, tag) for (start, end), tag in zip(bounds, tags, strict=True)]


def _serve(tagger: Any, requests_fd: int, answers: IO[bytes]) -> None:
    """The child's loop: answer each request frame until stdin closes.

    Requests that a server thread waits for come first; prefetches (request id None, no answer)
    fill the time in between, oldest first, and only tag words into the cache.
    """

    def word_spans(text: str) -> tuple[list[tuple[int, int]], list[str]]:
        bounds, tags = tagger._word_span_arrays(text)
        return [tuple(pair) for pair in bounds.tolist()], list(tags)

    methods = {
        "tag_tokens": tagger.tag_tokens,
        "word_spans": word_spans,
        "prefetch": tagger._word_span_arrays,
        "cache_counts": lambda: (tagger.cache.hits, tagger.cache.misses),
    }
    reader = _FrameReader(requests_fd)
    waited_for: collections.deque = collections.deque()
    prefetches: collections.deque = collections.deque(maxlen=PREFETCH_BACKLOG)
    while (frames := reader.read(block=not (waited_for or prefetches))) is not None:
        for frame in frames:
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
