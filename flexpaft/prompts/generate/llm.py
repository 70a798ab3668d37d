"""LLM-written candidate prompts: the PAFT paper's dual strategy (zero-shot and few-shot).

Each generator model (a ``clients.ChatModel``) is asked, through a meta-prompt
(``meta.meta_messages``), for templates of the task: zero-shot shows only the task description and
slot names, few-shot also shows a few human-written seed templates.

Replies are cached in a jsonl file keyed by (endpoint, generator, strategy, request index,
meta-prompt hash), so an interrupted or repeated run never pays twice for a reply it already has.
The API key is never cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexpaft.errors import FlexpaftError
from flexpaft.io import write_error
from flexpaft.prompts.generate.clients import ChatModel, HFChat, Message
from flexpaft.prompts.generate.meta import meta_messages, parse_reply
from flexpaft.prompts.promptset import PromptSet, template_id
from flexpaft.prompts.template import Template
from flexpaft.tasks.spec import AnswerFormat, TaskSpec

STRATEGIES = ("zero_shot", "few_shot")


# ---- cache -------------------------------------------------------------------------------------
class ReplyCache:
    """Append-only jsonl of replies; a torn last line (a killed run) is ignored on load."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._replies: dict[tuple, str] = {}
        if self.path and self.path.is_dir():
            raise FlexpaftError(f"reply cache {self.path} is a directory; give a file (.jsonl)")
        if self.path and self.path.is_file():
            for line in self._lines():
                try:
                    row = json.loads(line)
                    self._replies[self._key(row)] = row["reply"]
                except (ValueError, KeyError, TypeError):
                    continue

    def _lines(self) -> list[str]:
        """The cache's lines as text. A line that is not UTF-8 (flexpaft writes UTF-8 only) means
        another file or damage: refused, naming the file, rather than skipped and then appended
        to. Only a torn last line (a run killed mid-write, possibly inside a character) is
        dropped, as a torn JSON line is."""
        if self.path is None:
            return []
        raw = self.path.read_bytes()
        chunks = raw.split(b"\n")
        lines = []
        for n, chunk in enumerate(chunks, 1):
            try:
                lines.append(chunk.decode("utf-8"))
            except UnicodeDecodeError:
                if n == len(chunks):
                    break
                raise FlexpaftError(
                    f"reply cache {self.path} is not UTF-8 text (line {n}): it is damaged or not "
                    "a flexpaft reply cache; delete it (its replies are asked for again) or give "
                    "another --cache file"
                ) from None
        return lines

    @staticmethod
    def _key(row: dict[str, Any]) -> tuple:
        # The endpoint is part of the key: the same model name behind another URL (a local
        # server, a proxy) is another generator. Rows without it predate this and never match.
        return (
            row.get("endpoint", ""),
            row["generator"],
            row["strategy"],
            int(row["index"]),
            row["prompt_sha"],
        )

    def get(self, row: dict[str, Any]) -> str | None:
        return self._replies.get(self._key(row))

    def put(self, row: dict[str, Any], reply: str) -> None:
        self._replies[self._key(row)] = reply
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One write() on an O_APPEND file per line: runs sharing a cache file append whole
            # lines, never interleaved pieces of two (a buffered text file may split a long
            # line into several writes).
            line = (json.dumps({**row, "reply": reply}, ensure_ascii=False) + "\n").encode()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError as e:
                raise write_error(e, self.path) from None  # a full disk: name the file
            finally:
                os.close(fd)

    def __len__(self) -> int:
        return len(self._replies)


# ---- the generation run ------------------------------------------------------------------------
@dataclass
class LLMGeneration:
    """Templates from the LLMs, each with its source ("openai:m/zero_shot"), and run counts."""

    prompts: PromptSet
    sources: list[str]
    stats: dict[str, dict[str, int]] = field(default_factory=dict)

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for counts in self.stats.values():
            for k, v in counts.items():
                out[k] = out.get(k, 0) + v
        return out


