"""A chat conversation as the clients keep it: model, system prompt, messages and sampling settings, saved to
and loaded from JSON files in a user data directory."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import platformdirs

SETTABLE = {"temperature": float, "top_p": float, "max_tokens": int}


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("llm-server-chat")) / "conversations"


@dataclass
class Conversation:
    model: str | None = None
    system: str | None = None
    messages: list[dict] = field(default_factory=list)  # user and assistant turns, OpenAI shape
    settings: dict[str, float | int] = field(default_factory=dict)

    def request_messages(self) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages

    def set(self, name: str, value: str) -> None:
        if name not in SETTABLE:
            raise ValueError(f"can only set {', '.join(SETTABLE)}")
        try:
            self.settings[name] = SETTABLE[name](value)
        except ValueError:
            raise ValueError(f"{name} needs a {SETTABLE[name].__name__}, not {value!r}") from None

    def drop_last_answer(self) -> str | None:
        """For /retry: remove the last assistant turn and return the user message before it."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
        return self.messages[-1]["content"] if self.messages and self.messages[-1]["role"] == "user" else None


def _file(directory: Path, name: str) -> Path:
    if not re.fullmatch(r"[\w.-]{1,64}", name) or name.startswith("."):
        raise ValueError("names may use letters, digits, '.', '-' and '_' (64 at most)")
    return directory / f"{name}.json"


def save(conversation: Conversation, directory: Path, name: str) -> Path:
    path = _file(directory, name)
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(conversation), ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def load(directory: Path, name: str) -> Conversation:
    path = _file(directory, name)
    if not path.is_file():
        raise ValueError(f"no saved conversation named {name!r}")
    data = json.loads(path.read_text(encoding="utf-8"))
    return Conversation(**{k: v for k, v in data.items() if k in Conversation.__dataclass_fields__})


def saved_names(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []
