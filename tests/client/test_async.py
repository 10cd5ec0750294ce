"""The async client: every core method against the real server, equal to the sync client's
results, concurrent calls, and the same error mapping."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from headscope_client import (
    ActivityResult,
    AnalyzeResult,
    AsyncClient,
    AttentionResult,
    BadRequestError,
    TagResult,
    UnprocessableEntityError,
)

TEXT = 'Tom found a red ball. "Look!" he said to Sue.'


async def test_every_core_method_equals_the_sync_client(aclient, client):
    assert (await aclient.health()).status == "ok"
    assert (await aclient.ready()).ready is True
    assert await aclient.model() == client.model()

    tagged = await aclient.tag(TEXT, alignment="paper")
    assert isinstance(tagged, TagResult)
    assert tagged == client.tag(TEXT, alignment="paper")

    activity = await aclient.activity(TEXT, layers=[1], heads=[0, 9])
    assert isinstance(activity, ActivityResult)
    assert activity == client.activity(TEXT, layers=[1], heads=[0, 9])
    assert activity.to_numpy().shape == (1, 2, len(activity.tokens))

    attention = await aclient.attention(TEXT, 6, 2, query=3)
    assert isinstance(attention, AttentionResult)
    assert attention == client.attention(TEXT, 6, 2, query=3)

    analyzed = await aclient.analyze(TEXT, patterns=[(6, 2)])
    assert isinstance(analyzed, AnalyzeResult)
    assert analyzed == client.analyze(TEXT, patterns=[(6, 2)])
    np.testing.assert_allclose(analyzed.pattern(6, 2)[3:4], attention.to_numpy(), atol=1e-6)


async def test_concurrent_calls_return_their_own_results(aclient):
    texts = [f"The dog number {n} ran to the park." for n in range(4)]
    results = await asyncio.gather(*(aclient.tag(text) for text in texts))
    assert ["".join(token.text for token in result.tokens) for result in results] == texts


async def test_async_errors_are_mapped_like_the_sync_ones(aclient):
    with pytest.raises(BadRequestError) as empty:
        await aclient.tag("   ")
    assert empty.value.code == "empty_text"
    with pytest.raises(UnprocessableEntityError):
        await aclient.attention(TEXT, 99, 0)


async def test_async_client_closes_its_connections(live_server):
    client = AsyncClient(live_server)
    await client.health()
    await client.aclose()
    assert client._http.is_closed
