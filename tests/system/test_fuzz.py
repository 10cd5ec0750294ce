"""Promise 2, no 5xx for any input: schemathesis generates valid and invalid requests for every
operation in the OpenAPI document (so routes added later are fuzzed too) and checks each
response: no server error, a documented status code and content type, a body matching the
documented schema, and auth enforced. The app runs in-process with small limits, so a case costs
milliseconds; scripts/fuzz.sh runs the same test with many more examples.

The schema is built when this module is imported (schemathesis' lazy fixture loader does not
work with this pytest), from the app's own `openapi()`: no request, no model load; the app's
lifespan loads the model on the first generated request.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import schemathesis
from pydantic import SecretStr
from schemathesis import GenerationMode

from headscope.app import create_app
from headscope.settings import Settings
from tests.helpers import CORPUS, STANDIN_DIR

# >= 200 generated cases per operation in CI; the nightly script raises it.
EXAMPLES = int(os.environ.get("HEADSCOPE_FUZZ_EXAMPLES", "200"))
FUZZ_KEY = "fuzz-key-0123456789"
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "ignored_auth",
]
# HEADSCOPE_FUZZ_CHECKS="+a,b" adds checks (scripts/fuzz.sh shows one); "a,b" replaces them.
_extra_checks = os.environ.get("HEADSCOPE_FUZZ_CHECKS", "")
if _extra_checks:
    _names = [name for name in _extra_checks.lstrip("+").split(",") if name]
    CHECKS = CHECKS + _names if _extra_checks.startswith("+") else _names

# The real app over the trained stand-in, with an API key and small limits: long texts hit the
# 413 path at once, and a corpus request analyses a few short sequences at most. Its lifespan
# trains a small probe run into a temporary store, so the probe endpoints are fuzzed past 503.
_probe_store = tempfile.TemporaryDirectory(prefix="headscope-fuzz-store-")
fuzz_app = create_app(
    Settings(
        model=str(STANDIN_DIR),
        max_tokens=16,
        corpus=str(CORPUS),
        corpus_max_sequences=2,
        corpus_max_tokens=64,
        max_queue=1024,
        api_key=SecretStr(FUZZ_KEY),
        store=Path(_probe_store.name),
        train_probes_if_missing=True,
        probes_max_sequences=16,
    )
)
schema = schemathesis.openapi.from_dict(fuzz_app.openapi())
schema.app = fuzz_app
schema.config.update(headers={"Authorization": f"Bearer {FUZZ_KEY}"})
schema.config.generation.update(
    max_examples=EXAMPLES,
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    database="none",
    # Reproducible in CI; scripts/fuzz.sh turns it off to explore new cases each run.
    deterministic=os.environ.get("HEADSCOPE_FUZZ_DETERMINISTIC", "1") == "1",
)
schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])
schema.config.checks.update(included_check_names=CHECKS)


@schema.parametrize()
def test_every_operation_survives_generated_input(case):
    case.call_and_validate()
