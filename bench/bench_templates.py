"""Real chat templates served over HTTP: llama.cpp's collection (~70 families, read from the llama-cpp-python
sdist, never copied here), each served over the embedded SmolLM2 (one catalog entry per template), through the
cases of tests/template_cases.py: plain chat, tool history, `required` whole and streamed, `auto` without markup,
thinking off where the template has it. Prints each template's failures and the counts.

Usage: python -m bench.bench_templates [--only NAME ...] [--n-ctx 4096]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from settings import PROJECT_ROOT, SMOLLM2_FILE
from tests.llama_cpp_sdist import chat_templates
from tests.server_process import running_server
from tests.template_cases import run_cases


def serve_templates(templates: dict[str, str], folder: Path, n_ctx: int):
    (folder / "templates").mkdir()
    entries = []
    for name, source in templates.items():
        path = folder / "templates" / f"{name}.jinja"
        path.write_text(source, encoding="utf-8")
        entries.append({"id": name, "path": str(PROJECT_ROOT / "models" / SMOLLM2_FILE), "chat_template": str(path),
                        "settings": {"n_ctx": n_ctx, "parallel": 1}})
    (folder / "models.yaml").write_text(yaml.safe_dump({"models": entries}))
    return running_server("--models-dir", str(folder), "--model-name", entries[0]["id"],
                          "--no-install-embedded-models", "--max-loaded-models", "2", log_dir=folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="template names (file stems) to run")
    parser.add_argument("--n-ctx", type=int, default=4096)
    args = parser.parse_args()
    templates = chat_templates()
    if args.only:
        templates = {name: templates[name] for name in args.only}
    passed = cases = full = 0
    with tempfile.TemporaryDirectory() as folder, serve_templates(templates, Path(folder), args.n_ctx) as server:
        client = server.openai_client(max_retries=0, timeout=120)
        for name, source in sorted(templates.items()):
            results = run_cases(client, name, source)
            ok = sum(result == "ok" for result in results.values())
            passed, cases, full = passed + ok, cases + len(results), full + (ok == len(results))
            failed = {case: why for case, why in results.items() if why != "ok"}
            print(f"{name:46s} {ok}/{len(results)}" + "".join(f"\n    {case}: {why}" for case, why in failed.items()),
                  flush=True)
    print(f"\n{full}/{len(templates)} templates fully work; {passed}/{cases} cases")


if __name__ == "__main__":
    main()
