"""headscope_client: a typed Python client for the headscope service, sync and async.

    from headscope_client import Client

    with Client("http://127.0.0.1:8000") as client:
        result = client.activity("Once upon a time", layers=[0], heads=[3])
        result.to_numpy()  # [layer, head, token]

`Client` and `AsyncClient` have the same methods (one per endpoint, plus `analyze_many` for
batches); results are the server's own pydantic schemas (`headscope.schemas`), with
`.to_numpy()` on arrays and tidy `.to_pandas()` frames. Every output option of the server is a
keyword: `dtype`, `decimals`, `top_k`, `threshold`, and `format="safetensors"` for arrays read
straight into numpy. Importing this package never imports torch or FastAPI.

Every exception the client raises derives from `HeadscopeError`:

    HeadscopeError
    ├── APIConnectionError            no response: refused, reset, DNS, ...   (retried)
    │   └── APITimeoutError           no answer within `timeout`   (retried only when connecting)
    ├── APIResponseValidationError    a 2xx body that does not match the schema
    └── APIStatusError                a 4xx/5xx answer: .status_code .code .message .detail
        ├── BadRequestError           400  empty text, malformed JSON
        ├── AuthenticationError       401  missing or wrong API key
        ├── NotFoundError             404  unknown route or resource
        ├── PayloadTooLargeError      413  too many tokens, body too large
        ├── UnprocessableEntityError  422  unknown layer/head, invalid field
        ├── RateLimitError            429  server queue full                   (retried)
        └── ServerError               5xx                                      (502, 504 retried)
            └── UnavailableError      503  model loading, probes not loaded    (retried)

Retries (`max_retries`, default 2) back off exponentially with jitter and honour Retry-After;
a 4xx other than 429 is never retried. Defaults live in `headscope_client._constants`.
"""

from headscope_client._base import (
    Alignment,
    ArrayDType,
    ArrayFormat,
    Position,
    ProbeMetric,
    ProbeVector,
    ResultFormat,
)
from headscope_client._client import AsyncClient, Client
from headscope_client._constants import DEFAULT_BASE_URL, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from headscope_client._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    HeadscopeError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitError,
    ServerError,
    UnavailableError,
    UnprocessableEntityError,
)
from headscope_client._models import (
    AblateResult,
    ActivityByTagResult,
    ActivityResult,
    AnalyzeResult,
    AttentionByTagResult,
    AttentionResult,
    CorpusAblationResult,
    CorpusSource,
    HeadRankResult,
    HeadScoresResult,
    Health,
    ModelInfo,
    ProbePrediction,
    ProbeRunInfo,
    ProbeScoresResult,
    QuotesResult,
    Ready,
    TagResult,
    Token,
    head_name,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AblateResult",
    "ActivityByTagResult",
    "Alignment",
    "ArrayDType",
    "ArrayFormat",
    "ActivityResult",
    "AnalyzeResult",
    "AsyncClient",
    "AttentionByTagResult",
    "AttentionResult",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "CorpusAblationResult",
    "CorpusSource",
    "HeadScoresResult",
    "HeadscopeError",
    "Health",
    "HeadRankResult",
    "ModelInfo",
    "NotFoundError",
    "PayloadTooLargeError",
    "Position",
    "ProbeMetric",
    "ProbePrediction",
    "ProbeRunInfo",
    "ProbeScoresResult",
    "ProbeVector",
    "QuotesResult",
    "RateLimitError",
    "Ready",
    "ResultFormat",
    "ServerError",
    "TagResult",
    "Token",
    "UnavailableError",
    "UnprocessableEntityError",
    "head_name",
]
