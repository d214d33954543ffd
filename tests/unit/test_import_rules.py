"""The floor plan, checked on every run by reading each module's imports with `ast` (nothing is imported):

- API wings (api/openai, api/anthropic, api/responses, api/rerank, api/admin) never import each other; they build on
  the api/ root (the HTTP core and the OpenAI wire types) and api/pipeline (the API-neutral generation pipeline);
- the api/ root and the pipeline import no wing (app.py alone wires the wings' routers in);
- tenants/, state/ and chat/ import nothing from api/ or backends/; settings.py and errors.py nothing from either;
- backends/ core (the files directly in backends/) imports no engine package (factory.py picks engines lazily);
- no module imports back into a module that imports it (no cycles among module-level imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from settings import PROJECT_ROOT

WINGS = ("api.openai", "api.anthropic", "api.responses", "api.rerank", "api.admin")
ENGINES = ("backends.llamacpp", "backends.hf", "backends.remote")
PACKAGES = ("api", "backends", "chat", "tenants", "state", "clients", "templates")


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    found = {module_name(p): p for package in PACKAGES for p in (PROJECT_ROOT / package).rglob("*.py")}
    found.update({module_name(PROJECT_ROOT / f): PROJECT_ROOT / f for f in ("settings.py", "settings_cli.py", "errors.py", "server.py", "chat_cli.py")})
    return found


MODULES = project_modules()


def imports_of(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Project modules `path` imports (`from a.b import c` counts a.b.c when that is a module, else a.b)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                         for a in node.names)
    return {name for name in found if name in MODULES}


def within(module: str, packages: tuple[str, ...] | str) -> bool:
    packages = (packages,) if isinstance(packages, str) else packages
    return any(module == p or module.startswith(p + ".") for p in packages)


def wing_of(module: str) -> str | None:
    return next((wing for wing in WINGS if within(module, wing)), None)


def broken(rule) -> list[str]:
    return sorted(f"{module} -> {target}" for module, path in MODULES.items() for target in imports_of(path)
                  if rule(module, target))


def test_api_wings_never_import_each_other():
    assert broken(lambda m, t: wing_of(m) and wing_of(t) and wing_of(m) != wing_of(t)) == []


def test_the_api_core_and_the_pipeline_import_no_wing():
    assert broken(lambda m, t: within(m, "api") and not wing_of(m) and m != "api.app" and wing_of(t)) == []


def test_tenants_state_and_chat_stay_below_api_and_backends():
    low = ("tenants", "state", "chat", "settings", "errors")
    assert broken(lambda m, t: within(m, low) and within(t, ("api", "backends"))) == []


def test_backends_core_imports_no_engine_package():
    def core(module: str) -> bool:
        return within(module, "backends") and not within(module, ENGINES) and module != "backends.factory"

    assert broken(lambda m, t: core(m) and within(t, ENGINES)) == []


def test_no_import_cycles():
    graph = {module: imports_of(path, top_level_only=True) for module, path in MODULES.items()}
    cycles, state = [], {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize("wing", WINGS)
def test_each_wing_exists(wing):
    assert any(within(m, wing) for m in MODULES), f"{wing} has no modules: the rules above would hold vacuously"
