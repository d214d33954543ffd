from pathlib import Path

import pytest

from backends.base import ChatTemplateInfo
from chat.messages import to_template_messages
from chat.templates import (
    ChatPromptRenderer,
    builtin_template_name,
    resolve_template_source,
    resolve_tool_use_source,
)
from errors import InvalidRequest

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def render(name: str, messages: list[dict]) -> str:
    source = (TEMPLATES / f"{name}.jinja").read_text()
    return ChatPromptRenderer(ChatTemplateInfo(source=source, bos_token="<bos>", eos_token="</s>")).render(messages)


def test_gemma_template_folds_the_system_prompt_into_the_first_user_turn():
    prompt = render("gemma", [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ])
    assert prompt == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )


@pytest.mark.parametrize("name,marker", [
    ("chatml", "<|im_start|>assistant\n"),
    ("llama3", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("phi3", "<|assistant|>\n"),
    ("mistral", "[INST] sys\n\nhi [/INST]"),
])
def test_builtin_templates_render(name, marker):
    prompt = render(name, [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}])
    assert marker in prompt
    assert "hi" in prompt


@pytest.mark.parametrize("architecture,model_name,expected", [
    ("gemma3", "gemma-3-270m", "gemma"),
    ("llama", "Meta-Llama-3.1-8B", "llama3"),
    ("llama", "Mistral-7B-Instruct", "mistral"),
    ("qwen2", "Qwen2.5", "chatml"),
    ("phi3", "Phi-3-mini", "phi3"),
    ("something-new", "x", "chatml"),
])
def test_template_chosen_by_architecture(architecture, model_name, expected):
    assert builtin_template_name(architecture, model_name) == expected


def test_template_precedence(tmp_path):
    sidecar = tmp_path / "m.jinja"
    common = dict(architecture="gemma3", model_name="m", templates_dir=TEMPLATES)
    assert resolve_template_source(override=None, sidecar=sidecar, embedded=None, **common)[1] == "builtin:gemma"
    assert resolve_template_source(override=None, sidecar=sidecar, embedded="E", **common) == ("E", "model")
    sidecar.write_text("S")
    assert resolve_template_source(override=None, sidecar=sidecar, embedded="E", **common) == ("S", "file:m.jinja")
    assert resolve_template_source(override="chatml", sidecar=sidecar, embedded="E", **common)[1] == "override:chatml.jinja"


def test_a_tool_use_template_is_the_models_own_only_beside_its_own_default():
    common = dict(templates_dir=TEMPLATES, embedded="T")
    assert resolve_tool_use_source(override=None, default_origin="model", **common) == "T"
    assert resolve_tool_use_source(override=None, default_origin="override:chatml.jinja", **common) == ""
    assert resolve_tool_use_source(override=None, default_origin="model", templates_dir=TEMPLATES, embedded=None) == ""
    assert "im_start" in resolve_tool_use_source(override="chatml", default_origin="model", **common)


def test_requests_with_tools_render_with_the_tool_use_template():
    renderer = ChatPromptRenderer(ChatTemplateInfo(
        source="{% for m in messages %}{{ m.content }}{% endfor %}",
        tool_use_source="{{ tools | map(attribute='function.name') | join(',') }}<tool_call>{{ messages[0].content }}"))
    hello = [{"role": "user", "content": "hi"}]
    assert renderer.render(hello) == "hi"
    assert renderer.render(hello, tools=[{"type": "function", "function": {"name": "f"}}]) == "f<tool_call>hi"
    assert renderer.supports_tools and renderer.tool_call_format.name == "hermes"  # the tool_use template's


@pytest.mark.parametrize("attack", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ cycler.__init__.__globals__.os.popen('echo pwned').read() }}",
])
def test_untrusted_template_cannot_escape_the_sandbox(attack):
    renderer = ChatPromptRenderer(ChatTemplateInfo(source=attack))
    try:
        output = renderer.render([{"role": "user", "content": "hi"}])
    except InvalidRequest:
        return
    # Some attacks degrade to empty/undefined output instead of raising; they must not reach Python internals.
    assert "subclasses" not in output and "pwned" not in output and "<class" not in output


