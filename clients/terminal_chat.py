"""Interactive terminal chat: a thin client of any OpenAI-compatible server (ours by default).

Answers stream in as they are generated and are shown as Markdown (rich; code highlighted), followed by
time-to-first-token and tokens/s. Line editing and history come from prompt_toolkit; Enter sends, Esc then
Enter (or Alt-Enter) adds a new line. Ctrl-C during an answer stops it (closing the stream, so the server stops
generating); Ctrl-C twice at the prompt exits. Server errors are one readable line; the conversation goes on.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from rich.console import Console, Group
from rich.live import Live
from rich.markdown import Markdown
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from clients.conversation import Conversation, load, save, saved_names

HELP = """\
/models              list the server's models
/switch NAME         continue this conversation on another model
/save NAME           save the conversation      /load [NAME]   load one (alone: list saved ones)
/new                 start over                 /system TEXT   set the system prompt
/set KEY VALUE       temperature, top_p or max_tokens
/image PATH          send a picture with your next message (models that take images)
/retry               ask the last question again
/thinking            show or hide a thinking model's reasoning (shown dimmed, on by default)
/help                this help                  /quit          leave (or Ctrl-D; Ctrl-C twice)"""


@dataclass
class AnswerStats:
    ttft: float | None
    tokens: int
    seconds: float
    interrupted: bool = False

    def line(self) -> str:
        rate = self.tokens / self.seconds if self.seconds > 0 else 0.0
        first = f"TTFT {self.ttft:.2f} s · " if self.ttft is not None else ""
        stopped = " · stopped" if self.interrupted else ""
        return f"{first}{self.tokens} tokens · {rate:.1f} tok/s{stopped}"


class TerminalChat:
    def __init__(
        self,
        client: openai.OpenAI,
        conversation: Conversation,
        data_dir: Path,
        console: Console | None = None,
        session: PromptSession | None = None,
    ) -> None:
        self.client = client
        self.conversation = conversation
        self.data_dir = data_dir
        self.console = console or Console()
        self.session = session or PromptSession(history=_history(data_dir), key_bindings=_newline_bindings())
        self._interrupts = 0
        self.show_thinking = True
        self.images: list[str] = []  # data: URLs of pictures attached to the next message

    # ---------------------------------------------------------------- loop

    def run(self) -> None:
        self.console.print(f"[bold]Chat[/bold] with {self.conversation.model or 'the default model'} — /help for commands")
        while True:
            try:
                text = self.session.prompt("> ", multiline=False)
            except KeyboardInterrupt:
                self._interrupts += 1
                if self._interrupts >= 2:
                    return
                self.console.print("[dim](Ctrl-C again to quit)[/dim]")
                continue
            except EOFError:
                return
            self._interrupts = 0
            text = text.strip()
            if not text:
                continue
            if text.startswith("/"):
                if self.command(text) == "quit":
                    return
            else:
                self.ask(text)

    # ---------------------------------------------------------------- commands

    def command(self, text: str) -> str | None:
        name, _, argument = text[1:].partition(" ")
        argument = argument.strip()
        handlers = {
            "help": lambda: self.console.print(HELP),
            "models": self._models,
            "switch": lambda: self._switch(argument),
            "save": lambda: self._save(argument),
            "load": lambda: self._load(argument),
            "new": self._new,
            "system": lambda: self._system(argument),
            "set": lambda: self._set(argument),
            "retry": self._retry,
            "image": lambda: self._attach_image(argument),
            "thinking": self._toggle_thinking,
        }
        if name in ("quit", "exit"):
            return "quit"
        handler = handlers.get(name)
        if handler is None:
            self._error(f"unknown command /{name} (try /help)")
            return None
        try:
            handler()
        except ValueError as exc:
            self._error(str(exc))
        except openai.APIError as exc:
            self._error(_describe(exc))
        return None

    def _models(self) -> None:
        table = Table("id", "engine", "status", "context")
        for model in self.client.models.list():
            extra = model.model_extra or {}
            table.add_row(model.id, str(extra.get("engine", "")), str(extra.get("status", "")),
                          str(extra.get("context_length") or ""))
        self.console.print(table)

    def _switch(self, name: str) -> None:
        if not name:
            raise ValueError("usage: /switch NAME")
        model = self.client.models.retrieve(name)  # 404 for unknown names, before anything changes
        if (model.model_extra or {}).get("status") not in (None, "loaded"):
            self._load_on_server(model.id)
        self.conversation.model = model.id
        self.console.print(f"now talking to [bold]{model.id}[/bold]")

    def _load_on_server(self, model_id: str) -> None:
        """Our server loads models on demand anyway; asking now shows the wait here, as a progress bar fed by the
        load's Server-Sent Events, instead of as a long time to the first token."""
        root = str(self.client.base_url).rstrip("/").removesuffix("/v1")
        started = time.monotonic()
        with httpx.stream("POST", f"{root}/admin/models/load", json={"model": model_id, "stream": True},
                          timeout=600, headers={"Authorization": f"Bearer {self.client.api_key}"}) as response:
            if response.status_code == 404:  # not our server (no admin API): the first answer will load it
                return
            if response.status_code >= 400:
                response.read()
                raise ValueError(response.json().get("error", {}).get("message", response.text))
            with Progress(TextColumn("loading {task.description}"), BarColumn(), TaskProgressColumn(),
                          TimeElapsedColumn(), console=self.console) as bar:
                task = bar.add_task(model_id, total=1.0)
                for event, data in sse_events(response):
                    if event == "error":
                        raise ValueError(data["error"]["message"])
                    done = 1.0 if event == "loaded" else data.get("progress", 0.0)
                    bar.update(task, completed=done, description=f"{model_id} ({data.get('stage', 'ready')})")
        self.console.print(f"loaded {model_id} in {time.monotonic() - started:.1f} s")

    def _save(self, name: str) -> None:
        if not name:
            raise ValueError("usage: /save NAME")
        path = save(self.conversation, self.data_dir, name)
        self.console.print(f"saved to {path}")

    def _load(self, name: str) -> None:
        if not name:
            names = saved_names(self.data_dir)
            self.console.print("saved: " + (", ".join(names) if names else "none yet"))
            return
        self.conversation = load(self.data_dir, name)
        self.console.print(f"loaded {name}: {len(self.conversation.messages)} messages, model "
                           f"{self.conversation.model or 'default'}")

    def _new(self) -> None:
        self.conversation = Conversation(model=self.conversation.model, system=self.conversation.system,
                                         settings=self.conversation.settings)
        self.console.print("new conversation")

    def _system(self, text: str) -> None:
        self.conversation.system = text or None
        self.console.print("system prompt " + ("set" if text else "cleared"))

    def _set(self, argument: str) -> None:
        key, _, value = argument.partition(" ")
        self.conversation.set(key, value.strip())
        self.console.print(f"{key} = {self.conversation.settings[key]}")

    def _toggle_thinking(self) -> None:
        self.show_thinking = not self.show_thinking
        self.console.print("reasoning " + ("shown" if self.show_thinking else "hidden"))

    def _attach_image(self, argument: str) -> None:
        path = Path(argument).expanduser()
        mime = mimetypes.guess_type(path.name)[0] or ""
        if not argument or not path.is_file() or not mime.startswith("image/"):
            raise ValueError("usage: /image PATH (a PNG, JPEG, WebP, GIF or BMP file)")
        self.images.append(f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}")
        self.console.print(f"[dim]attached {path.name} ({path.stat().st_size // 1024} KiB); it goes with your next "
                           "message[/dim]")

    def _retry(self) -> None:
        question = self.conversation.drop_last_answer()
        if question is None:
            raise ValueError("nothing to retry")
        self.conversation.messages.pop()
        self.ask(question)

    # ---------------------------------------------------------------- answering

    def ask(self, text: str | list[dict]) -> AnswerStats | None:
        if self.images and isinstance(text, str):  # attached pictures first, then the words about them
            text = [*({"type": "image_url", "image_url": {"url": url}} for url in self.images),
                    {"type": "text", "text": text}]
            self.images = []
        self.conversation.messages.append({"role": "user", "content": text})
        try:
            answer, thinking, stats = self._stream_answer()
        except openai.APIError as exc:
            self.conversation.messages.pop()  # not answered: keep the history consistent
            self._error(_describe(exc))
            return None
        if answer or thinking or not stats.interrupted:
            reply = {"role": "assistant", "content": answer}
            if thinking:
                reply["reasoning_content"] = thinking  # the server gives it back to templates that render it
            self.conversation.messages.append(reply)
        else:
            self.conversation.messages.pop()  # stopped before a word arrived: as if never asked
        self.console.print(f"[dim]{stats.line()}[/dim]")
        return stats

    def _stream_answer(self) -> tuple[str, str, AnswerStats]:
        conversation = self.conversation
        started = time.perf_counter()
        try:  # Ctrl-C while the server has not started answering (queued, long prompt): nothing to show
            stream = self.client.chat.completions.create(
                model=conversation.model or "", messages=conversation.request_messages(), stream=True,
                stream_options={"include_usage": True}, **conversation.settings,
            )
        except KeyboardInterrupt:  # the connection is dropped, so the server drops the request
            return "", "", AnswerStats(None, 0, time.perf_counter() - started, interrupted=True)
        parts: list[str] = []
        thoughts: list[str] = []
        ttft, tokens, interrupted = None, 0, False
        with Live(Markdown(""), console=self.console, refresh_per_second=12, vertical_overflow="visible") as live:
            try:
                for chunk in stream:
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
                    delta = chunk.choices[0].delta if chunk.choices else None
                    extra = (delta.model_extra or {}) if delta else {}
                    thought = extra.get("reasoning_content") or extra.get("reasoning")
                    if delta and (delta.content or thought):
                        ttft = ttft if ttft is not None else time.perf_counter() - started
                        parts.append(delta.content or "")
                        thoughts.append(thought or "")
                        live.update(self._view("".join(thoughts), "".join(parts)))
            except KeyboardInterrupt:
                interrupted = True  # closing the stream below disconnects: the server stops generating
            finally:
                stream.close()
        elapsed = time.perf_counter() - started - (ttft or 0.0)
        return "".join(parts), "".join(thoughts), AnswerStats(ttft, tokens or len(parts), elapsed, interrupted)

    def _view(self, thinking: str, answer: str):
        """The answer as Markdown, after the reasoning in dim text when there is some and it is shown."""
        if not thinking or not self.show_thinking:
            return Markdown(answer)
        return Group(Text(thinking.strip(), style="dim italic"), Text(""), Markdown(answer))

    def _error(self, message: str) -> None:
        self.console.print(f"[red]error:[/red] {message}")


def _describe(exc: openai.APIError) -> str:
    if isinstance(exc, openai.APIConnectionError):
        return "cannot reach the server (is it running? check --base-url)"
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    status = getattr(exc, "status_code", None)
    return f"{status}: {message or exc.message}" if status else (message or exc.message)


def _history(data_dir: Path):
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        return FileHistory(str(data_dir / ".history"))
    except OSError:
        return InMemoryHistory()


def _newline_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _(event) -> None:
        event.current_buffer.insert_text("\n")

    return bindings


def sse_events(response: httpx.Response) -> Iterator[tuple[str | None, dict]]:
    """(event name, data) for each Server-Sent Event of a streamed response."""
    event = None
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line[len("event:"):].strip()
        elif line.startswith("data:"):
            yield event, json.loads(line[len("data:"):])
            event = None
