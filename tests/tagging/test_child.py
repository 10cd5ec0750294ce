"""The tagger's child process: the same tags as tagging in the server process, and what happens
when the child fails to start, dies, hangs or is stopped: its heartbeat, its replacement, and
the requests that were waiting on it."""

from __future__ import annotations

import marshal
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from headscope.errors import NotReady, StartupError
from headscope.tagging.base import Tagger
from headscope.tagging.child import TaggerProcess
from headscope.tagging.nltk_tagger import PosTagger
from tests.helpers import CORPUS

ODD_TEXTS = [
    'Tom said, "I like the lake." Then he ran.',
    "``Quoted'' and \u201ccurly\u201d -- (parens) can't won't. Mr. Smith's dog.",
    "caf\u00e9 \U0001f642 \u65e5\u672c 12,000 $3.88",
    " \n ",
    "x" * 500,
]


def offsets_of(text: str) -> list[tuple[int, int]]:
    """Some character spans over the text (tokens of 1-5 characters), as a tokenizer gives."""
    spans, start = [], 0
    while start < len(text):
        end = min(len(text), start + 1 + start % 5)
        spans.append((start, end))
        start = end
    return spans


@pytest.fixture(scope="module")
def in_process():
    return PosTagger(cache_bytes=0)


@pytest.fixture(scope="module")
def child():
    tagger = TaggerProcess(cache_bytes=2**20)
    tagger.wait_ready()
    yield tagger
    tagger.close()