def test_template_raise_exception_becomes_a_400():
    renderer = ChatPromptRenderer(ChatTemplateInfo(source="{{ raise_exception('roles must alternate') }}"))
    with pytest.raises(InvalidRequest, match="roles must alternate"):
        renderer.render([{"role": "user", "content": "hi"}])


def test_messages_are_normalised_for_templates():
    messages = to_template_messages([
        {"role": "developer", "content": "rules"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None},
    ])
    assert messages == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": ""},
    ]


def _renderer(source: str) -> ChatPromptRenderer:
    return ChatPromptRenderer(ChatTemplateInfo(source=source, origin="test"))


HELLO = [{"role": "user", "content": "hi"}]


def test_a_template_that_does_not_compile_fails_its_load_naming_the_line():
    with pytest.raises(ValueError, match="line 2"):
        _renderer("{% for m in messages %}\n{{ m.content }\n{% endfor %}")


@pytest.mark.parametrize(("source", "says"), [
    ("{% for m in messages %}{{ m.content + 1 }}{% endfor %}", "template line 1"),  # TypeError
    ("\n{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "RecursionError"),
    ("{{ 'x' * 1000000000 }}", "unsafe"),  # would take the server's memory
    ("{{ 2 ** 100000000 }}", "unsafe"),
    ("{{ range(10**12) | list }}", "range"),
    ("{% set _ = messages.append(1) %}", "unsafe"),
    ("{% set ns = namespace() %}{% set ns._x = 1 %}", "unsafe"),
    ("{{ messages[5].content }}", "could not render"),
])
def test_a_broken_or_hostile_template_is_a_400_never_a_crash(source, says):
    renderer = _renderer(source)
    with pytest.raises(InvalidRequest, match=says):
        renderer.render(HELLO)


def test_transformers_template_features_work():
    """Loop controls, the generation tag and tojson's keyword arguments, as transformers allows them."""
    source = ("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{% generation %}{{ m.content }}"
              "{% endgeneration %}{% endfor %}|{{ {'b': 'é', 'a': 1} | tojson(ensure_ascii=True, sort_keys=True, "
              "separators=(',', ':')) }}")
    assert _renderer(source).render(HELLO + HELLO) == 'hi|{"a":1,"b":"\\u00e9"}'


def test_a_template_without_a_system_role_gets_it_in_the_first_user_turn():
    source = ("{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
              "{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}")
    renderer = _renderer(source)
    assert renderer.needs.fold_system
    assert renderer.render([{"role": "system", "content": "Be brief."}] + HELLO) == "[user] Be brief.\n\nhi"


def test_tool_call_arguments_come_as_text_to_a_template_that_concatenates_them():
    source = ("{% for m in messages %}{% for c in m.tool_calls or [] %}{{ c.function.name + ':' + "
              "c.function.arguments }}{% endfor %}{% endfor %}")
    renderer = _renderer(source)
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]}
    assert renderer.needs.string_arguments and renderer.render(HELLO + [call]) == 'f:{"x": 1}'
    assert not _renderer("{% for m in messages %}{{ m.tool_calls }}{% endfor %}").needs.string_arguments


def test_the_tool_prompt_teaches_the_call_format_the_models_template_writes():
    """A template that renders no tool list but writes its calls in history (DeepSeek V3.1, Devstral...) keeps its
    own format, and the tool prompt shows that format instead of the default `<tool_call>`."""
    source = ("{% for m in messages %}{% for c in m.tool_calls or [] %}[TOOL_CALLS]{{ c.function.name }}[ARGS]"
              "{{ c.function.arguments | tojson }}{% endfor %}{{ m.content }}{% endfor %}")
    prompt = (Path(__file__).parents[2] / "templates" / "tool_prompt.jinja").read_text()
    renderer = ChatPromptRenderer(ChatTemplateInfo(source=source, tool_prompt_source=prompt))
    assert not renderer.supports_tools and renderer.tool_call_format.name == "mistral-v7"
    taught = renderer.render_tool_prompt([{"name": "f", "description": "", "parameters": {}}], "required", False)
    assert '[TOOL_CALLS]TOOL_NAME[ARGS]{"ARGUMENT": "VALUE"}' in taught and "<tool_call>" not in taught