def generate_with_llms(
    task: TaskSpec,
    fmt: AnswerFormat,
    models: list[ChatModel],
    *,
    n_zero_shot: int = 20,
    n_few_shot: int = 20,
    per_request: int = 5,
    seeds: list[str] | None = None,
    n_examples: int = 3,
    cache: ReplyCache | str | Path | None = None,
    seed: int = 0,
    temperature: float = 1.0,
    max_tokens: int = 1024,
    max_requests_factor: int = 2,
) -> LLMGeneration:
    """Ask every model for ``n_zero_shot`` + ``n_few_shot`` templates (the paper's 20 + 20).

    Requests ask for ``per_request`` templates each and go on until a strategy has its count of
    valid templates or ``max_requests_factor`` times the needed requests are spent. Invalid and
    unparsable output is counted, never fatal; invalid templates are returned too, so the filter
    report can show them. Few-shot examples are the task's own template for ``fmt`` plus
    ``seeds``, ``n_examples`` drawn per request.
    """
    fmt = AnswerFormat.parse(fmt)
    task.check_format(fmt)
    if per_request < 1:
        raise FlexpaftError(f"templates per request must be at least 1, got {per_request}")
    if not isinstance(cache, ReplyCache):
        cache = ReplyCache(cache)
    pool = list(
        dict.fromkeys(
            ([task.templates[fmt.value]] if fmt.value in task.templates else []) + list(seeds or [])
        )
    )
    if n_few_shot > 0 and not pool:
        raise FlexpaftError(
            f"few-shot generation needs seed templates and task {task.name} has none for the "
            f"{fmt.value} format: pass a seeds file, or set the few-shot count to 0"
        )
    texts: list[str] = []
    sources: list[str] = []
    stats: dict[str, dict[str, int]] = {}
    for model in models:
        for strategy, wanted in (("zero_shot", n_zero_shot), ("few_shot", n_few_shot)):
            if wanted <= 0:
                continue
            counts = {"requests": 0, "cached": 0, "malformed": 0, "parsed": 0, "valid": 0}
            stats[f"{model.name}/{strategy}"] = counts
            max_requests = max_requests_factor * -(-wanted // per_request)
            valid = 0
            for index in range(max_requests):
                if valid >= wanted:
                    break
                k = min(per_request, wanted - valid)
                rng = random.Random(f"{seed}:{model.name}:{strategy}:{index}")
                examples = None
                if strategy == "few_shot":
                    examples = rng.sample(pool, min(n_examples, len(pool)))
                messages = meta_messages(task, fmt, k, examples)
                request = {
                    "messages": messages,
                    "temperature": temperature,
                    "max_tokens": max_tokens,
                }
                row = {
                    "endpoint": getattr(model, "url", "") or "",
                    "generator": model.name,
                    "strategy": strategy,
                    "index": index,
                    "task": task.name,
                    "format": fmt.value,
                    "prompt_sha": hashlib.sha256(json.dumps(request).encode()).hexdigest()[:16],
                }
                reply = cache.get(row)
                if reply is None:
                    counts["requests"] += 1
                    replies = _ask(model, messages, temperature, max_tokens, rng)
                    reply = replies[0] if replies else ""
                    found = parse_reply(reply)
                    if found:
                        # Only usable replies are kept: a failed or unparsable one is asked
                        # again on the next run instead of failing the same way forever.
                        cache.put(row, reply)
                else:
                    counts["cached"] += 1
                    found = parse_reply(reply)
                if not found:
                    counts["malformed"] += 1
                counts["parsed"] += len(found)
                for t in found:
                    ok = not Template(t).problems(task, fmt)
                    if ok and valid >= wanted:
                        continue
                    valid += ok
                    counts["valid"] += ok
                    texts.append(t)
                    sources.append(f"{model.name}/{strategy}")
    prompts = PromptSet(
        [Template(t, template_id(t)) for t in texts], f"{task.name}.{fmt.value}.llm"
    )
    return LLMGeneration(prompts, sources, stats)


def _ask(
    model: ChatModel,
    messages: list[Message],
    temperature: float,
    max_tokens: int,
    rng: random.Random,
) -> list[str]:
    if isinstance(model, HFChat):
        # A seed per request makes a local model's replies reproducible run to run.
        seed = rng.randrange(2**31)
        return model.complete(
            messages, 1, temperature=temperature, max_tokens=max_tokens, seed=seed
        )
    return model.complete(messages, 1, temperature=temperature, max_tokens=max_tokens)
