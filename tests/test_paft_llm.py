"""LLM generators without network: recorded replies and a stub HTTP server on 127.0.0.1."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flexpaft.errors import FlexpaftError
from flexpaft.prompts.generate.clients import HFChat, OpenAIChat, RateLimiter
from flexpaft.prompts.generate.llm import ReplyCache, generate_with_llms
from flexpaft.prompts.generate.meta import meta_messages, parse_reply
from flexpaft.tasks import BUILTIN_TASKS, AnswerFormat

PIQA = BUILTIN_TASKS["piqa"]
LET = AnswerFormat.LETTER
SECRET = "sk-test-DO-NOT-LEAK-123"

# ---- recorded replies ---------------------------------------------------------------------------
JSON_REPLY = json.dumps(
    [
        "Goal: {goal}\nA. {sol1}\nB. {sol2}\nAnswer:",
        "Which works? {goal}\n(A) {sol1}\n(B) {sol2}\nThe answer is",
    ]
)
FENCED_REPLY = (
    "Sure! Here are the templates:\n```json\n"
    '["Task: {goal}\\nA) {sol1}\\nB) {sol2}\\nCorrect option:"]\n```\nHope this helps.'
)
NUMBERED_REPLY = """Here are 2 templates:
1. Consider the goal: {goal}
A. {sol1}
B. {sol2}
Answer:
2. "Pick one for {goal}: A. {sol1} B. {sol2}. Answer:"
"""
GARBAGE_REPLY = "I'm sorry, I cannot help with that."


def test_parse_json_array():
    assert parse_reply(JSON_REPLY) == json.loads(JSON_REPLY)


def test_parse_code_fence_with_prose_and_escaped_newlines():
    assert parse_reply(FENCED_REPLY) == ["Task: {goal}\nA) {sol1}\nB) {sol2}\nCorrect option:"]


def test_parse_numbered_multiline_items_and_quotes():
    assert parse_reply(NUMBERED_REPLY) == [
        "Consider the goal: {goal}\nA. {sol1}\nB. {sol2}\nAnswer:",
        "Pick one for {goal}: A. {sol1} B. {sol2}. Answer:",
    ]


def test_parse_template_headers_and_blocks():
    reply = (
        "Template 1: Q: {goal} A. {sol1} B. {sol2} Answer:\nTemplate 2: {goal}? {sol1} or {sol2}\n"
    )
    assert parse_reply(reply) == [
        "Q: {goal} A. {sol1} B. {sol2} Answer:",
        "{goal}? {sol1} or {sol2}",
    ]
    blocks = "Goal: {goal}\nAnswer:\n\n---\n\nObjective - {goal}\nAnswer:  "
    assert parse_reply(blocks) == ["Goal: {goal}\nAnswer:", "Objective - {goal}\nAnswer:"]


def test_parse_garbage_gives_nothing():
    assert parse_reply(GARBAGE_REPLY) == []
    assert parse_reply('["no slots here", 3, null]') == []
    assert parse_reply("") == []


def test_meta_prompts_name_the_slots_and_show_seeds_only_when_few_shot():
    zero = meta_messages(PIQA, LET, 5)[1]["content"]
    assert "{goal}" in zero and "{sol1}" in zero and "{sol2}" in zero
    assert "Write 5 different prompt templates" in zero
    assert "Examples of good templates" not in zero
    few = meta_messages(PIQA, LET, 5, ["SEED {goal} {sol1} {sol2}"])[1]["content"]
    assert "Example 1:\nSEED {goal} {sol1} {sol2}" in few
    cloze = meta_messages(BUILTIN_TASKS["winogrande"], AnswerFormat.OPTION_TEXT, 3)[1]["content"]
    assert "{before_blank} {option}{after_blank}" in cloze


# ---- stub server --------------------------------------------------------------------------------
class Stub:
    """A scripted chat-completions server: each request pops the next (status, headers, body)."""

    def __init__(self, script=None, default=None, delay=0.0):
        self.script = list(script or [])
        self.default = default
        self.delay = delay
        self.requests = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                stub.requests.append((dict(self.headers), json.loads(self.rfile.read(length))))
                status, headers, body = stub.script.pop(0) if stub.script else stub.default
                delay, stub.delay = stub.delay, 0.0  # only the first request is slow
                time.sleep(delay)
                data = body.encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def ok(content):
    return (200, {}, json.dumps({"choices": [{"message": {"content": content}}]}))


def client(url, sleeps, **kw):
    kw.setdefault("timeout", 2.0)
    return OpenAIChat("stub-model", url, api_key_env="FLEXPAFT_TEST_KEY", sleep=sleeps.append, **kw)


MSG = [{"role": "user", "content": "hi"}]


def test_retries_5xx_with_exponential_backoff_and_jitter(monkeypatch):
    monkeypatch.setenv("FLEXPAFT_TEST_KEY", SECRET)
    sleeps = []
    with Stub([(503, {}, "busy"), (502, {}, "bad gateway"), ok("done")]) as stub:
        assert client(stub.url, sleeps, backoff=0.1).complete(MSG) == ["done"]
    assert len(stub.requests) == 3
    # Equal jitter: attempt k waits between half and all of 0.1 * 2**k.
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2
    headers, body = stub.requests[0]
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert body["model"] == "stub-model" and body["messages"] == MSG


def test_retry_after_is_honoured():
    sleeps = []
    with Stub([(429, {"Retry-After": "0.25"}, "slow down"), ok("x")]) as stub:
        assert client(stub.url, sleeps, backoff=5.0).complete(MSG) == ["x"]
    assert sleeps == [0.25]


def test_gives_up_after_max_retries_with_one_line():
    sleeps = []
    with Stub(default=(500, {}, "boom")) as stub:
        with pytest.raises(FlexpaftError, match=r"gave up after 3 attempts: HTTP 500 boom"):
            client(stub.url, sleeps, backoff=0.001, max_retries=2).complete(MSG)
    assert len(stub.requests) == 3 and len(sleeps) == 2


def test_client_errors_are_not_retried_and_key_is_scrubbed(monkeypatch):
    monkeypatch.setenv("FLEXPAFT_TEST_KEY", SECRET)
    sleeps = []
    with Stub([(401, {}, f"invalid key {SECRET}")]) as stub:
        with pytest.raises(FlexpaftError) as e:
            client(stub.url, sleeps).complete(MSG)
    assert "HTTP 401" in str(e.value) and "$FLEXPAFT_TEST_KEY" in str(e.value)
    assert SECRET not in str(e.value)
    assert len(stub.requests) == 1 and sleeps == []


def test_timeout_is_retried():
    sleeps = []
    with Stub([ok("late"), ok("on time")], delay=0.6) as stub:
        c = client(stub.url, sleeps, timeout=0.2, backoff=0.001)
        assert c.complete(MSG) == ["on time"]
    assert len(sleeps) == 1


def test_closed_port_fails_fast_naming_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = []
    start = time.monotonic()
    with pytest.raises(
        FlexpaftError, match=rf"cannot reach http://127.0.0.1:{port}/v1/chat/completions: .*refused"
    ):
        client(f"http://127.0.0.1:{port}/v1", sleeps).complete(MSG)
    assert time.monotonic() - start < 2 and sleeps == []


def test_rate_limiter_spaces_requests():
    now = [100.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    limiter = RateLimiter(rpm=30, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limiter.wait()
    assert slept == [2.0, 2.0]
    now[0] += 10  # idle longer than the interval: no wait
    limiter.wait()
    assert slept == [2.0, 2.0]


@pytest.mark.parametrize(
    "body, why",
    [
        ("<html><body>502 gateway</body></html>", "is not JSON"),
        ('{"error": {"message": "no such route"}}', "is JSON without choices[].message.content"),
    ],
)
def test_malformed_body_is_one_line_naming_the_endpoint(body, why):
    with Stub([(200, {}, body)]) as stub:
        with pytest.raises(FlexpaftError) as e:
            client(stub.url, []).complete(MSG)
        assert len(stub.requests) == 1, "a body of another API is not retried"
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{stub.url}/chat/completions (stub-model): the reply (HTTP 200) ")
    assert why in message and repr(" ".join(body.split())[:30])[:-1] in message
    assert "is --base-url an OpenAI-compatible API" in message


def test_malformed_body_excerpt_is_short_and_scrubbed(monkeypatch):
    monkeypatch.setenv("FLEXPAFT_TEST_KEY", SECRET)
    with Stub([(200, {}, f"echo {SECRET} " + "x" * 5000)]) as stub:
        with pytest.raises(FlexpaftError) as e:
            client(stub.url, []).complete(MSG)
    assert SECRET not in str(e.value) and "***" in str(e.value) and len(str(e.value)) < 300


def test_generate_against_a_malformed_endpoint_is_one_line(tmp_path, capsys):
    from flexpaft.cli import main

    out = tmp_path / "out"
    with Stub(default=(200, {}, "<html>sign in</html>")) as stub:
        code = main(["-q", "prompts", "generate", "--task", "piqa", "--format", "letter",
                     "--out", str(out), "--generator", "openai", "--models", "m1",
                     "--base-url", stub.url, "--n-zero-shot", "2", "--n-few-shot", "0"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    # Before: "prompt set of 0 templates is too small to split", naming no endpoint.
    assert err[0] == (
        f"flexpaft: error: {stub.url}/chat/completions (m1): the reply (HTTP 200) is not JSON, "
        "not a chat completion: '<html>sign in</html>'; is --base-url an OpenAI-compatible API "
        "(ending in /v1)?"
    )
    assert not (out / "llm_cache.jsonl").exists()


# ---- the generation run -------------------------------------------------------------------------
def test_generation_run_counts_malformed_resumes_from_cache_and_never_stores_the_key(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("FLEXPAFT_TEST_KEY", SECRET)
    cache = tmp_path / "cache.jsonl"
    script = [ok(JSON_REPLY), ok(GARBAGE_REPLY), ok(NUMBERED_REPLY), ok(FENCED_REPLY)]
    with Stub(script, default=ok(GARBAGE_REPLY)) as stub:
        gen = generate_with_llms(
            PIQA,
            LET,
            [client(stub.url, [])],
            n_zero_shot=4,
            n_few_shot=1,
            per_request=2,
            cache=cache,
        )
        first = len(stub.requests)
        again = generate_with_llms(
            PIQA,
            LET,
            [client(stub.url, [])],
            n_zero_shot=4,
            n_few_shot=1,
            per_request=2,
            cache=cache,
        )
        # The rerun asks again only for the garbage reply, which was not cached.
        assert len(stub.requests) == first + 1
    # zero-shot: JSON (2 valid), garbage (malformed), numbered (2 valid) -> 4 valid after 3 requests
    # few-shot: the fenced reply gives its 1 template.
    zs, fs = gen.stats["openai:stub-model/zero_shot"], gen.stats["openai:stub-model/few_shot"]
    assert (zs["requests"], zs["malformed"], zs["valid"]) == (3, 1, 4)
    assert (fs["requests"], fs["valid"]) == (1, 1)
    assert first == 4
    assert gen.prompts.texts == again.prompts.texts and len(gen.prompts) == 5
    assert gen.sources.count("openai:stub-model/few_shot") == 1
    assert again.totals()["requests"] == 1 and again.totals()["cached"] == 3
    # The few-shot request showed the task's own template as an example.
    assert PIQA.templates["letter"] in stub.requests[3][1]["messages"][1]["content"]
    assert SECRET not in cache.read_text()
    assert len(ReplyCache(cache)) == 3


def test_request_budget_bounds_a_model_that_only_talks():
    with Stub(default=ok(GARBAGE_REPLY)) as stub:
        gen = generate_with_llms(
            PIQA, LET, [client(stub.url, [])], n_zero_shot=6, n_few_shot=0, per_request=3
        )
    # 2 requests would be needed; the default budget is twice that.
    assert len(stub.requests) == 4 and len(gen.prompts) == 0
    assert gen.stats["openai:stub-model/zero_shot"]["malformed"] == 4


def test_torn_cache_line_is_ignored(tmp_path):
    path = tmp_path / "c.jsonl"
    row = {"generator": "g", "strategy": "zero_shot", "index": 0, "prompt_sha": "x", "reply": "r"}
    path.write_text(json.dumps(row) + "\n" + '{"generator": "g", "stra')
    cache = ReplyCache(path)
    assert len(cache) == 1 and cache.get(row) == "r"


def test_cache_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    path = tmp_path / "c.jsonl"
    row = {"generator": "g", "strategy": "zero_shot", "index": 0, "prompt_sha": "x", "reply": "r"}
    good = json.dumps(row).encode() + b"\n"
    path.write_bytes(good + b"\x89PNG\r\n\x1a\n\x00\xff\xfe" + good)
    before = path.read_bytes()
    with pytest.raises(FlexpaftError) as e:
        ReplyCache(path)
    assert str(e.value) == (
        f"reply cache {path} is not UTF-8 text (line 2): it is damaged or not a flexpaft reply "
        "cache; delete it (its replies are asked for again) or give another --cache file"
    )
    assert path.read_bytes() == before, "nothing is dropped or rewritten"


def test_torn_last_line_inside_a_character_is_ignored(tmp_path):
    # Replies are written with ensure_ascii=False: a kill mid-write can cut a character in two.
    path = tmp_path / "c.jsonl"
    row = {"generator": "g", "strategy": "zero_shot", "index": 0, "prompt_sha": "x", "reply": "é"}
    whole = json.dumps(row, ensure_ascii=False).encode()
    path.write_bytes(whole + b"\n" + whole[: whole.index("é".encode()) + 1])
    cache = ReplyCache(path)
    assert len(cache) == 1 and cache.get(row) == "é"


# ---- local Hugging Face generator ---------------------------------------------------------------
def _tiny_hf(with_chat_template):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "Goal:", "{goal}", "A.", "{sol1}", "B.", "{sol2}", "Answer:"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    if with_chat_template:
        tokenizer.chat_template = (
            "{% for m in messages %}<s> {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}"
        )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
    )
    return HFChat(LlamaForCausalLM(config).eval(), tokenizer, name="tiny")


@pytest.mark.parametrize("with_chat_template", [True, False])
def test_hf_generator_samples_reproducibly(with_chat_template):
    chat = _tiny_hf(with_chat_template)
    assert chat.name == "hf:tiny"
    text = chat.prompt_text(MSG)
    assert text.endswith("assistant:") if with_chat_template else text.endswith("Assistant:")
    a = chat.complete(MSG, n=2, max_tokens=6, seed=1)
    b = chat.complete(MSG, n=2, max_tokens=6, seed=1)
    assert len(a) == 2 and a == b and all(isinstance(x, str) for x in a)


def test_hf_generator_in_a_run_with_stubbed_output(tmp_path):
    chat = _tiny_hf(True)
    # A random tiny model writes noise; pin its reply to check the run's plumbing end to end.
    chat.complete = lambda messages, n=1, **kw: [JSON_REPLY]
    gen = generate_with_llms(PIQA, LET, [chat], n_zero_shot=2, n_few_shot=0, cache=tmp_path / "c")
    assert gen.prompts.texts == json.loads(JSON_REPLY)
    assert gen.sources == ["hf:tiny/zero_shot"] * 2


def test_generate_command_with_openai_stub_and_offline(tmp_path, monkeypatch):
    import argparse

    from flexpaft.commands import prompts_generate as generate_cmd
    from flexpaft.prompts.promptset import PromptSet

    monkeypatch.setenv("MY_GEN_KEY", SECRET)
    parser = argparse.ArgumentParser()
    generate_cmd.add_arguments(parser)
    out = tmp_path / "out"
    with Stub(default=ok(JSON_REPLY)) as stub:
        argv = [
            "--task", "piqa", "--format", "letter", "--out", str(out),
            "--generator", "openai", "--generator", "offline", "--n", "40",
            "--models", "m1,m2", "--base-url", stub.url, "--api-key-env", "MY_GEN_KEY",
            "--n-zero-shot", "2", "--n-few-shot", "2", "--min-test", "5",
        ]  # fmt: skip
        assert generate_cmd.run(parser.parse_args(argv)) == 0
        # 2 models x 2 strategies, one request each (each reply has the 2 templates wanted).
        assert len(stub.requests) == 4
        assert {r[1]["model"] for r in stub.requests} == {"m1", "m2"}
        assert all(r[0]["Authorization"] == f"Bearer {SECRET}" for r in stub.requests)
        generate_cmd.run(parser.parse_args(argv))
        assert len(stub.requests) == 4, "the rerun is served from the cache"
    rows = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines()]
    sources = [r["source"] for r in rows]
    assert sources[:2] == ["openai:m1/zero_shot"] * 2 and sources.count("offline") == 40
    report = json.loads((out / "filter_report.json").read_text())
    # The same two templates from all four requests: 6 of the 8 are exact duplicates.
    assert report["counts"]["duplicate"] == 6
    assert report["generation"]["llm_totals"]["requests"] == 0  # the rerun's counts
    for name in ("candidates.jsonl", "train.jsonl", "test.jsonl", "adversarial.jsonl",
                 "filter_report.json", "filter_report.md", "llm_cache.jsonl"):  # fmt: skip
        assert SECRET not in (out / name).read_text()
    assert len(PromptSet.load(out / "test.jsonl")) == 5


def test_cache_is_keyed_by_endpoint_and_never_keeps_failures(tmp_path):
    cache = tmp_path / "cache.jsonl"

    def gen(url):
        return generate_with_llms(
            PIQA, LET, [client(url, [])], n_zero_shot=2, n_few_shot=0, per_request=2, cache=cache
        )

    # A 200 whose body is not chat-completions JSON stops the run, and nothing is cached.
    with Stub(default=(200, {}, "<html>gateway</html>")) as broken:
        with pytest.raises(FlexpaftError, match="is not JSON, not a chat completion"):
            gen(broken.url)
    assert len(ReplyCache(cache)) == 0
    # A reply that is chat completions but holds no template: asked again, never cached.
    with Stub(default=ok(GARBAGE_REPLY)) as talker:
        first = gen(talker.url)
    assert first.totals()["malformed"] >= 1 and len(ReplyCache(cache)) == 0
    # Against a working endpoint the same model name is asked again, not served the failure.
    with Stub(default=ok(JSON_REPLY)) as good:
        second = gen(good.url)
        assert len(good.requests) == 1 and len(second.prompts) == 2
    assert len(ReplyCache(cache)) == 1
    # Another URL under the same model name is another generator: no cache hit (another path,
    # as the stub may get the same port again).
    with Stub(default=ok(JSON_REPLY)) as other:
        gen(other.url.replace("/v1", "/v2"))
        assert len(other.requests) == 1


def test_per_request_zero_is_a_clear_error():
    with pytest.raises(FlexpaftError, match="per request must be at least 1"):
        generate_with_llms(PIQA, LET, [], n_zero_shot=2, per_request=0)
