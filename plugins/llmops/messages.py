"""Messages of an LLM call, from whichever form the instrumentation recorded them in, as one
list of ``{"role", "content"}`` per direction (``input``, ``output``).

Forms read: ``gen_ai.input.messages`` / ``gen_ai.output.messages`` (JSON, with ``parts``) and
``gen_ai.system_instructions``; OpenInference's ``llm.input_messages.N.message.role`` /
``.content`` / ``.contents.K.message_content.text``; Traceloop's older ``gen_ai.prompt.N.role`` /
``gen_ai.completion.N.content``; the deprecated per-message events (``gen_ai.user.message``,
``gen_ai.choice`` …) whose body or attributes hold the content.
"""

from __future__ import annotations

import json
import re
from typing import Any

from opstrata.plugins.llmops.conventions import MESSAGE_EVENTS
from opstrata.plugins.llmops.privacy import ContentPolicy

__all__ = ["CallMessages"]

_INDEXED = re.compile(
    r"^(llm\.input_messages|llm\.output_messages|gen_ai\.prompt|gen_ai\.completion)\.(\d+)\.(.+)$"
)
_DIRECTION = {
    "llm.input_messages": "input",
    "gen_ai.prompt": "input",
    "llm.output_messages": "output",
    "gen_ai.completion": "output",
}


def _loads(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _text_of(content: Any) -> str:
    """Plain text of a message's content, whatever its shape (a string, parts, a dict)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(t for t in (_text_of(part) for part in content) if t)
    if isinstance(content, dict):
        for key in ("content", "text"):
            if key in content and content[key] is not None:
                return _text_of(content[key])
        if "parts" in content:
            return _text_of(content["parts"])
        if "message" in content:
            return _text_of(content["message"])
        if content.get("type") in ("tool_call", "function_call") or "name" in content:
            return json.dumps(content, sort_keys=True)
        return ""
    return str(content)


class CallMessages:
    """Collects one call's messages; ``to_json(policy)`` is what is stored."""

    __slots__ = ("indexed", "input", "output")

    def __init__(self) -> None:
        self.input: list[dict[str, str]] = []
        self.output: list[dict[str, str]] = []
        self.indexed: dict[tuple[str, int], dict[str, str]] = {}

    def __bool__(self) -> bool:
        return bool(self.input or self.output or self.indexed)

    def add_json(self, direction: str, value: Any) -> None:
        """``gen_ai.input.messages`` / ``output.messages`` / ``system_instructions``."""
        data = _loads(value)
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            if data:
                self._list(direction).append({"role": "", "content": str(data)})
            return
        for message in data:
            if isinstance(message, dict) and ("role" in message or "parts" in message):
                role = str(message.get("role") or ("system" if direction == "system" else ""))
                text = _text_of(message.get("parts", message.get("content")))
            else:  # system instructions are a list of parts
                role, text = "system", _text_of(message)
            self._list(direction).append({"role": role, "content": text})

    def add_indexed(self, key: str, value: str) -> bool:
        """One per-message attribute; False when the key is not one."""
        match = _INDEXED.match(key)
        if match is None:
            return False
        prefix, index, rest = match.groups()
        slot = self.indexed.setdefault((_DIRECTION[prefix], int(index)), {})
        rest = rest.removeprefix("message.")
        if rest == "role":
            slot["role"] = value
        elif rest == "content":
            slot["content"] = value
        elif rest.startswith("contents.") and rest.endswith("message_content.text"):
            slot["content"] = (slot.get("content", "") + "\n" + value).lstrip("\n")
        elif rest.startswith("tool_calls.") and rest.endswith(("function.name", "name")):
            slot.setdefault("content", f"[tool call {value}]")
        return True

    def add_event(self, name: str, body: Any, attributes: dict[str, str]) -> None:
        """A deprecated per-message event (span event or log record)."""
        role = MESSAGE_EVENTS[name]
        data = _loads(body) if body not in (None, "") else None
        if data is None:
            data = _loads(attributes.get("content") or attributes.get("gen_ai.event.content"))
        if isinstance(data, dict):
            role = str(data.get("role") or role)
        text = _text_of(data)
        direction = "output" if name == "gen_ai.choice" else "input"
        self._list(direction).append({"role": role, "content": text})

    def _list(self, direction: str) -> list[dict[str, str]]:
        return self.output if direction == "output" else self.input

    def to_json(self, policy: ContentPolicy) -> str | None:
        if not policy.keeps_content:
            return None
        for (direction, _), slot in sorted(self.indexed.items(), key=lambda kv: kv[0][1]):
            self._list(direction).append(
                {"role": slot.get("role", ""), "content": slot.get("content", "")}
            )
        self.indexed.clear()
        stored = {
            direction: [
                {"role": m["role"], "content": policy.apply(m["content"]) or ""} for m in messages
            ]
            for direction, messages in (("input", self.input), ("output", self.output))
        }
        return json.dumps(stored, ensure_ascii=False)
