"""What a response will weigh, judged from the request alone, before any work.

A request names how many numbers it wants back (every head's activity per token, whole attention
patterns); their count times the bytes each takes in the chosen format is the response's size,
give or take the tokens' own fields. Requests whose estimate is over `max_response_bytes` are
refused with 413 before tokenizing, tagging or a forward pass.
"""

from __future__ import annotations

from headscope.encoding import JSON
from headscope.errors import ResponseTooLarge

# A number as JSON: up to 9 significant digits of a float32 and a comma ("0.012345678,"), or
# fewer for float16; binary formats take the dtype's own width.
JSON_NUMBER_BYTES = {"float32": 12, "float16": 8}
BINARY_NUMBER_BYTES = {"float32": 4, "float16": 2}
# A token's fields besides its text, as JSON.
TOKEN_BYTES = 96


def tokens_at_most(text: str, max_tokens: int) -> int:
    """An upper bound on the text's tokens: a byte-level BPE token (GPT-Neo's tokenizer) covers
    at least one byte, and more than `max_tokens` is refused anyway."""
    if len(text) >= max_tokens:
        return max_tokens
    return min(max_tokens, len(text.encode("utf-8", errors="surrogatepass")))


def number_bytes(media_type: str, dtype: str, decimals: int | None) -> int:
    if media_type != JSON:
        return BINARY_NUMBER_BYTES[dtype]
    if decimals is not None:
        return min(decimals + 3, JSON_NUMBER_BYTES[dtype])  # "0." + digits + ","
    return JSON_NUMBER_BYTES[dtype]


def check_response_size(
    *,
    text: str,
    numbers_per_token: int,
    numbers_per_token_pair: int,
    media_type: str,
    dtype: str,
    decimals: int | None,
    max_tokens: int,
    max_response_bytes: int,
) -> int:
    """The estimated size of a response with, for a text of T tokens, `numbers_per_token` x T
    plus `numbers_per_token_pair` x T² numbers; raises ResponseTooLarge (413) over the limit."""
    tokens = tokens_at_most(text, max_tokens)
    numbers = numbers_per_token * tokens + numbers_per_token_pair * tokens * tokens
    estimate = numbers * number_bytes(media_type, dtype, decimals) + tokens * TOKEN_BYTES
    estimate += 2 * len(text)  # each token's text, escaped
    if estimate > max_response_bytes:
        raise ResponseTooLarge(
            f"The response would be about {estimate} bytes, over the limit of "
            f"{max_response_bytes} bytes: ask for fewer patterns, layers or heads, a shorter "
            "text, float16, or a binary format (Accept: application/x-safetensors).",
            detail={
                "estimated_bytes": estimate,
                "max_response_bytes": max_response_bytes,
                "tokens_at_most": tokens,
            },
        )
    return estimate
