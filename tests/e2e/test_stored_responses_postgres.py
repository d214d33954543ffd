"""Stored responses in a real PostgreSQL shared by two server instances (as behind a load balancer) with one cache
directory: a chain continued turn by turn on either instance, retrieved, listed and deleted on the other; a
background response polled and cancelled through the instance that does not run it and not failed by it; and a
fresh instance continuing the conversation with the prefix from the shared disk prompt cache."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from backends.embedded_model import SMOLLM2_FILE
from tests.server_process import running_server
from tests.smollm2 import NO_END_TOKENS

MODEL = SMOLLM2_FILE
NO_END = {"logit_bias": NO_END_TOKENS}  # the story runs until cancelled


@pytest.fixture(scope="module")
def database(postgres_url):
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE shared_state")
    return postgres_url.rsplit("/", 1)[0] + "/shared_state"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture(scope="module")
def two_instances(database, cache_dir, tmp_path_factory):
    flags = ("--model-name", MODEL, "--state-db", database, "--cache-dir", str(cache_dir), "--parallel", "2")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("a")) as a, \
            running_server(*flags, log_dir=tmp_path_factory.mktemp("b")) as b:
        yield a, b


def test_a_chain_alternates_between_instances(two_instances):
    a, b = (server.openai_client() for server in two_instances)
    first = a.responses.create(model=MODEL, input="My name is Ada.", max_output_tokens=6, temperature=0)
    assert b.responses.retrieve(first.id).output_text == first.output_text
    second = b.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id,
                                max_output_tokens=6, temperature=0)
    third = a.responses.create(model=MODEL, input="Say it again.", previous_response_id=second.id,
                               max_output_tokens=6, temperature=0)
    # each turn saw the whole conversation: the prompt grew by more than the new words
    assert first.usage.input_tokens < second.usage.input_tokens < third.usage.input_tokens
    listed = b.responses.input_items.list(third.id, order="asc")
    assert [item.content[0].text for item in listed.data] == ["Say it again."]
    a.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        b.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError):  # the chain through it is broken, on either instance
        b.responses.create(model=MODEL, input="More.", previous_response_id=third.id, max_output_tokens=2)


def test_a_chain_continues_behind_a_real_router_whichever_instance_answers(two_instances, tmp_path):
    """Behind vllm-router's round_robin (it knows nothing of stored responses) the turns of one chain alternate
    between the instances; each continues from the shared store."""
    from tests.replica_cluster import vllm_router

    with vllm_router(tmp_path, [(server, None) for server in two_instances], "round_robin") as router:
        client = openai.OpenAI(base_url=f"{router}/v1", api_key="x", _strict_response_validation=True)
        served = [server.log_path.read_text().count("path=/v1/responses status=200") for server in two_instances]
        previous, sizes = None, []
        for turn in range(4):
            answer = client.responses.create(model=MODEL, input=f"Turn {turn}: my name is Ada.", temperature=0,
                                             max_output_tokens=4, previous_response_id=previous)
            previous = answer.id
            sizes.append(answer.usage.input_tokens)
    assert sizes == sorted(set(sizes))  # each turn saw the whole conversation so far
    now = [server.log_path.read_text().count("path=/v1/responses status=200") for server in two_instances]
    assert [after - before for after, before in zip(now, served, strict=True)] == [2, 2]  # both took turns


def _poll(client, response_id, done, timeout=60.0):
    deadline = time.monotonic() + timeout
    while (response := client.responses.retrieve(response_id)).status not in done:
        assert time.monotonic() < deadline, response.status
        time.sleep(0.1)
    return response


def test_a_background_response_runs_on_one_instance_and_is_cancelled_through_the_other(two_instances):
    a_server, b_server = two_instances
    a, b = a_server.openai_client(), b_server.openai_client()
    queued = a.responses.create(model=MODEL, input="Write a long story.", max_output_tokens=3800, background=True,
                                extra_body=NO_END)
    _poll(b, queued.id, done=("in_progress",))
    time.sleep(1.5)  # b tends the store meanwhile: a is alive, so its response is not failed
    assert b.responses.retrieve(queued.id).status == "in_progress"
    assert b.responses.cancel(queued.id).status == "cancelled"
    deadline = time.monotonic() + 5  # a sees the cancel in the database and stops generating
    while httpx.get(f"{a_server.base_url}/").json()["active_sequences"] != 0:
        assert time.monotonic() < deadline, "the cancelled response kept generating on the instance running it"
        time.sleep(0.05)
    assert a.responses.retrieve(queued.id).status == "cancelled"


def test_a_fresh_instance_continues_from_the_shared_database_and_cache(database, cache_dir, tmp_path):
    flags = ("--model-name", MODEL, "--state-db", database, "--cache-dir", str(cache_dir), "--parallel", "1")
    (tmp_path / "first").mkdir()
    (tmp_path / "fresh").mkdir()
    with running_server(*flags, log_dir=tmp_path / "first") as server:
        first = server.openai_client().responses.create(
            model=MODEL, input="Tell me about lighthouses and the sea at night. " * 20, max_output_tokens=8,
            temperature=0)
    with running_server(*flags, log_dir=tmp_path / "fresh") as server:
        second = server.openai_client().responses.create(model=MODEL, input="Go on.", previous_response_id=first.id,
                                                         max_output_tokens=4, temperature=0)
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 1


def test_a_save_waiting_on_the_database_holds_up_no_other_stream(two_instances, database):
    """Answers were stored on the event loop: a save waiting on PostgreSQL (here: a table lock held by this test)
    froze every stream of the instance until the database answered. The save now waits on its own thread; only
    its own answer waits for it (so that any instance can read the response back once it is answered)."""
    import concurrent.futures

    import psycopg

    a_server, b_server = two_instances
    client = a_server.openai_client(timeout=20, max_retries=0)
    with concurrent.futures.ThreadPoolExecutor(1) as pool, psycopg.connect(database) as locker, \
            psycopg.connect(database, autocommit=True) as watcher:
        locker.execute("LOCK TABLE responses IN ACCESS EXCLUSIVE MODE")  # held until this transaction ends
        stored = pool.submit(client.responses.create, model=MODEL, input="Hello.", max_output_tokens=4,
                             temperature=0)
        deadline = time.monotonic() + 20
        while not watcher.execute("SELECT count(*) FROM pg_locks WHERE NOT granted "
                                  "AND relation = 'responses'::regclass").fetchone()[0]:
            assert time.monotonic() < deadline, "the response's save never reached the database"
            time.sleep(0.05)
        chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                     max_tokens=8, temperature=0, stream=True))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")  # streamed in full meanwhile
        assert not stored.done()  # the stored response's own answer waits for its write
        locker.rollback()
        response = stored.result(timeout=20)
    assert b_server.openai_client().responses.retrieve(response.id).output_text == response.output_text


def test_the_web_pages_conversations_are_shared_by_the_instances(two_instances):
    """The page's conversations live in the same PostgreSQL: one instance stores, the other lists, searches (LIKE's
    wildcards taken literally there too), returns and deletes."""
    first, second = (f"{server.base_url}/chat/conversations" for server in two_instances)
    body = {"id": "shared", "title": "Budget 100% done_now", "created": 1, "updated": 2, "roots": [], "nodes": {}}
    assert httpx.put(f"{first}/shared", json=body).status_code == 200
    assert httpx.get(f"{second}/shared").json() == body
    assert [c["id"] for c in httpx.get(second, params={"q": "100% done_"}).json()["data"]] == ["shared"]
    assert httpx.get(second, params={"q": "1_0%"}).json()["data"] == []
    assert httpx.delete(f"{second}/shared").json()["deleted"] is True
    assert httpx.get(f"{first}/shared").status_code == 404
