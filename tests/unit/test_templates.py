from pathlib import Path

import pytest

from backends.base import ChatTemplateInfo
from chat.messages import to_template_messages
from chat.templates import ChatPromptRenderer, builtin_template_name, resolve_template_source
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
