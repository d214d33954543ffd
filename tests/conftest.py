import os
import sys
from pathlib import Path

import pytest

# Tests import the project's modules (settings, backends, ...) from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.embedded_model import EMBEDDED_MODEL_FILES, ensure_embedded_model  # noqa: E402
from settings import PROJECT_ROOT  # noqa: E402

IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(scope="session", autouse=True)
def embedded_models() -> dict[str, Path]:
    """Both embedded models in the repository's models/ (many tests point models.yaml entries at them), placed
    once before any test; a missing package fails here instead of in some later test."""
    models_dir = PROJECT_ROOT / "models"
    for file_name in EMBEDDED_MODEL_FILES:
        ensure_embedded_model(models_dir, file_name)
    return {file_name: models_dir / file_name for file_name in EMBEDDED_MODEL_FILES}


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
