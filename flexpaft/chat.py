"""Chat templates: wrapping a rendered prompt as the user turn of the tokenizer's chat format.

``chat_template`` is one setting shared by train, eval, search and demo:

- ``none``: the rendered prompt is the model input, the answer follows it as plain text;
- ``auto``: the tokenizer's own chat template when it has one (an Instruct model), else none;
- a ``.jinja`` (or any text) file: that Jinja chat template, whatever the tokenizer ships.

With a chat template, the prompt becomes ``<user turn = rendered prompt><assistant header>`` and
the answer is the assistant turn's content (no separating space). ``render.render`` applies it,
so the trainer, the evaluator and generation all see the same text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flexpaft.errors import FlexpaftError

CHOICES_HELP = (
    "Chat template: 'none' (raw prompt), 'auto' (the tokenizer's chat template when it has "
    "one; the user turn is the rendered prompt, the assistant turn the answer) or a Jinja "
    "template file. Applied identically in training, evaluation and generation."
)


@dataclass
class ChatFormat:
    """A resolved chat template: ``wrap`` turns a prompt into the text before the answer."""

    tokenizer: Any
    template: str | None  # None: the tokenizer's own
    source: str  # "auto" or the file path, for the manifest

    def wrap(self, prompt: str) -> str:
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=True,
        )
        # Templates that write the BOS token as text would get a second one from a tokenizer
        # that adds it itself (Llama-3); the tokenizer's copy is the one kept.
        bos = getattr(self.tokenizer, "bos_token", None)
        if bos and text.startswith(bos) and _adds_bos(self.tokenizer):
            text = text[len(bos) :]
        return text

    def digest(self) -> str:
        text = self.template if self.template is not None else self.tokenizer.chat_template
        return hashlib.sha256(str(text).encode()).hexdigest()[:16]


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def resolve_chat(setting: str, tokenizer: Any) -> ChatFormat | None:
    """The chat format for ``setting`` (auto/none/file) with ``tokenizer``; None means raw text."""
    setting = (setting or "none").strip()
    if setting == "none":
        return None
    if setting == "auto":
        if not getattr(tokenizer, "chat_template", None):
            return None
        return ChatFormat(tokenizer, None, "auto")
    path = Path(setting)
    if not path.is_file():
        raise FlexpaftError(
            f"chat_template must be auto, none or a template file; not found: {path}"
        )
    fmt = ChatFormat(tokenizer, path.read_text(encoding="utf-8"), str(path))
    try:
        fmt.wrap("x")
    except Exception as e:  # jinja2 raises its own error classes
        raise FlexpaftError(
            f"chat template {path} does not render: {str(e).splitlines()[0]}"
        ) from None
    return fmt


def chat_record(setting: str, chat: ChatFormat | None) -> dict[str, Any]:
    """What the run manifest and adapter info keep about the chat template."""
    return {
        "setting": setting or "none",
        "applied": chat is not None,
        "digest": chat.digest() if chat is not None else "",
    }