def sample_texts(count: int) -> list[str]:
    paragraphs = [p.strip() for p in CORPUS.read_text().split("\n\n") if p.strip()]
    return paragraphs[:: len(paragraphs) // count][:count]


def test_both_taggers_are_the_protocol(child, in_process):
    for tagger in (child, in_process):
        assert isinstance(tagger, Tagger)
        assert tagger.health == "ready"
    offsets = [(0, 2), (2, 8), (8, 9)]
    answer = in_process.submit_tag_tokens("Hi there.", offsets)  # done at once, in this process
    assert answer.done() and answer.result() == in_process.tag_tokens("Hi there.", offsets)


def test_the_child_tags_as_the_server_process_does(child, in_process):
    assert child.identity == in_process.identity
    assert child.classes == in_process.classes
    for text in sample_texts(40) + ODD_TEXTS:
        offsets = offsets_of(text)
        for alignment in ("overlap", "paper"):
            assert child.tag_tokens(text, offsets, alignment) == in_process.tag_tokens(
                text, offsets, alignment
            )
        assert child.word_spans(text) == in_process.word_spans(text)


def test_answers_come_back_to_the_request_that_asked(child, in_process):
    texts = sample_texts(12)
    answers = [child.submit_tag_tokens(text, offsets_of(text)) for text in texts]
    # Each answer comes back to the future that asked, whatever the order they finish in.
    for text, answer in zip(reversed(texts), reversed(answers), strict=True):
        assert answer.result() == in_process.tag_tokens(text, offsets_of(text))


def test_the_child_never_loads_torch(child):
    with open(f"/proc/{child.pid}/maps") as maps:
        assert "libtorch" not in maps.read()


def test_a_dead_child_fails_its_waiting_requests_and_is_replaced(in_process):
    tagger = TaggerProcess(cache_bytes=0)
    tagger.wait_ready()
    try:
        first = tagger.pid
        long_text = "The dog ran to the park and saw a big red ball. " * 400
        waiting = tagger.submit_tag_tokens(long_text, offsets_of(long_text))
        os.kill(first, signal.SIGKILL)
        with pytest.raises(NotReady) as stopped:
            waiting.result()
        assert stopped.value.status_code == 503 and stopped.value.headers["Retry-After"]
        wait_for(lambda: tagger.health == "ready")  # the watcher started a new one
        text = ODD_TEXTS[0]
        assert tagger.tag_tokens(text, offsets_of(text)) == in_process.tag_tokens(
            text, offsets_of(text)
        )
        assert tagger.pid not in (None, first)
    finally:
        tagger.close()


def test_a_stopped_child_misses_its_heartbeat_and_is_replaced(in_process):
    tagger = TaggerProcess(cache_bytes=0, heartbeat_interval=0.05, hang_timeout=0.5)
    tagger.wait_ready()
    try:
        stuck = tagger.pid
        os.kill(stuck, signal.SIGSTOP)
        text = ODD_TEXTS[1]
        waiting = tagger.submit_tag_tokens(text, offsets_of(text))
        with pytest.raises(NotReady, match="answered no ping") as hung:
            waiting.result(timeout=60)  # failed by the watcher, not by this timeout
        assert hung.value.status_code == 503 and hung.value.headers["Retry-After"]
        # Killed (a stopped process dies all the same), and until a new child answers,
        # requests fail at once instead of waiting.
        wait_for(lambda: not _alive(stuck))
        while tagger.health != "ready":
            try:
                tagger.submit_tag_tokens(text, offsets_of(text))
            except NotReady as refused:
                assert refused.headers["Retry-After"]
            time.sleep(0.01)
        assert tagger.tag_tokens(text, offsets_of(text)) == in_process.tag_tokens(
            text, offsets_of(text)
        )
        assert tagger.pid != stuck
    finally:
        tagger.close()


def test_the_child_answers_pings_before_the_tagging_it_has_queued(in_process):
    """A busy child is not taken for a stuck one: a ping read with queued texts goes first."""
    from headscope.tagging.child import PING_ID, _read_frame, _serve

    texts = sample_texts(4)
    requests_read, requests_write = os.pipe()
    answers_read, answers_write = os.pipe()
    for request_id, text in enumerate(texts):
        os.write(requests_write, marshal_frame((request_id, "tag_tokens", (text, [], "overlap"))))
    os.write(requests_write, marshal_frame((PING_ID, "ping", ())))
    answers = os.fdopen(answers_write, "wb")
    serving = threading.Thread(target=_serve, args=(in_process, requests_read, answers))
    serving.start()  # with every frame already in the pipe
    try:
        with os.fdopen(answers_read, "rb") as stream:
            order = [_read_frame(stream)[0] for _ in range(5)]
    finally:
        os.close(requests_write)
        serving.join(timeout=60)
        answers.close()
        os.close(requests_read)
    assert order == [PING_ID, 0, 1, 2, 3]


def test_a_cancelled_wait_leaves_the_answer_to_the_reader(child, in_process):
    """asyncio cancels the future it wraps when its waiter is cancelled (a client gone, a drain
    timeout): the tagger's futures refuse that, so its reader thread can still answer them."""
    text = sample_texts(3)[2]
    answer = child.submit_tag_tokens(text, offsets_of(text))
    assert not answer.cancel()
    assert answer.result() == in_process.tag_tokens(text, offsets_of(text))
    assert child.health == "ready"


def test_the_child_outlives_signals_meant_for_the_server_and_its_death(in_process):
    """SIGTERM/SIGINT sent to the whole service (systemd, Ctrl-C) leave the child to the server,
    which stops it after draining; a server that dies takes its child along."""
    tagger = TaggerProcess(cache_bytes=0)
    tagger.wait_ready()
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            os.kill(tagger.pid, signum)
        time.sleep(0.2)
        text = ODD_TEXTS[0]
        assert tagger.tag_tokens(text, offsets_of(text)) == in_process.tag_tokens(
            text, offsets_of(text)
        )
    finally:
        tagger.close()
    orphan_script = (
        "import os, sys; from headscope.tagging.child import TaggerProcess; "
        "t = TaggerProcess(0); t.wait_ready(); print(t.pid, flush=True); os._exit(0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", orphan_script], capture_output=True, text=True, timeout=120
    )
    orphan = int(result.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(orphan):
        time.sleep(0.05)
    assert not _alive(orphan), "the child outlived its server"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_close_stops_the_child_and_refuses_later_requests():
    tagger = TaggerProcess(cache_bytes=0)
    tagger.wait_ready()
    pid = tagger.pid
    tagger.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert tagger.health == "stopped"
    with pytest.raises(NotReady, match="shutting down"):
        tagger.tag_tokens("Hi.", [(0, 3)])


def test_missing_tagger_data_fails_the_start_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("NLTK_DATA", str(tmp_path))
    monkeypatch.setenv("HEADSCOPE_OFFLINE", "1")
    tagger = TaggerProcess(cache_bytes=0)
    with pytest.raises(StartupError, match="averaged_perceptron_tagger_eng"):
        tagger.wait_ready()
    tagger.close()


def test_analyze_answers_the_same_whichever_process_tags(runtime, in_process):
    from headscope.analysis.service import Runtime
    from headscope.schemas import AnalyzeRequest

    assert isinstance(runtime.tagger, TaggerProcess)  # the default
    local = Runtime(
        runtime.settings.model_copy(update={"analysis_cache_mb": 0, "tagger_process": False}),
        runtime.files,
        runtime.model,
        runtime.tokenizer,
        in_process,
        runtime.weights_sha256,
    )
    local.engine.use_kernel(runtime.engine.kernel)
    for text in sample_texts(8):
        request = AnalyzeRequest(text=text, patterns=[{"layer": 2, "head": 0}])
        assert local.analyze(request) == runtime.analyze(request)


def wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_prefetched_words_answer_tag_tokens_from_the_cache(in_process):
    tagger = TaggerProcess(cache_bytes=2**20)
    tagger.wait_ready()
    try:
        text = sample_texts(3)[1]
        assert tagger.prefetch(text)
        wait_for(lambda: tagger.cache_counts()[1] == 1)  # the child tagged it: one miss
        assert tagger.tag_tokens(text, offsets_of(text)) == in_process.tag_tokens(
            text, offsets_of(text)
        )
        assert tagger.cache_counts() == (1, 1)  # and answered from the cache
        assert not tagger.prefetch("x" * 5000)  # a frame too long to go in whole
    finally:
        tagger.close()
    assert not tagger.prefetch("Closed.")


def test_requests_waited_for_go_before_prefetches(in_process):
    tagger = TaggerProcess(cache_bytes=2**22)
    tagger.wait_ready()
    try:
        texts = [text[:1500] for text in sample_texts(31)]
        os.kill(tagger.pid, signal.SIGSTOP)
        try:
            assert all(tagger.prefetch(text) for text in texts[:30])
            answer = tagger.submit_tag_tokens(texts[30], offsets_of(texts[30]))
        finally:
            os.kill(tagger.pid, signal.SIGCONT)
        assert answer.result() == in_process.tag_tokens(texts[30], offsets_of(texts[30]))
        hits, misses = tagger.cache_counts()
        # First in, first out, it would have tagged all 30 before (31 misses by now); waited for,
        # it went first, and the prefetches tagged since (~6 ms each) are few.
        assert hits == 0 and misses < 20
        wait_for(lambda: tagger.cache_counts()[1] == 31)  # which all run afterwards
    finally:
        tagger.close()


def test_prefetch_never_blocks_the_caller_on_a_full_pipe(in_process):
    tagger = TaggerProcess(cache_bytes=2**20)
    tagger.wait_ready()
    try:
        text = ("The dog ran to the park. " * 160)[:3900]
        os.kill(tagger.pid, signal.SIGSTOP)  # reads nothing: the pipe fills up
        try:
            # A blocking write would never return here (the child reads nothing while stopped):
            # that the loop ends at all is the proof.
            sent = [tagger.prefetch(text) for _ in range(100)]
        finally:
            os.kill(tagger.pid, signal.SIGCONT)
        assert 5 < sum(sent) < 40 and not sent[-1]  # 64 kB of frames went in, then no more
        small = ODD_TEXTS[0]
        assert tagger.tag_tokens(small, offsets_of(small)) == in_process.tag_tokens(
            small, offsets_of(small)
        )  # the frames that went in were whole
    finally:
        tagger.close()


def test_prefetch_without_a_child_does_nothing():
    tagger = TaggerProcess(cache_bytes=2**20, heartbeat_interval=3600)
    tagger.wait_ready()
    try:
        first = tagger.pid
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: tagger.pid != first)  # the reader saw it die
        if tagger.pid is None:  # before the watcher has a new one
            assert not tagger.prefetch("No child to send this to.")
        wait_for(lambda: tagger.health == "ready")
        assert tagger.prefetch("A new child takes this.")
    finally:
        tagger.close()


