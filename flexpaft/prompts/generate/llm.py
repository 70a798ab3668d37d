"""LLM-written candidate prompts: the PAFT paper's dual strategy (zero-shot and few-shot).

Each generator model is asked, through a meta-prompt, for templates of the task: zero-shot shows
only the task description and slot names, few-shot also shows a few human-written seed templates.
Two backends implement one small protocol, ``complete(messages, n) -> list[str]``:

* ``OpenAIChat``: any OpenAI-compatible ``/v1/chat/completions`` endpoint, stdlib only, with
  timeouts, exponential backoff with jitter on 429/5xx/timeouts, ``Retry-After``, a client-side
  request rate limit, and fast failure when the endpoint cannot be reached at all.
* ``HFChat``: a local Hugging Face causal LM, sampled, through its chat template if it has one.

Replies are cached in a jsonl file keyed by (generator, strategy, request index, meta-prompt
hash), so an interrupted or repeated run never pays twice for a reply it already has. The API
key is read from the environment at request time and never stored, logged or cached.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

from flexpaft.errors import FlexpaftError
from flexpaft.io import write_error
from flexpaft.prompts.generate.phrasings import enumeration_slots
from flexpaft.prompts.promptset import PromptSet, template_id
from flexpaft.prompts.template import Template
from flexpaft.tasks.spec import OPTION_SLOT, AnswerFormat, TaskSpec

log = logging.getLogger(__name__)

Message = dict[str, str]
# The longest wait between tries unless told otherwise: a server asking for a day (a
# ``Retry-After: 99999``) gets a try a minute, each wait announced, instead of a silent hang.
MAX_RETRY_WAIT = 60.0
STRATEGIES = ("zero_shot", "few_shot")


class ChatModel(Protocol):
    """Anything that can answer a chat: ``name`` identifies it in caches and provenance."""

    name: str

    def complete(
        self,
        messages: list[Message],
        n: int = 1,
        *,
        temperature: float = 1.0,
        max_tokens: int = 1024,
    ) -> list[str]: ...


# ---- OpenAI-compatible endpoint ----------------------------------------------------------------
class RateLimiter:
    """At most ``rpm`` request starts per minute, spaced evenly (no bursts)."""

    def __init__(
        self,
        rpm: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.interval = 60.0 / rpm if rpm else 0.0
        self._clock, self._sleep = clock, sleep
        self._next = float("-inf")

    def wait(self) -> None:
        if not self.interval:
            return
        now = self._clock()
        if self._next > now:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class _Retryable(Exception):
    def __init__(self, what: str, retry_after: float | None = None):
        super().__init__(what)
        self.retry_after = retry_after


class OpenAIChat:
    """One model behind an OpenAI-compatible chat-completions endpoint."""

    def __init__(
        self,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        max_retry_after: float = MAX_RETRY_WAIT,
        rpm: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        seed: int = 0,
    ):
        self.model = model
        self.name = f"openai:{model}"
        base = base_url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.api_key_env = api_key_env
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff, self.max_backoff, self.max_retry_after = backoff, max_backoff, max_retry_after
        self._sleep = sleep
        self.limiter = RateLimiter(rpm, sleep=sleep)
        self._jitter = random.Random(seed)
        self.requests_made = 0

    def complete(
        self,
        messages: list[Message],
        n: int = 1,
        *,
        temperature: float = 1.0,
        max_tokens: int = 1024,
    ) -> list[str]:
        payload = {"model": self.model, "messages": messages, "temperature": temperature}
        payload["max_tokens"] = max_tokens
        if n != 1:
            payload["n"] = n
        body = json.dumps(payload).encode()
        last = ""
        for attempt in range(self.max_retries + 1):
            self.limiter.wait()
            try:
                return self._post(body)
            except _Retryable as e:
                last = str(e)
                if attempt == self.max_retries:
                    break
                delay = self._delay(attempt, e.retry_after)
                asked = ""
                if e.retry_after is not None and e.retry_after > delay:
                    asked = (
                        f" (the server asked for {e.retry_after:.0f} s; capped by --max-retry-wait)"
                    )
                log.warning(
                    "%s (%s): %s; retry %d of %d in %.1f s%s",
                    self.url,
                    self.model,
                    last,
                    attempt + 1,
                    self.max_retries,
                    delay,
                    asked,
                )
                self._sleep(delay)
        raise FlexpaftError(
            f"{self.url} ({self.model}): gave up after {self.max_retries + 1} attempts: {last}"
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        # Exponential backoff with "equal jitter": half fixed, half random, so clients that
        # failed together do not retry together.
        cap = min(self.max_backoff, self.backoff * 2**attempt)
        return cap / 2 + self._jitter.uniform(0, cap / 2)

    def _post(self, body: bytes) -> list[str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        self.requests_made += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            detail = self._scrub(e.read()[:300].decode("utf-8", "replace").strip())
            if e.code == 429 or e.code >= 500:
                raise _Retryable(
                    f"HTTP {e.code} {detail}", _retry_after_seconds(e.headers.get("Retry-After"))
                ) from None
            hint = f" (is ${self.api_key_env} set?)" if e.code in (401, 403) else ""
            raise FlexpaftError(
                f"{self.url} ({self.model}): HTTP {e.code}{hint}: {detail or e.reason}"
            ) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise _Retryable(f"timed out after {self.timeout} s") from None
            # Refused connection, unknown host, TLS failure: retrying will not help.
            raise FlexpaftError(f"cannot reach {self.url}: {e.reason}") from None
        except TimeoutError:
            raise _Retryable(f"timed out after {self.timeout} s") from None
        except (ConnectionResetError, http.client.HTTPException) as e:
            # The server was reached but dropped the connection: transient.
            raise _Retryable(f"connection dropped ({type(e).__name__})") from None
        return _choices(raw)

    def _scrub(self, text: str) -> str:
        key = os.environ.get(self.api_key_env, "")
        return text.replace(key, "***") if key else text


def _choices(raw: bytes) -> list[str]:
    """Reply texts from a chat-completions body; a malformed body gives no replies."""
    try:
        data = json.loads(raw)
        return [str(c["message"]["content"] or "") for c in data["choices"]]
    except (ValueError, KeyError, TypeError):
        return []


# ---- local Hugging Face model ------------------------------------------------------------------
class HFChat:
    """A local causal LM, sampled; uses the tokenizer's chat template when it has one."""

    def __init__(self, model: Any, tokenizer: Any, name: str = "hf", top_p: float = 0.95):
        self.model, self.tokenizer, self.top_p = model, tokenizer, top_p
        self.name = name if name.startswith("hf:") else f"hf:{name}"

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "cpu", dtype: str = "auto") -> HFChat:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            # safetensors only: a pickled checkpoint can run code when it is loaded.
            model = AutoModelForCausalLM.from_pretrained(
                name_or_path, dtype=dtype, use_safetensors=True
            ).to(device)
        except (OSError, ValueError) as e:
            line = (str(e).splitlines() or [type(e).__name__])[0]
            raise FlexpaftError(f"cannot load generator model {name_or_path!r}: {line}") from None
        model.eval()
        return cls(model, tokenizer, name=name_or_path)

    def prompt_text(self, messages: list[Message]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        # A base model: a plain transcript that ends where the assistant's turn begins.
        turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        return "\n\n".join(turns) + "\n\nAssistant:"

    def complete(
        self,
        messages: list[Message],
        n: int = 1,
        *,
        temperature: float = 1.0,
        max_tokens: int = 1024,
        seed: int | None = None,
    ) -> list[str]:
        import torch

        if seed is not None:
            torch.manual_seed(seed)
        text = self.prompt_text(messages)
        # The chat template already holds the special tokens it needs.
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(
                **inputs,
                do_sample=True,
                temperature=max(temperature, 1e-3),
                top_p=self.top_p,
                max_new_tokens=max_tokens,
                num_return_sequences=n,
                pad_token_id=pad,
            )
        start = inputs["input_ids"].shape[1]
        return [self.tokenizer.decode(seq[start:], skip_special_tokens=True) for seq in out]


# ---- meta-prompts ------------------------------------------------------------------------------
SYSTEM_PROMPT = (
    "You write prompt templates used to test language models on a task. A template is a complete "
    "prompt with placeholders in curly braces that are filled in later with one example's "
    "fields. Reply with a JSON array of strings and nothing else."
)


def slot_guide(task: TaskSpec, fmt: AnswerFormat) -> list[tuple[str, str]]:
    """(placeholder, meaning) pairs a meta-prompt offers for ``task`` in ``fmt``."""
    per_option = enumeration_slots(task)
    option_fields = set(task.options) if isinstance(task.options, tuple) else set()
    blank = fmt is AnswerFormat.OPTION_TEXT and bool(task.blank_field)
    guide = []
    for f in task.fields:
        if f in option_fields or (blank and f == task.blank_field):
            continue
        guide.append((f, f"the example's {f.replace('_', ' ')}"))
    if blank:
        guide += [
            ("before_blank", f"the {task.blank_field} up to the blank"),
            (OPTION_SLOT, "a candidate filler for the blank"),
            ("after_blank", f"the rest of the {task.blank_field} after the blank"),
        ]
    shows_options = fmt is AnswerFormat.LETTER or (
        fmt is AnswerFormat.GENERATION and not task.label_words
    )
    if shows_options:
        if per_option is None:
            guide.append(("options", "all options, already written as lines 'A. ...', 'B. ...'"))
        else:
            for i, synonyms in enumerate(per_option):
                # The dataset's own field name (sol1) where there is one, as in the paper's sets.
                guide.append((synonyms[-1], f"the text of option {chr(65 + i)}"))
        guide.append(("option_letters", "the option letters, e.g. 'A or B'"))
    if task.label_words and fmt in (AnswerFormat.LABEL_WORDS, AnswerFormat.GENERATION):
        guide.append(("label_words", f"the answer words: {' or '.join(task.label_words)}"))
    return guide


def format_rules(task: TaskSpec, fmt: AnswerFormat) -> list[str]:
    cue = "End with an answer cue such as 'Answer:' and put nothing after it."
    if fmt is AnswerFormat.LETTER:
        return [
            "List every option after its letter (A., B., ...).",
            cue + " The answer is a letter.",
        ]
    if fmt is AnswerFormat.LABEL_WORDS:
        return [cue + f" The answer is one word: {' or '.join(task.label_words)}."]
    if fmt is AnswerFormat.OPTION_TEXT:
        if task.blank_field:
            return [
                "Do not list the options. End the template with "
                "{before_blank} {" + OPTION_SLOT + "}{after_blank}, because each candidate "
                "filler is put in place of {" + OPTION_SLOT + "} and the sentence is scored."
            ]
        return [
            "Do not list the options. Put the example's content first and "
            + cue[0].lower()
            + cue[1:],
            "The text of each candidate answer is appended right after the cue and scored.",
        ]
    if task.label_words:
        return [f"Ask explicitly for exactly one word: {' or '.join(task.label_words)}.", cue]
    return [
        "List every option after its letter (A., B., ...).",
        "Ask explicitly for the letter of the correct option only.",
        cue,
    ]


def meta_messages(
    task: TaskSpec, fmt: AnswerFormat, k: int, examples: list[str] | None = None
) -> list[Message]:
    """Chat messages asking for ``k`` templates; ``examples`` makes it the few-shot variant."""
    lines = [f"Task: {task.description or task.name}", ""]
    lines.append(
        f"Write {k} different prompt templates for this task. Use only these placeholders:"
    )
    lines += [f"- {{{name}}}: {meaning}" for name, meaning in slot_guide(task, fmt)]
    lines += ["", "Rules:"]
    lines += [f"- {r}" for r in format_rules(task, fmt)]
    lines += [
        "- Use every placeholder at most once; write no other curly braces.",
        "- Vary the wording, the instructions, the labels and the layout between templates.",
        "- Inside the JSON strings, write line breaks as \\n.",
    ]
    if examples:
        lines += ["", "Examples of good templates:"]
        lines += [f"Example {i}:\n{e}\n" for i, e in enumerate(examples, 1)]
        lines.append("Write new templates; do not copy the examples.")
    lines += ["", f"Reply with a JSON array of {k} strings."]
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "\n".join(lines)},
    ]


