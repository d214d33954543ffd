import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests import the project's modules (settings, backends, ...) from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.embedded_model import EMBEDDED_MODEL_FILES, ensure_embedded_model  # noqa: E402
from settings import PROJECT_ROOT  # noqa: E402
from tests.postgres_server import running_postgres  # noqa: E402

IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(scope="session", autouse=True)
def embedded_models() -> dict[str, Path]:
    """Both embedded models in the repository's models/ (many tests point models.yaml entries at them), placed
    once before any test; a missing package fails here instead of in some later test."""
    models_dir = PROJECT_ROOT / "models"
    for file_name in EMBEDDED_MODEL_FILES:
        ensure_embedded_model(models_dir, file_name)
    return {file_name: models_dir / file_name for file_name in EMBEDDED_MODEL_FILES}


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for the whole session (tests/postgres_server.py); each user takes its own
    database from `fresh_database`."""
    with running_postgres() as url:
        yield url


@pytest.fixture
def fresh_postgres(postgres_url: str) -> str:
    """The URL of a new, empty database on the session's PostgreSQL."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + "/" + name


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """In CI a skipped test is a failure (a test that never runs does not exist), except CUDA-only tests on a
    machine without a GPU."""
    report = yield
    if IN_CI and report.skipped and item.get_closest_marker("cuda") is None and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true), which counts as a failure: {reason}"
    return report
