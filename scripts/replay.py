#!/usr/bin/env python
"""Record the HTTP answers of a real `headscope serve` to a fixed corpus of requests, and replay
that corpus against the current checkout to show what changed, byte for byte.

    python scripts/replay.py record --out DIR      # trains a probe run into DIR/probes first
    python scripts/replay.py compare --golden DIR  # exit status 1 on any difference

Both start `headscope serve` (the entry point beside this interpreter, else
`python -m headscope.cli`: the checkout this interpreter has installed) on 127.0.0.1 with a free
port, `--model` the shared stand-in, `--probes DIR/probes`, `--log-level warning` and no other
flag: every other setting is the checkout's default (attention_kernel=auto, torch_threads=1,
tagger_process on, ...), so a changed default shows up as a difference. The environment is this
one with every HEADSCOPE_* variable removed, then NLTK_DATA, HEADSCOPE_CORPUS (the shared sample),
HF_HUB_OFFLINE=1 and HEADSCOPE_OFFLINE=1 set. Only loopback is ever contacted.

The probe run is trained once, by `record`, with the recording checkout's
`headscope probes train --max-sequences 40 --seed 0`, and kept in DIR/probes: `compare` serves
those very files, since training need not give the same bits across code versions. (Two trainings
by the same checkout give the same weights but a new run id and `created` time, which
/v1/probes, /v1/probes/predict and /v1/heads/rank report: so two recordings differ there, and
each is compared only against servers that load its own probe run.)

DIR/index.json lists every request (method, path with query, headers sent, body file and sha256)
and its answer (status, content type, headers, body file, size and sha256); bodies are in
DIR/requests/ and DIR/responses/. Requests are sent in order, one at a time, over one keep-alive
connection (a fresh one after the server closes it), so cache answers (X-Headscope-Cache) repeat.

Compared for every request: the status, every response header but `date`, and the body's bytes.
Excluded from byte identity, as nondeterministic by nature:
- the `date` header (wall clock);
- the server's port, which is free-picked per run: `http://127.0.0.1:<port>` in a header or body
  is written as `http://{server}` before recording and comparing (only redirects carry it);
- figure PNGs (/v1/figures/*.png): compared by status, content type and the image's width and
  height (from the PNG header); their bytes, sha256 and content-length are recorded but a change
  in them is only reported as a note, since another matplotlib or freetype may draw the same
  figure with other bytes (two recordings on one machine gave identical PNG bytes).
  `--strict-figures` counts such a change as a difference.
Nothing else is excluded: GET /v1/model has no field that differs between runs of the same
checkout (checked by recording twice), so it is compared whole.

For a differing JSON body the line names the first differing path (e.g. `$.tokens[3].tag`); for
safetensors, the first differing tensor or metadata key; for npy, the first differing element.
The last line is `N requests, M identical, K different`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from headscope.launcher import HOST, serve_process, start_or_exit

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HEADSCOPE_SHARED", REPO.parent / "shared")).resolve()
if not (SHARED / "assets").is_dir():
    SHARED = Path("/work/shared")
MODEL_DIR = SHARED / "assets" / "standin-trained"
NLTK_DATA = SHARED / "assets" / "nltk_data"
CORPUS = SHARED / "data" / "tinystories-valid-sample.txt"

FORMAT = "headscope-replay/1"
PROBE_TRAIN_ARGS = ("--max-sequences", "40", "--seed", "0")
# Sent with every request, so nothing depends on the client library's own defaults.
BASE_HEADERS = {"user-agent": "headscope-replay/1", "accept-encoding": "identity"}
IGNORED_HEADERS = {"date"}
FIGURE_ONLY_HEADERS = {"content-length"}
SERVER_PLACEHOLDER = "http://{server}"

JSON_TYPE = "application/json"
SAFETENSORS = "application/x-safetensors"
NPY = "application/x-npy"

# -- the request corpus ------------------------------------------------------------------------

QUOTE_TEXT = 'Tom said, "I like the lake." Then he ran.'
PARK_TEXT = "Lily walked to the park."
BALL_TEXT = 'She said, "Look at the ball!"'
BONE_TEXT = "His dog ate the bone."
HI_TEXT = 'Lily said, "Hi!"'
ODD_TEXT = 'Zoë\'s café   sold crème brûlée 🍰!\n\n"Yum," said Max.\tThe end...'
STORY = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    'sunshine. One day, she saw a big red ball in the park. "Can I play with you?" asked a boy '
    "named Tom. Lily smiled and said yes. They played all day until the sun went down. "
    "Tom's mom called him home for dinner. He waved goodbye and ran across the grass. "
)
# About 75 tokens a STORY: 2 copies go past the 128-row block, 5 past the 256-position window of
# the local (odd) layers, 8 past the 512-token limit.
MEDIUM_TEXT = STORY * 2
LONG_TEXT = STORY * 5
TOO_LONG_TEXT = STORY * 8
QUOTE_TEXTS = [
    'Mia said, "I want a cookie." Her dad smiled.',
    '"Look!" shouted Ben. "A frog is in the pond!" The frog jumped away.',
    "The cat slept on the warm mat all day.",
]


@dataclass
class Request:
    name: str
    method: str
    path: str
    json_body: object = None
    raw_body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False
    figure: bool = False

    def body_bytes(self) -> bytes:
        if self.raw_body is not None:
            return self.raw_body
        if self.json_body is None:
            return b""
        return json.dumps(self.json_body, ensure_ascii=False).encode()

    def sent_headers(self) -> dict[str, str]:
        headers = dict(BASE_HEADERS)
        if self.json_body is not None:
            headers["content-type"] = JSON_TYPE
        headers.update(self.headers)
        return headers


def get(name: str, path: str, params: dict | None = None, **kwargs) -> Request:
    if params:
        path = f"{path}?{urllib.parse.urlencode(params)}"
    return Request(name, "GET", path, **kwargs)


def post(name: str, path: str, body: object, accept: str | None = None, **kwargs) -> Request:
    headers = dict(kwargs.pop("headers", {}))
    if accept is not None:
        headers["accept"] = accept
    return Request(name, "POST", path, json_body=body, headers=headers, **kwargs)


def in_formats(name: str, path: str, body: object, formats: tuple[str, ...]) -> list[Request]:
    return [post(f"{name} [{accept}]", path, body, accept=accept) for accept in formats]


ALL_FORMATS = (JSON_TYPE, SAFETENSORS, NPY)


def build_corpus() -> list[Request]:
    requests: list[Request] = [
        get("healthz", "/healthz"),
        get("readyz", "/readyz"),
        get("model", "/v1/model"),
        get("openapi spec", "/openapi.json"),
    ]
    # /v1/tag: both alignments, odd whitespace and Unicode, past a 128-row block.
    requests += [
        post("tag quote overlap", "/v1/tag", {"text": QUOTE_TEXT}),
        post("tag quote paper", "/v1/tag", {"text": QUOTE_TEXT, "alignment": "paper"}),
        post("tag ball explicit overlap", "/v1/tag", {"text": BALL_TEXT, "alignment": "overlap"}),
        post("tag odd text overlap", "/v1/tag", {"text": ODD_TEXT}),
        post("tag odd text paper", "/v1/tag", {"text": ODD_TEXT, "alignment": "paper"}),
        post("tag medium story", "/v1/tag", {"text": MEDIUM_TEXT}),
        post("tag with accept json", "/v1/tag", {"text": PARK_TEXT}, accept=JSON_TYPE),
    ]
    # /v1/activity: default, selections, output options, each format.
    requests += in_formats("activity default", "/v1/activity", {"text": PARK_TEXT}, ALL_FORMATS)
    requests += [
        post("activity no accept", "/v1/activity", {"text": HI_TEXT}),
        post("activity L6H4", "/v1/activity", {"text": PARK_TEXT, "layers": [6], "heads": [4]}),
        post(
            "activity layers/heads unsorted",
            "/v1/activity",
            {"text": QUOTE_TEXT, "layers": [7, 0, 3], "heads": [15, 0, 4]},
        ),
        post("activity float16", "/v1/activity", {"text": QUOTE_TEXT, "dtype": "float16"}),
        post("activity decimals 3", "/v1/activity", {"text": QUOTE_TEXT, "decimals": 3}),
        post(
            "activity decimals 0",
            "/v1/activity",
            {"text": BALL_TEXT, "decimals": 0, "layers": [2]},
        ),
        post(
            "activity float16 decimals 2 [safetensors]",
            "/v1/activity",
            {"text": QUOTE_TEXT, "dtype": "float16", "decimals": 2},
            accept=SAFETENSORS,
        ),
        post(
            "activity float16 L2 [npy]",
            "/v1/activity",
            {"text": BALL_TEXT, "dtype": "float16", "layers": [2], "heads": [0]},
            accept=NPY,
        ),
        post("activity long text", "/v1/activity", {"text": LONG_TEXT}),
        post(
            "activity long text [npy]",
            "/v1/activity",
            {"text": LONG_TEXT, "layers": [1, 6]},
            accept=NPY,
        ),
        post("activity odd text", "/v1/activity", {"text": ODD_TEXT}),
        post(
            "activity accept q-values",
            "/v1/activity",
            {"text": PARK_TEXT, "layers": [0]},
            accept=f"{NPY};q=0.5, {SAFETENSORS};q=0.9",
        ),
        post("activity accept */*", "/v1/activity", {"text": PARK_TEXT}, accept="*/*"),
    ]
    # /v1/attention: the full pattern, a query row, sparse and rounded output, each format.
    requests += in_formats(
        "attention L2H0 full",
        "/v1/attention",
        {"text": BALL_TEXT, "layer": 2, "head": 0},
        ALL_FORMATS,
    )
    requests += in_formats(
        "attention L2H0 query 7",
        "/v1/attention",
        {"text": BALL_TEXT, "layer": 2, "head": 0, "query": 7},
        ALL_FORMATS,
    )
    requests += [
        post(
            "attention top_k 3",
            "/v1/attention",
            {"text": QUOTE_TEXT, "layer": 6, "head": 4, "top_k": 3},
        ),
        post(
            "attention threshold 0.1",
            "/v1/attention",
            {"text": QUOTE_TEXT, "layer": 6, "head": 4, "threshold": 0.1},
        ),
        post(
            "attention top_k+threshold+decimals",
            "/v1/attention",
            {
                "text": QUOTE_TEXT,
                "layer": 5,
                "head": 5,
                "top_k": 2,
                "threshold": 0.05,
                "decimals": 4,
            },
        ),
        post(
            "attention float16 query row [safetensors]",
            "/v1/attention",
            {"text": QUOTE_TEXT, "layer": 0, "head": 9, "query": 3, "dtype": "float16"},
            accept=SAFETENSORS,
        ),
        post(
            "attention local layer past window, query 370",
            "/v1/attention",
            {"text": LONG_TEXT, "layer": 1, "head": 3, "query": 370},
        ),
        post(
            "attention global layer long, query 370 top_k 5",
            "/v1/attention",
            {"text": LONG_TEXT, "layer": 2, "head": 0, "query": 370, "top_k": 5},
        ),
        post(
            "attention medium full float16 [npy]",
            "/v1/attention",
            {"text": MEDIUM_TEXT, "layer": 3, "head": 7, "dtype": "float16"},
            accept=NPY,
        ),
    ]
    # /v1/analyze: patterns and every option; npy is not offered (406).
    requests += in_formats(
        "analyze L5H5",
        "/v1/analyze",
        {"text": BONE_TEXT, "patterns": [{"layer": 5, "head": 5}]},
        ALL_FORMATS,
    )
    requests += [
        post("analyze no patterns", "/v1/analyze", {"text": PARK_TEXT}),
        post(
            "analyze all options",
            "/v1/analyze",
            {
                "text": QUOTE_TEXT,
                "patterns": [{"layer": 2, "head": 0}, {"layer": 6, "head": 4}],
                "dtype": "float16",
                "decimals": 3,
                "top_k": 2,
                "threshold": 0.01,
            },
        ),
        post(
            "analyze float16 [safetensors]",
            "/v1/analyze",
            {"text": HI_TEXT, "patterns": [{"layer": 1, "head": 2}], "dtype": "float16"},
            accept=SAFETENSORS,
        ),
        post(
            "analyze medium, local layer pattern",
            "/v1/analyze",
            {"text": MEDIUM_TEXT, "patterns": [{"layer": 6, "head": 4}, {"layer": 7, "head": 1}]},
        ),
        post(
            "analyze long [safetensors]",
            "/v1/analyze",
            {"text": LONG_TEXT, "patterns": [{"layer": 1, "head": 0}]},
            accept=SAFETENSORS,
        ),
        post("analyze repeated (cache)", "/v1/analyze", {"text": PARK_TEXT}),
    ]
    # Probes.
    requests += [
        get("probes run", "/v1/probes"),
        get(
            "probe scores key VBD f1",
            "/v1/probes/scores",
            {"vector": "key", "tag": "VBD", "metric": "f1"},
        ),
        get(
            "probe scores key accuracy selectivity",
            "/v1/probes/scores",
            {"vector": "key", "tag": "accuracy", "metric": "selectivity"},
        ),
        get(
            "probe scores query macro precision",
            "/v1/probes/scores",
            {"vector": "query", "tag": "macro", "metric": "precision"},
        ),
        get(
            "probe scores value weighted recall",
            "/v1/probes/scores",
            {"vector": "value", "tag": "weighted", "metric": "recall"},
        ),
        get(
            "probe scores key NN selectivity",
            "/v1/probes/scores",
            {"vector": "key", "tag": "NN", "metric": "selectivity"},
        ),
        get(
            "probe scores value DT default metric",
            "/v1/probes/scores",
            {"vector": "value", "tag": "DT"},
        ),
        get(
            "probe scores unknown tag",
            "/v1/probes/scores",
            {"vector": "key", "tag": "XYZ", "metric": "f1"},
        ),
        get(
            "probe scores bad metric",
            "/v1/probes/scores",
            {"vector": "key", "tag": "VBD", "metric": "auc"},
        ),
        get("probe scores missing tag", "/v1/probes/scores", {"vector": "key"}),
        post(
            "probe predict key L0H9",
            "/v1/probes/predict",
            {
                "text": "Lily saw a big red ball.",
                "vector": "key",
                "layer": 0,
                "head": 9,
                "top_k": 3,
            },
        ),
        post(
            "probe predict value L7H15 top 1",
            "/v1/probes/predict",
            {"text": QUOTE_TEXT, "vector": "value", "layer": 7, "head": 15, "top_k": 1},
        ),
        post(
            "probe predict query all tags",
            "/v1/probes/predict",
            {"text": HI_TEXT, "vector": "query", "layer": 6, "head": 4, "top_k": 100},
        ),
        post(
            "probe predict bad vector",
            "/v1/probes/predict",
            {"text": HI_TEXT, "vector": "output", "layer": 0, "head": 0},
        ),
        post(
            "probe predict unknown head",
            "/v1/probes/predict",
            {"text": HI_TEXT, "vector": "key", "layer": 0, "head": 16},
        ),
    ]
    # Corpus analyses: small draws and explicit texts; a repeat answers from the cache.
    attention_by_tag = {"layer": 6, "head": 4, "from_tag": "VBD", "n_sequences": 5, "seed": 1}
    requests += [
        post("corpus attention-by-tag from VBD", "/v1/corpus/attention-by-tag", attention_by_tag),
        post(
            "corpus attention-by-tag repeat (cache hit)",
            "/v1/corpus/attention-by-tag",
            attention_by_tag,
        ),
        post(
            "corpus attention-by-tag to NN texts",
            "/v1/corpus/attention-by-tag",
            {"layer": 5, "head": 5, "to_tag": "NN", "texts": QUOTE_TEXTS},
        ),
        post(
            "corpus attention-by-tag from and to",
            "/v1/corpus/attention-by-tag",
            {"layer": 5, "head": 5, "to_tag": "NN", "from_tag": "DT", "n_sequences": 2},
        ),
        post(
            "corpus activity-by-tag VBD before",
            "/v1/corpus/activity-by-tag",
            {"tag": "VBD", "position": "before", "n_sequences": 5},
        ),
        post(
            "corpus activity-by-tag NN on texts",
            "/v1/corpus/activity-by-tag",
            {"tag": "NN", "texts": QUOTE_TEXTS},
        ),
        post(
            "corpus activity-by-tag DT after seed 3",
            "/v1/corpus/activity-by-tag",
            {"tag": "DT", "position": "after", "n_sequences": 4, "seed": 3},
        ),
        post(
            "corpus activity-by-tag absent tag",
            "/v1/corpus/activity-by-tag",
            {"tag": "FW", "texts": QUOTE_TEXTS},
        ),
        post("corpus quotes n 8", "/v1/corpus/quotes", {"n_sequences": 8}),
        post("corpus quotes texts", "/v1/corpus/quotes", {"texts": QUOTE_TEXTS}),
        post(
            "corpus quotes texts and n",
            "/v1/corpus/quotes",
            {"texts": QUOTE_TEXTS, "n_sequences": 2},
        ),
        post("corpus quotes empty texts", "/v1/corpus/quotes", {"texts": []}),
        post("corpus quotes n over max", "/v1/corpus/quotes", {"n_sequences": 100000}),
        get(
            "heads rank VBD before",
            "/v1/heads/rank",
            {"tag": "VBD", "vector": "key", "position": "before", "n_sequences": 5, "limit": 10},
        ),
        get(
            "heads rank NN selectivity",
            "/v1/heads/rank",
            {"tag": "NN", "metric": "selectivity", "n_sequences": 4, "seed": 2, "limit": 5},
        ),
        get("heads rank bad vector", "/v1/heads/rank", {"tag": "NN", "vector": "output"}),
    ]
    # Figures: status, type and size compared; bytes only noted.
    requests += [
        get(
            "figure activity",
            "/v1/figures/activity.png",
            {"layer": 2, "head": 0, "text": 'She said, "Hi!"'},
            figure=True,
        ),
        get(
            "figure attention",
            "/v1/figures/attention.png",
            {"layer": 2, "head": 0, "query": 5, "text": 'She said, "Hi there!"'},
            figure=True,
        ),
        get(
            "figure attention-by-tag",
            "/v1/figures/attention-by-tag.png",
            {"layer": 6, "head": 4, "from_tag": "VBD", "n_sequences": 5, "seed": 1},
            figure=True,
        ),
        get(
            "figure activity-by-tag",
            "/v1/figures/activity-by-tag.png",
            {"tag": "VBD", "position": "before", "n_sequences": 5, "top": 8, "width": 800},
            figure=True,
        ),
        get(
            "figure quotes",
            "/v1/figures/quotes.png",
            {"n_sequences": 8, "layer": 2, "height": 400},
            figure=True,
        ),
        get(
            "figure bad width",
            "/v1/figures/activity.png",
            {"layer": 2, "head": 0, "text": "Hi.", "width": 10},
            figure=True,
        ),
        get(
            "figure unknown head",
            "/v1/figures/activity.png",
            {"layer": 2, "head": 99, "text": "Hi."},
            figure=True,
        ),
    ]
    # Errors: every refusal the README names, on the lean and the FastAPI paths alike.
    requests += [
        post("error empty text tag", "/v1/tag", {"text": ""}),
        post("error empty text activity", "/v1/activity", {"text": ""}),
        post("error empty text analyze", "/v1/analyze", {"text": ""}),
        post(
            "error whitespace text attention",
            "/v1/attention",
            {"text": " \n\t ", "layer": 0, "head": 0},
        ),
        post("error whitespace text analyze", "/v1/analyze", {"text": "   "}),
        post("error unknown layer activity", "/v1/activity", {"text": PARK_TEXT, "layers": [8]}),
        post("error unknown head activity", "/v1/activity", {"text": PARK_TEXT, "heads": [16]}),
        post(
            "error unknown layer attention",
            "/v1/attention",
            {"text": PARK_TEXT, "layer": 8, "head": 0},
        ),
        post(
            "error negative head attention",
            "/v1/attention",
            {"text": PARK_TEXT, "layer": 0, "head": -1},
        ),
        post(
            "error query out of range",
            "/v1/attention",
            {"text": PARK_TEXT, "layer": 0, "head": 0, "query": 50},
        ),
        post(
            "error unknown pattern head analyze",
            "/v1/analyze",
            {"text": PARK_TEXT, "patterns": [{"layer": 9, "head": 0}]},
        ),
        post("error unknown field tag", "/v1/tag", {"text": PARK_TEXT, "foo": 1}),
        post("error unknown field analyze", "/v1/analyze", {"text": PARK_TEXT, "colour": "red"}),
        post("error layers as string", "/v1/activity", {"text": PARK_TEXT, "layers": "6"}),
        post("error layer as bool", "/v1/attention", {"text": PARK_TEXT, "layer": True, "head": 0}),
        post("error decimals 9", "/v1/activity", {"text": PARK_TEXT, "decimals": 9}),
        post("error dtype float64", "/v1/analyze", {"text": PARK_TEXT, "dtype": "float64"}),
        post(
            "error top_k 0", "/v1/attention", {"text": PARK_TEXT, "layer": 0, "head": 0, "top_k": 0}
        ),
        post("error bad alignment", "/v1/tag", {"text": PARK_TEXT, "alignment": "middle"}),
        post("error missing text", "/v1/activity", {"layers": [0]}),
        post(
            "error lone surrogate",
            "/v1/tag",
            None,
            raw_body=b'{"text": "a \\ud800 b"}',
            headers={"content-type": JSON_TYPE},
        ),
        post(
            "error malformed json tag",
            "/v1/tag",
            None,
            raw_body=b'{"text": "Hi.",',
            headers={"content-type": JSON_TYPE},
        ),
        post(
            "error malformed json analyze",
            "/v1/analyze",
            None,
            raw_body=b'{"text": Hi}',
            headers={"content-type": JSON_TYPE},
        ),
        post(
            "error empty body activity",
            "/v1/activity",
            None,
            raw_body=b"",
            headers={"content-type": JSON_TYPE},
        ),
        post("error non-object body list", "/v1/tag", ["Hi."]),
        post("error non-object body string analyze", "/v1/analyze", "Hi."),
        post("error non-object body number activity", "/v1/activity", 42),
        post("error too long text tag", "/v1/tag", {"text": TOO_LONG_TEXT}),
        post("error too long text analyze", "/v1/analyze", {"text": TOO_LONG_TEXT}),
        post("error too long text activity", "/v1/activity", {"text": " cat" * 100000}),
        post("error body over cap (content-length)", "/v1/tag", {"text": "a " * 600_000}),
        post(
            "error body over cap (chunked)", "/v1/analyze", {"text": "a " * 600_000}, chunked=True
        ),
        post(
            "error content type text/plain",
            "/v1/tag",
            None,
            raw_body=json.dumps({"text": PARK_TEXT}).encode(),
            headers={"content-type": "text/plain"},
        ),
        post(
            "error content type form analyze",
            "/v1/analyze",
            None,
            raw_body=b"text=Hi",
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        post(
            "error no content type activity",
            "/v1/activity",
            None,
            raw_body=json.dumps({"text": PARK_TEXT}).encode(),
        ),
        get("error unknown path", "/v1/nope"),
        post("error unknown path post", "/v1/analyse", {"text": PARK_TEXT}),
        get("error trailing slash", "/v1/model/"),
        get("error wrong method get tag", "/v1/tag"),
        post("error wrong method post model", "/v1/model", {"text": PARK_TEXT}),
        Request("error wrong method delete analyze", "DELETE", "/v1/analyze"),
        # Accept: a type that is neither binary format falls back to JSON (by design, for
        # browsers); only a binary type the endpoint cannot produce, alone, is a 406.
        post("accept text/html -> JSON", "/v1/activity", {"text": PARK_TEXT}, accept="text/html"),
        post(
            "accept image/png -> JSON",
            "/v1/attention",
            {"text": PARK_TEXT, "layer": 0, "head": 0},
            accept="image/png",
        ),
        post(
            "accept safetensors alias",
            "/v1/attention",
            {"text": PARK_TEXT, "layer": 0, "head": 0, "query": 2},
            accept="application/vnd.safetensors",
        ),
        post("error npy accept analyze", "/v1/analyze", {"text": PARK_TEXT}, accept=NPY),
        post(
            "error npy accept, json q=0, analyze",
            "/v1/analyze",
            {"text": BONE_TEXT},
            accept=f"{JSON_TYPE};q=0, {NPY}",
        ),
        post("accept npy on tag -> JSON", "/v1/tag", {"text": PARK_TEXT}, accept=NPY),
        get("healthz at the end", "/healthz"),
    ]
    return requests


# -- the server --------------------------------------------------------------------------------


def server_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("HEADSCOPE_")}
    env.update(
        {
            "NLTK_DATA": str(NLTK_DATA),
            "HEADSCOPE_CORPUS": str(CORPUS),
            "HF_HUB_OFFLINE": "1",
            "HEADSCOPE_OFFLINE": "1",
        }
    )
    return env


def headscope_command() -> list[str]:
    entry_point = Path(sys.executable).parent / "headscope"
    if entry_point.is_file():
        return [str(entry_point)]
    return [sys.executable, "-m", "headscope.cli"]


def serve_args(probes: Path) -> list[str]:
    return ["--model", str(MODEL_DIR), "--probes", str(probes), "--log-level", "warning"]


@contextmanager
def running_server(probes: Path, log_path: Path) -> Iterator[str]:
    with log_path.open("w") as log, contextlib.ExitStack() as stack:
        server = serve_process(
            *serve_args(probes),
            command=headscope_command(),
            env=server_env(),
            stdout=log,
            ready_timeout=180,
            stop_timeout=30,
        )
        base_url, _ = start_or_exit(stack, server, f"server log {log_path}")
        yield base_url


def train_probes(out: Path, log_path: Path) -> None:
    command = [
        *headscope_command(), "probes", "train",
        "--model", str(MODEL_DIR),
        "--corpus", str(CORPUS),
        *PROBE_TRAIN_ARGS,
        "--out", str(out),
    ]  # fmt: skip
    print("training probes:", " ".join(command), flush=True)
    with log_path.open("w") as log:
        result = subprocess.run(command, env=server_env(), stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"probe training failed ({result.returncode}); log: {log_path}")


# -- sending -----------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@dataclass
class Answer:
    status: int | str
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


def send(client: httpx.Client, base_url: str, request: Request, body: bytes) -> Answer:
    content = chunks(body) if request.chunked else body
    try:
        response = client.request(
            request.method, base_url + request.path, headers=request.sent_headers(),
            content=content if body or request.method != "GET" else None,
        )  # fmt: skip
    except httpx.HTTPError as err:
        # A connection the server closed mid-body has no answer to record; its kind is the answer.
        return Answer(f"error: {type(err).__name__}", {}, b"")
    placeholder = SERVER_PLACEHOLDER.encode()
    headers: dict[str, str] = {}
    for name, value in response.headers.multi_items():
        name = name.lower()
        if name in IGNORED_HEADERS:
            continue
        value = value.replace(base_url, SERVER_PLACEHOLDER)
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return Answer(
        response.status_code, headers, response.content.replace(base_url.encode(), placeholder)
    )


def png_size(data: bytes) -> list[int] | None:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return [width, height]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]


# -- record ------------------------------------------------------------------------------------


def git_describe() -> dict[str, str]:
    def run(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return result.stdout.strip()

    return {"commit": run("rev-parse", "HEAD"), "branch": run("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": str(bool(run("status", "--porcelain", "--", "service")))}  # fmt: skip


def record(out: Path) -> int:
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} exists and is not empty")
    (out / "requests").mkdir(parents=True)
    (out / "responses").mkdir()
    probes = out / "probes"
    train_probes(probes, out / "probe-train.log")
    corpus = build_corpus()
    entries = []
    with (
        running_server(probes, out / "server-record.log") as base_url,
        httpx.Client(timeout=300) as client,
    ):
        for number, request in enumerate(corpus):
            stem = f"{number:03d}-{slug(request.name)}"
            body = request.body_bytes()
            answer = send(client, base_url, request, body)
            request_file = f"requests/{stem}.body"
            response_file = f"responses/{stem}{extension(answer.content_type)}"
            (out / request_file).write_bytes(body)
            (out / response_file).write_bytes(answer.body)
            entry = {
                "index": number,
                "name": request.name,
                "method": request.method,
                "path": request.path,
                "headers": request.sent_headers(),
                "chunked": request.chunked,
                "figure": request.figure,
                "body_file": request_file,
                "body_bytes": len(body),
                "body_sha256": sha256(body),
                "body_preview": preview(body),
                "response": {
                    "status": answer.status,
                    "content_type": answer.content_type,
                    "retry_after": answer.headers.get("retry-after"),
                    "headers": answer.headers,
                    "body_file": response_file,
                    "size": len(answer.body),
                    "sha256": sha256(answer.body),
                },
            }
            if request.figure and answer.content_type == "image/png":
                entry["response"]["png_size"] = png_size(answer.body)
            entries.append(entry)
            print(f"{number:3d} {answer.status} {answer.content_type or '-':28} {request.name}")
    index = {
        "format": FORMAT,
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checkout": git_describe(),
        "serve": " ".join(
            [*headscope_command(), "serve", "--host", HOST, "--port", "<free>",
             *serve_args(Path("<DIR>/probes"))]
        ),
        "environment": {"NLTK_DATA": str(NLTK_DATA), "HEADSCOPE_CORPUS": str(CORPUS),
                        "HF_HUB_OFFLINE": "1", "HEADSCOPE_OFFLINE": "1"},
        "probe_training": " ".join(["headscope probes train", "--model", str(MODEL_DIR),
                                    "--corpus", str(CORPUS), *PROBE_TRAIN_ARGS,
                                    "--out", "<DIR>/probes"]),
        "excluded_from_identity": {
            "headers": sorted(IGNORED_HEADERS),
            "server_url": f"written as {SERVER_PLACEHOLDER}",
            "figures": "status, content-type and PNG width/height compared; bytes only noted",
        },
        "requests": entries,
    }  # fmt: skip
    (out / "index.json").write_text(json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(entries)} requests recorded in {out}")
    return 0


def extension(content_type: str | None) -> str:
    media = (content_type or "").split(";")[0].strip()
    return {JSON_TYPE: ".json", SAFETENSORS: ".safetensors", NPY: ".npy", "image/png": ".png",
            "text/html": ".html", "text/plain": ".txt"}.get(media, ".bin")  # fmt: skip


def preview(body: bytes, limit: int = 400) -> str | None:
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return base64.b64encode(body[:limit]).decode() if len(body) <= limit else None
    return text if len(text) <= limit else text[:limit] + f"... ({len(body)} bytes)"


# -- compare -----------------------------------------------------------------------------------


def first_json_difference(golden: object, current: object, path: str = "$") -> str | None:
    if type(golden) is not type(current):
        return f"{path}: {short(golden)} -> {short(current)}"
    if isinstance(golden, dict):
        for key in list(golden) + [k for k in current if k not in golden]:
            if key not in current:
                return f"{path}.{key}: missing now"
            if key not in golden:
                return f"{path}.{key}: new"
            found = first_json_difference(golden[key], current[key], f"{path}.{key}")
            if found:
                return found
        if list(golden) != list(current):
            return f"{path}: key order {list(golden)} -> {list(current)}"
        return None
    if isinstance(golden, list):
        for position, (old, new) in enumerate(zip(golden, current, strict=False)):
            found = first_json_difference(old, new, f"{path}[{position}]")
            if found:
                return found
        if len(golden) != len(current):
            return f"{path}: length {len(golden)} -> {len(current)}"
        return None
    return None if golden == current else f"{path}: {short(golden)} -> {short(current)}"


def short(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def first_array_difference(golden, current) -> str:
    import numpy as np

    if golden.dtype != current.dtype or golden.shape != current.shape:
        return f"{golden.dtype}{list(golden.shape)} -> {current.dtype}{list(current.shape)}"
    unequal = np.argwhere(~((golden == current) | (np.isnan(golden) & np.isnan(current))))
    if not len(unequal):
        return "equal values, other bytes"
    where = tuple(int(i) for i in unequal[0])
    return (
        f"{len(unequal)} elements differ, first {list(where)}: "
        f"{golden[where].item()!r} -> {current[where].item()!r}"
    )


def body_difference(golden: bytes, current: bytes, content_type: str | None) -> str:
    media = (content_type or "").split(";")[0].strip()
    try:
        if media == JSON_TYPE:
            found = first_json_difference(json.loads(golden), json.loads(current))
            return found or "same JSON value, other bytes"
        if media == NPY:
            import numpy as np

            return first_array_difference(np.load(io.BytesIO(golden)), np.load(io.BytesIO(current)))
        if media == SAFETENSORS:
            return safetensors_difference(golden, current)
    except (ValueError, OSError) as err:
        return f"unparsable body ({err})"
    return f"{len(golden)} -> {len(current)} bytes"


def safetensors_difference(golden: bytes, current: bytes) -> str:
    from safetensors.numpy import load

    def metadata(data: bytes) -> dict:
        (length,) = struct.unpack("<Q", data[:8])
        return json.loads(data[8 : 8 + length]).get("__metadata__") or {}

    old_meta, new_meta = metadata(golden), metadata(current)
    for key in sorted(set(old_meta) | set(new_meta)):
        old, new = old_meta.get(key), new_meta.get(key)
        if old != new:
            try:
                found = first_json_difference(json.loads(old), json.loads(new), f"$meta.{key}")
            except (TypeError, ValueError):
                found = f"$meta.{key}: {short(old)} -> {short(new)}"
            return found or f"$meta.{key}: same JSON value, other bytes"
    old_tensors, new_tensors = load(golden), load(current)
    if list(old_tensors) != list(new_tensors):
        return f"tensors {sorted(old_tensors)} -> {sorted(new_tensors)}"
    for name in old_tensors:
        old, new = old_tensors[name], new_tensors[name]
        if old.dtype != new.dtype or old.shape != new.shape or old.tobytes() != new.tobytes():
            return f"tensor {name}: {first_array_difference(old, new)}"
    return "same tensors and metadata, other bytes (header layout)"


def compared_headers(headers: dict[str, str], figure: bool) -> dict[str, str]:
    skip = FIGURE_ONLY_HEADERS if figure else set()
    return {name: value for name, value in headers.items() if name not in skip}


def compare(golden_dir: Path, strict_figures: bool) -> int:
    index = json.loads((golden_dir / "index.json").read_text())
    if index.get("format") != FORMAT:
        sys.exit(f"{golden_dir}/index.json is not a {FORMAT} recording")
    entries = index["requests"]
    identical = different = 0
    with tempfile.TemporaryDirectory(prefix="headscope-replay-") as scratch:
        log_path = Path(scratch) / "server.log"
        with (
            running_server(golden_dir / "probes", log_path) as base_url,
            httpx.Client(timeout=300) as client,
        ):
            for entry in entries:
                request = Request(entry["name"], entry["method"], entry["path"],
                                  headers=entry["headers"], chunked=entry["chunked"],
                                  figure=entry["figure"])  # fmt: skip
                body = (golden_dir / entry["body_file"]).read_bytes()
                answer = send(client, base_url, request, body)
                problems, notes = differences(golden_dir, entry, answer, strict_figures)
                label = f"#{entry['index']:03d} {entry['method']} {entry['path'][:70]}"
                label += f" ({entry['name']})"
                for note in notes:
                    print(f"note {label}: {note}")
                for problem in problems:
                    print(f"DIFF {label}: {problem}")
                if problems:
                    different += 1
                else:
                    identical += 1
        if different:
            kept = Path(tempfile.gettempdir()) / f"headscope-replay-server-{os.getpid()}.log"
            shutil.copy(log_path, kept)
            print(f"server log: {kept}")
    print(f"{len(entries)} requests, {identical} identical, {different} different")
    return 1 if different else 0


def differences(
    golden_dir: Path, entry: dict, answer: Answer, strict_figures: bool
) -> tuple[list[str], list[str]]:
    expected = entry["response"]
    problems: list[str] = []
    notes: list[str] = []
    figure = entry["figure"]
    if answer.status != expected["status"]:
        problems.append(f"status {expected['status']} -> {answer.status}")
    if answer.content_type != expected["content_type"]:
        problems.append(f"content-type {expected['content_type']} -> {answer.content_type}")
    old_headers = compared_headers(expected["headers"], figure)
    new_headers = compared_headers(answer.headers, figure)
    for name in sorted(set(old_headers) | set(new_headers)):
        if name == "content-type":
            continue
        if old_headers.get(name) != new_headers.get(name):
            problems.append(
                f"header {name}: {old_headers.get(name)!r} -> {new_headers.get(name)!r}"
            )
    if sha256(answer.body) == expected["sha256"]:
        return problems, notes
    if figure and expected["content_type"] == "image/png":
        if png_size(answer.body) != expected.get("png_size"):
            problems.append(f"png size {expected.get('png_size')} -> {png_size(answer.body)}")
        message = f"figure bytes differ ({expected['size']} -> {len(answer.body)} bytes)"
        (problems if strict_figures else notes).append(message)
        return problems, notes
    golden_body = (golden_dir / expected["body_file"]).read_bytes()
    problems.append(f"body: {body_difference(golden_body, answer.body, expected['content_type'])}")
    return problems, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    record_parser = commands.add_parser("record", help="Train probes, serve, record the corpus.")
    record_parser.add_argument("--out", type=Path, required=True, help="New folder to write.")
    compare_parser = commands.add_parser("compare", help="Replay a recording; list differences.")
    compare_parser.add_argument("--golden", type=Path, required=True, help="A record folder.")
    compare_parser.add_argument(
        "--strict-figures", action="store_true", help="Count figure byte changes as differences."
    )
    args = parser.parse_args()
    if args.command == "record":
        return record(args.out.resolve())
    return compare(args.golden.resolve(), args.strict_figures)


if __name__ == "__main__":
    sys.exit(main())