# ---- reply parsing -----------------------------------------------------------------------------
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.S)
_ITEM = re.compile(
    r"^\s*(?:\d+\s*[.):]|[-*•]|(?:template|prompt)\s*#?\d+\s*[:.)-]?)\s*", re.IGNORECASE
)
_HAS_SLOT = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_TEXT_KEYS = ("template", "prompt", "text")


def parse_reply(reply: str) -> list[str]:
    """Templates in an LLM reply: a JSON array, code fences, a numbered list, or blocks.

    Whatever the layout, only pieces holding at least one ``{slot}`` are kept, so preambles
    ("Here are 5 templates:") fall away; a reply with none is malformed and gives [].
    """
    text = reply.strip()
    fences = _FENCE.findall(text)
    if fences:
        joined = "\n".join(fences)
        items = _json_items(joined)
        if items is None:
            items = [x for f in fences for x in (_listed_items(f) or [f])]
    else:
        items = _json_items(text)
        if items is None:
            items = _listed_items(text) or _blocks(text)
    out = []
    for item in items:
        t = _clean(item)
        if t and _HAS_SLOT.search(t):
            out.append(t)
    return out


def _json_items(text: str) -> list[str] | None:
    start, end = text.find("["), text.rfind("]")
    candidates = [text[start : end + 1]] if 0 <= start < end else []
    if text.lstrip().startswith("{"):
        candidates.append(text.strip())
    for chunk in candidates:
        try:
            data = json.loads(chunk)
        except ValueError:
            continue
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if isinstance(data, list):
            items = []
            for x in data:
                if isinstance(x, dict):
                    x = next((x[k] for k in _TEXT_KEYS if isinstance(x.get(k), str)), None)
                if isinstance(x, str):
                    items.append(x)
            return items
    return None


