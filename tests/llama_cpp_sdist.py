"""The llama-cpp-python sdist of the installed version, downloaded once from PyPI into the test cache: it vendors
llama.cpp, whose converter (convert_hf_to_gguf.py) and collection of real chat templates (models/templates/, ~70
families) the tests read from it. Nothing from it is copied into the repository."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import llama_cpp

CACHE = Path(os.environ.get("LLM_SERVER_TEST_CACHE", Path.home() / ".cache" / "llm-server-tests"))
VENDORED = f"llama_cpp_python-{llama_cpp.__version__}/vendor/llama.cpp/"


def sdist_archive() -> Path:
    download = CACHE / "sdists"
    download.mkdir(parents=True, exist_ok=True)
    archive = download / f"llama_cpp_python-{llama_cpp.__version__}.tar.gz"
    if not archive.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={llama_cpp.__version__}",
                        "--no-deps", "--no-binary", ":all:", "-d", str(download), "-q"], check=True)
    return archive


def chat_templates() -> dict[str, str]:
    """llama.cpp's collection of real chat templates: file stem -> template source."""
    prefix = VENDORED + "models/templates/"
    with tarfile.open(sdist_archive()) as sdist:
        return {Path(member.name).stem: sdist.extractfile(member).read().decode("utf-8")
                for member in sdist.getmembers()
                if member.isfile() and member.name.startswith(prefix) and member.name.endswith(".jinja")}
