"""The OpenAI surface, whole, as the official ``openai`` SDK drives it through an edge (real edges, Redis and
simulators that answer as vLLM does): list and retrieve models, chat (whole and streamed with usage),
completions, embeddings, responses, and errors as the SDK's own exception types."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.fleet import Fleet, ServerFactory, start_fleet
from tests.geodb import CLIENT_IP

MODEL = "llama-3.1-8b-instruct"


@pytest.fixture
async def fleet(tmp_path: Path, serve: ServerFactory, geo_db: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(
        tmp_path,
        serve,
        geo_db=geo_db,
        auth=True,
        catalog=True,
        regions=("eu-west-1",),
        sim_kwargs={"ttft_ms": 1.0},
    )
    try:
        yield f
    finally:
        await f.close()


async def client(fleet: Fleet, key: str | None = None) -> openai.AsyncOpenAI:
    if key is None:
        _, key = await fleet.tenant_key()
    return openai.AsyncOpenAI(
        base_url=fleet.edge_url("eu-west-1") + "v1",
        api_key=key,
        max_retries=0,
        default_headers={"X-Forwarded-For": CLIENT_IP["london"]},
    )


async def test_models_list_and_retrieve(fleet: Fleet) -> None:
    sdk = await client(fleet)
    listed = [m.id async for m in sdk.models.list()]
    assert MODEL in listed
    one = await sdk.models.retrieve(MODEL)
    assert one.id == MODEL and one.object == "model"
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


async def test_chat_whole_and_streamed_with_usage(fleet: Fleet) -> None:
    sdk = await client(fleet)
    hi: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    whole = await sdk.chat.completions.create(model=MODEL, messages=hi, max_tokens=5)
    assert whole.choices[0].message.content and whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 5
    parts, usage = [], None
    stream = await sdk.chat.completions.create(
        model=MODEL,
        messages=hi,
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert len(parts) == 5 and usage is not None and usage.completion_tokens == 5


async def test_completions_embeddings_and_responses(fleet: Fleet) -> None:
    sdk = await client(fleet)
    done = await sdk.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    assert done.choices[0].text and len(done.choices[0].text.split()) == 4
    assert done.choices[0].finish_reason == "length"
    vectors = await sdk.embeddings.create(model=MODEL, input=["one", "two"])
    assert [len(v.embedding) for v in vectors.data] == [16, 16] and vectors.data[0].embedding != vectors.data[
        1
    ].embedding
    again = await sdk.embeddings.create(model=MODEL, input="one", encoding_format="float")
    assert again.data[0].embedding == pytest.approx(vectors.data[0].embedding, abs=1e-6)
    answer = await sdk.responses.create(model=MODEL, input="hi", max_output_tokens=3)
    assert (
        len(answer.output_text.split()) == 3 and answer.usage is not None and answer.usage.output_tokens == 3
    )


async def test_errors_are_the_sdks_own_exception_types(fleet: Fleet) -> None:
    hi: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    stranger = await client(fleet, key="mk-not-a-key")
    with pytest.raises(openai.AuthenticationError):
        await stranger.chat.completions.create(model=MODEL, messages=hi)
    sdk = await client(fleet)
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.chat.completions.create(model="no-such-model", messages=hi)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.chat.completions.create(model=MODEL, messages=hi, max_tokens=10**9)
    assert bad.value.param == "max_tokens"
    limited = await client(fleet, key=(await fleet.tenant_key({"rpm": 1}))[1])
    with pytest.raises(openai.RateLimitError) as over:  # one request a minute: the second or third is over
        for _ in range(3):
            await limited.chat.completions.create(model=MODEL, messages=hi, max_tokens=1)
    assert over.value.code == "rate_limit_exceeded"
