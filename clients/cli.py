"""`llm-server-chat` / `python chat_cli.py`: interactive terminal chat with this server or any OpenAI-compatible one."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import openai

from clients.conversation import Conversation, default_data_dir
from clients.terminal_chat import TerminalChat


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Chat in the terminal with an OpenAI-compatible server.")
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"))
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"))
    parser.add_argument("--model", default=None, help="default: the server's default model")
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="where /save keeps conversations")
    args = parser.parse_args(argv)
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0)
    TerminalChat(client, Conversation(model=args.model, system=args.system), args.data_dir).run()


if __name__ == "__main__":
    main()
