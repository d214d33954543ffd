"""Budget closing for calls that are not JSON (XML-like tags, Gemma 4's and Python's notations): each format says
what text would close an answer from where it stands (TagClosing, GemmaClosing, PythonClosing), and the steering
leads the model along it (backends/answer_steering.py). Shared here: how much of that text is written already."""

from __future__ import annotations


def unwritten(answer: str, target: str) -> str:
    """`target` less the part of it the answer already ends with (a model half way through a closing tag)."""
    written = next((k for k in range(len(target), 0, -1) if answer.endswith(target[:k])), 0)
    return target[written:]
