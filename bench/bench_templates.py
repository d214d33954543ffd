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

from tests.llama_cpp_sdist import chat_templates
from tests.template_cases import run_cases, serve_templates


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