def test_frames_split_across_reads_come_out_whole():
    from headscope.tagging.child import _FrameReader, _write_frame

    read_end, write_end = os.pipe()
    try:
        with os.fdopen(write_end, "wb", closefd=False) as stream:
            _write_frame(stream, ("a", 1))
        frame = marshal_frame((7, "tag_tokens", ("x" * 3000, [(0, 1)], "overlap")))
        os.write(write_end, frame[:10])
        reader = _FrameReader(read_end)
        assert reader.read(block=True) == [("a", 1)]
        assert reader.read(block=False) == []
        os.write(write_end, frame[10:] + frame)
        assert reader.read(block=False) == [marshal.loads(frame[4:])] * 2
        os.close(write_end)
        write_end = -1
        assert reader.read(block=True) is None
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def marshal_frame(value) -> bytes:
    from headscope.tagging.child import FRAME_HEADER

    payload = marshal.dumps(value)
    return FRAME_HEADER.pack(len(payload)) + payload


def test_the_analyze_route_has_the_child_tag_ahead(settings, runtime):
    from fastapi.testclient import TestClient

    from headscope.app import create_app

    assert isinstance(runtime.tagger, TaggerProcess)
    hits, misses = runtime.tagger.cache_counts()
    text = "A prefetched story. The cat sat on a mat, and the dog watched it."
    with TestClient(create_app(settings, runtime=runtime)) as api:
        assert api.post("/v1/analyze", json={"text": text}).status_code == 200
    # The prefetch and tag_tokens both reached the child, in either order: one tagged the
    # words, the other found them in the cache. Without the prefetch: one miss, no hit.
    wait_for(lambda: sum(runtime.tagger.cache_counts()) == hits + misses + 2)
    assert runtime.tagger.cache_counts() == (hits + 1, misses + 1)
