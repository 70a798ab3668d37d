"""Chat backends that LLM prompt generation asks: one small protocol, two implementations.

``ChatModel.complete(messages, n) -> list[str]`` is all the generator needs (``llm.py``):

* ``OpenAIChat``: any OpenAI-compatible ``/v1/chat/completions`` endpoint, stdlib only, with
  timeouts, exponential backoff with jitter on 429/5xx/timeouts, ``Retry-After`` (capped and
  announced), a client-side request rate limit (``RateLimiter``), and fast failure when the
  endpoint cannot be reached at all. The API key is read from the environment at request time
  and never stored or logged; an error body that echoes it is scrubbed.
* ``HFChat``: a local Hugging Face causal LM, sampled, through its chat template if it has one.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from flexpaft.errors import FlexpaftError

log = logging.getLogger(__name__)

Message = dict[str, str]
# The longest wait between tries unless told otherwise: a server asking for a day (a
# ``Retry-After: 99999``) gets a try a minute, each wait announced, instead of a silent hang.
MAX_RETRY_WAIT = 60.0


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
        return _choices(raw, f"{self.url} ({self.model})", self._scrub)

    def _scrub(self, text: str) -> str:
        key = os.environ.get(self.api_key_env, "")
        return text.replace(key, "***") if key else text


def _choices(raw: bytes, where: str, scrub: Callable[[str], str] = str) -> list[str]:
    """Reply texts from a chat-completions body.

    A 200 whose body is not one (a proxy's HTML page, a server of another API under a wrong
    --base-url, an error object) is one line naming the endpoint and what it sent: every
    request would get the same, and counting them as empty replies ended, requests later, in
    "prompt set of 0 templates is too small to split" without a word about the endpoint.
    """
    try:
        data = json.loads(raw)
    except ValueError:  # UnicodeDecodeError included
        why = "not JSON"
    else:
        try:
            return [str(c["message"]["content"] or "") for c in data["choices"]]
        except (KeyError, TypeError, IndexError):
            why = "JSON without choices[].message.content"
    text = " ".join(raw[:200].decode("utf-8", "replace").split())
    excerpt = scrub(text[:120] + ("..." if len(text) > 120 or len(raw) > 200 else ""))
    raise FlexpaftError(
        f"{where}: the reply (HTTP 200) is {why}, not a chat completion: {excerpt!r}; is "
        "--base-url an OpenAI-compatible API (ending in /v1)?"
    )


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
