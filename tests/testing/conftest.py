"""Fixtures of the fake provider's tests: clients pointed straight at ``fake``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from openai import AsyncOpenAI

from proxy.testing import FakeUpstream


@pytest.fixture
async def oai(fake: FakeUpstream) -> AsyncIterator[AsyncOpenAI]:
    """The openai SDK's async client on the fake's OpenAI API."""
    client = AsyncOpenAI(base_url=fake.openai_base_url, api_key="sk-test", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session, for the wire format."""
    async with aiohttp.ClientSession() as session:
        yield session
