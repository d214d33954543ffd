"""Fixtures that start the real server with the real llama.cpp engine and the embedded gemma model."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.server_process import running_server

# Token ids of gemma's end-of-generation tokens (<eos>, <end_of_turn>): banning them forces full-length output.
GEMMA_END_TOKENS = {"1": -100, "106": -100}


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    flags = ("--n-ctx", "8192", "--parallel", "8", "--log-level", "info")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("server")) as process:
        yield process


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return server.openai_client()


@pytest.fixture(scope="session")
def bare_client(server) -> openai.OpenAI:
    """Configured with the bare base_url, as some clients are: requests go to /chat/completions."""
    return server.openai_client(bare=True)


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as session:
        yield session
