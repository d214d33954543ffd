"""Interactive terminal chat with this server (or any OpenAI-compatible one): `python chat_cli.py --help`."""

from clients.cli import main

if __name__ == "__main__":
    main()