def _listed_items(text: str) -> list[str]:
    """Numbered or bulleted items; an item runs until the next item starts."""
    items: list[list[str]] = []
    for line in text.splitlines():
        m = _ITEM.match(line)
        if m:
            items.append([line[m.end() :]])
        elif items:
            items[-1].append(line)
    if len(items) < 2:
        return []
    return ["\n".join(lines).strip() for lines in items]


def _blocks(text: str) -> list[str]:
    return [b for b in re.split(r"\n\s*(?:---+)?\s*\n", text) if b.strip()]


def _clean(item: str) -> str:
    t = item.strip().rstrip(",").strip()
    for q in ('"', "'", "`"):
        if len(t) >= 2 and t[0] == q and t[-1] == q:
            t = t[1:-1]
    # A template never means backslash-n (same rule as PromptSet.load).
    t = t.replace("\\n", "\n")
    # The answer is appended after the cue, so no trailing whitespace; no blank edges either.
    return t.strip()


# ---- cache -------------------------------------------------------------------------------------
class ReplyCache:
    """Append-only jsonl of replies; a torn last line (a killed run) is ignored on load."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._replies: dict[tuple, str] = {}
        if self.path and self.path.is_dir():
            raise FlexpaftError(f"reply cache {self.path} is a directory; give a file (.jsonl)")
        if self.path and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self._replies[self._key(row)] = row["reply"]
                except (ValueError, KeyError, TypeError):
                    continue

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
