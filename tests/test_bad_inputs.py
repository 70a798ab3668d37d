"""The bad-input matrix: every verb, fed what a careless or unlucky user would feed it.

Each case runs in-process through ``flexpaft.cli.main`` (a subprocess per case would cost
seconds of imports) and must end the same way: exit status 2, one line on stderr starting with
``flexpaft: error:`` and naming the problem, no traceback, and nothing written or half-written:
the case's directory and the shared inputs are byte-for-byte what they were before.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import boolq_rows, write_jsonl

from flexpaft.cli import main

TEMPLATES = [
    "{passage}\nQuestion: {question}?\nAnswer:",
    "Passage: {passage}\nQ: {question}?\nA:",
    "Read: {passage}\nIs it true: {question}?\nReply yes or no:",
    "{question}? Context: {passage}\nAnswer:",
]
SECRET = "sk-live-0123456789abcdef"


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    """Good inputs every case starts from: data, prompts, a real adapter, eval results."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("shared-inputs")
    data = write_jsonl(root / "boolq.jsonl", boolq_rows(12))
    prompts = write_jsonl(root / "prompts.jsonl", [{"template": t} for t in TEMPLATES])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(root / "adapter")
    assert main(["-q", "eval", "-o", str(root / "ev"), "--set", f"model.name={tiny_model_dir}",
                 "--set", f"data.source={data}", "--set", "data.limit=4"]) == 0  # fmt: skip
    return {"root": root, "data": data, "prompts": prompts, "adapter": root / "adapter",
            "results": root / "ev", "model": tiny_model_dir}  # fmt: skip


class Case:
    """What one case can reach: the good inputs, and its own directory to plant bad ones."""

    def __init__(self, tmp: Path, shared: dict[str, Path]):
        self.tmp, self.s = tmp, shared
        self.out = tmp / "out"

    def file(self, name: str, content: str | bytes) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
        return p

    def jsonl(self, name: str, rows: list) -> Path:
        return self.file(name, "".join(json.dumps(r) + "\n" for r in rows))

    def adapter(self, drop: tuple[str, ...] = (), **replace: bytes | str) -> Path:
        """A copy of the good adapter with files removed or replaced."""
        dst = self.tmp / "adapter"
        shutil.copytree(self.s["adapter"], dst)
        for name in drop:
            (dst / name).unlink()
        for name, content in replace.items():
            name = name.replace("__", ".")
            (dst / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        return dst

    def keyfile(self, key: str, name: str, content: str | bytes) -> str:
        """``key=PATH`` of a planted file, for --set."""
        return f"{key}={self.file(name, content)}"

    def sets(self, *pairs: str) -> list[str]:
        return [x for p in pairs for x in ("--set", p)]

    def train(self, *pairs: str, source: Path | None = None, out: Path | None = None) -> list:
        base = [f"model.name={self.s['model']}", f"data.source={source or self.s['data']}",
                "optim.max_steps=1", "optim.num_workers=0", "data.max_length=64"]  # fmt: skip
        return ["train", "-o", out or self.out, *self.sets(*base, *pairs)]

    def eval(self, *pairs: str, out: Path | None = None) -> list:
        base = [f"model.name={self.s['model']}", f"data.source={self.s['data']}", "data.limit=4"]
        return ["eval", "-o", out or self.out, *self.sets(*base, *pairs)]


def _rows(**change) -> list[dict]:
    """BoolQ rows with row 3 (1-based) changed."""
    rows = boolq_rows(6)
    rows[2] = {**rows[2], **change}
    return [{k: v for k, v in r.items() if v is not ...} for r in rows]


def _word_rows() -> list:
    """BoolQ rows answered "yes"/"no", then blank lines 2 and 3, and "maybe" on line 4."""
    rows = [{**r, "answer": "yes" if r["answer"] else "no"} for r in boolq_rows(2)]
    return [rows[0], "", "", {**rows[1], "answer": "maybe"}]


PIQA = [{"goal": "open a jar", "sol1": "twist", "sol2": "hit", "label": 0}]


def _nan_adapter(c: Case) -> Path:
    from safetensors.torch import load_file, save_file

    dst = c.adapter()
    w = load_file(str(dst / "adapter_model.safetensors"))
    first = sorted(w)[0]
    w[first][0, 0] = math.nan
    save_file(w, str(dst / "adapter_model.safetensors"))
    return dst


def _results_with_digest(c: Case, digest: str) -> Path:
    data = json.loads((c.s["results"] / "results.json").read_text())
    data["data_digest"], data["name"] = digest, "other"
    return c.file("other/results.json", json.dumps(data))


CASES = {
    # ---- train: config values --------------------------------------------------------------
    "train-lr-nan": (lambda c: c.train("optim.lr=.nan"), "optim.lr: expected a finite number"),
    "train-lr-inf": (lambda c: c.train("optim.lr=.inf"), "expected a finite number, got inf"),
    "train-lr-nan-word": (lambda c: c.train("optim.lr=nan"), "expected a finite number, got nan"),
    "train-lr-negative": (lambda c: c.train("optim.lr=-1e-4"), "optim.lr must be positive"),
    "train-lr-text": (lambda c: c.train("optim.lr=fast"), "optim.lr: expected a number"),
    "train-seed-negative": (lambda c: c.train("seed=-1"), "seed must be between 0 and"),
    "train-limit-negative": (lambda c: c.train("data.limit=-14"), "data.limit must be 0 or more"),
    "train-skip-negative": (lambda c: c.train("data.skip=-3"), "data.skip must be 0 or more"),
    "train-epochs-negative": (
        lambda c: c.train("optim.epochs=-1"),
        "optim.epochs must be positive",
    ),
    "train-epochs-zero": (lambda c: c.train("optim.epochs=0"), "optim.epochs must be positive"),
    "train-max-steps-negative": (
        lambda c: c.train("optim.max_steps=-5"),
        "optim.max_steps must be 0 or more",
    ),
    "train-max-length-zero": (
        lambda c: c.train("data.max_length=0"),
        "data.max_length must be between 1 and 1048576, got 0",
    ),
    "train-dropout-above-1": (
        lambda c: c.train("lora.dropout=1.5"),
        "lora.dropout must be between",
    ),
    "train-warmup-ratio": (lambda c: c.train("optim.warmup_ratio=2"), "optim.warmup_ratio must be"),
    "train-checkpoint-every": (
        lambda c: c.train("checkpoint_every=-1"),
        "checkpoint_every must be 0 or more",
    ),
    "train-rank-zero": (lambda c: c.train("lora.r=0"), "lora.r must be at least 1"),
    "train-unknown-key": (lambda c: c.train("optim.lrr=1"), "unknown config key optim.lrr"),
    "train-set-without-value": (lambda c: c.train("optim.lr"), "--set expects key=value"),
    "train-unknown-method": (lambda c: c.train("method=lorax"), "unknown method 'lorax'"),
    # ---- train: config files ---------------------------------------------------------------
    "train-duplicate-yaml-key": (
        lambda c: ["train", "--config", c.file("c.yaml", "optim:\n  lr: 1e-4\n  lr: 1e-2\n")],
        "duplicate key 'lr'",
    ),
    "train-config-not-utf8": (
        lambda c: ["train", "--config", c.file("c.yaml", b"optim:\n  lr: \xff\xfe\n")],
        "is not UTF-8 text",
    ),
    "train-config-is-directory": (
        lambda c: ["train", "--config", c.file("cfgdir/x", "") and c.tmp / "cfgdir"],
        "is a directory, not a file",
    ),
    "train-config-missing": (
        lambda c: ["train", "--config", c.tmp / "none.yaml"],
        "config file not found",
    ),
    "train-config-malformed": (
        lambda c: ["train", "--config", c.file("c.yaml", "optim: {lr: 1e-4\n")],
        "malformed YAML",
    ),
    "train-config-not-mapping": (
        lambda c: ["train", "--config", c.file("c.yaml", "- a\n- b\n")],
        "must be a mapping",
    ),
    # ---- train: output locations -----------------------------------------------------------
    "train-output-is-file": (
        lambda c: c.train(out=c.file("out", "not a directory")),
        "is a file, not a directory",
    ),
    "train-output-under-file": (
        lambda c: c.train(out=c.file("f", "x") / "run"),
        "cannot be created",
    ),
    "train-output-not-ours": (
        lambda c: (c.file("out/thesis.tex", "precious"), c.train())[1],
        "holds no flexpaft run (thesis.tex)",
    ),
    "train-overwrite-foreign-adapter": (
        lambda c: (c.file("out/adapter/mine.txt", "precious"), c.train() + ["--overwrite"])[1],
        "adapter was not written by flexpaft",
    ),
    "train-damaged-checkpoint": (
        lambda c: (c.file("out/checkpoint/trainer_state.json", '{"step": 3, "epo'), c.train())[1],
        "is damaged (trainer_state.json: ",
    ),
    # ---- train: data -----------------------------------------------------------------------
    "data-is-directory": (
        lambda c: c.train(source=c.file("d.jsonl/x", "") and c.tmp / "d.jsonl"),
        "d.jsonl is a directory, not a file",
    ),
    "data-missing": (lambda c: c.train(source=c.tmp / "nope.jsonl"), "data file not found"),
    "data-empty": (lambda c: c.train(source=c.file("e.jsonl", "\n\n")), "is empty"),
    "data-not-utf8": (
        lambda c: c.train(source=c.file("d.jsonl", b'{"question": "\xff"}\n')),
        "is not UTF-8 text (line 1)",
    ),
    "data-invalid-json-row": (
        lambda c: c.train(source=c.file("d.jsonl", json.dumps(boolq_rows(1)[0]) + "\n{oops\n")),
        "d.jsonl line 2: invalid JSON",
    ),
    "data-row-not-object": (
        lambda c: c.train(source=c.file("d.jsonl", "[1, 2]\n")),
        "line 1: expected a JSON object",
    ),
    "data-boolq-maybe": (
        lambda c: c.train(source=c.jsonl("d.jsonl", _rows(answer="maybe"))),
        "d.jsonl line 3: has gold 'answer' = 'maybe', which is not true/false",
    ),
    "data-boolq-null": (
        lambda c: c.train(source=c.jsonl("d.jsonl", _rows(answer=None))),
        "line 3: has gold 'answer' = None",
    ),
    "data-boolq-five": (
        lambda c: c.train(source=c.jsonl("d.jsonl", _rows(answer=5))),
        "line 3: has gold 'answer' = 5",
    ),
    "data-question-null": (
        lambda c: c.train(source=c.jsonl("d.jsonl", _rows(question=None))),
        "line 3: has an empty (null) 'question'",
    ),
    "data-piqa-label-float": (
        lambda c: c.train("data.task=piqa", source=c.jsonl("p.jsonl", [{**PIQA[0], "label": 1.7}])),
        "p.jsonl line 1: has gold 'label' = 1.7, which is not an integer choice index",
    ),
    "data-piqa-missing-sol2": (
        lambda c: c.train(
            "data.task=piqa",
            source=c.jsonl("p.jsonl", PIQA + [{"goal": "g", "sol1": "a", "label": 0}]),
        ),
        "p.jsonl line 2: has no option 'sol2'",
    ),
    "data-piqa-gold-outside": (
        lambda c: c.train("data.task=piqa", source=c.jsonl("p.jsonl", [{**PIQA[0], "label": 3}])),
        "gold answer outside the 2 choices",
    ),
    "data-skip-everything": (lambda c: c.train("data.skip=100"), "no examples left"),
    # A bad row is named by the file's line (a CSV's header is line 1; blank lines and a quoted
    # cell over two lines count), and a missing field lists the columns the file has.
    "data-csv-missing-column": (
        lambda c: c.train(source=c.file("d.csv", "txt,passage,answer\nis it,It is.,true\n")),
        "d.csv line 2: has no field 'question' (task boolq); the file's columns are: txt, "
        "passage, answer",
    ),
    "data-csv-bad-row-after-multiline-cell": (
        lambda c: c.train(
            source=c.file(
                "d.csv",
                'question,passage,answer\nis it,"It is.\nReally.",true\n\nis it,No.,maybe\n',
            )
        ),
        "d.csv line 5: has gold 'answer' = 'maybe'",
    ),
    "data-jsonl-bad-row-after-blank-lines": (
        # Answers as words: with a blank line, datasets cannot read a column of mixed types.
        lambda c: c.train(
            source=c.file(
                "d.jsonl", "\n".join(json.dumps(r) if r else "" for r in _word_rows()) + "\n"
            )
        ),
        "d.jsonl line 4: has gold 'answer' = 'maybe'",
    ),
    "data-jsonl-missing-column": (
        lambda c: c.train(
            source=c.jsonl("d.jsonl", [{"q": r.pop("question"), **r} for r in boolq_rows(3)])
        ),
        "d.jsonl line 1: has no field 'question' (task boolq); the file's columns are: q, "
        "passage, answer",
    ),
    "data-empty-objects": (
        lambda c: c.train(source=c.file("d.jsonl", "{}\n{}\n")),
        "d.jsonl: every row is an empty JSON object {}, with no fields: task boolq reads the "
        "fields question, passage, answer",
    ),
    "data-json-lines-named-csv": (
        lambda c: c.train(source=c.jsonl("d.csv", [{"a": "x"}, {"a": "y, z", "b": "1, 2"}])),
        "d.csv holds JSON lines, not CSV: rename it to d.jsonl",
    ),
    "validate-data-csv-missing-column": (
        lambda c: [
            "prompts",
            "validate",
            c.s["prompts"],
            "--task",
            "boolq",
            "--data",
            c.file("d.csv", "txt,passage,answer\nis it,It is.,true\n"),
        ],  # fmt: skip
        "d.csv line 2: has no field 'question' (task boolq); the file's columns are: txt, ",
    ),
    # HF_HUB_OFFLINE is set for every test (conftest): a hub dataset not in the cache is one
    # line at once, without datasets' retries.
    "data-hub-offline": (
        lambda c: c.train(source="flexpaft-test/no-such-dataset"),
        "cannot load dataset 'flexpaft-test/no-such-dataset' from the hub: HF_HUB_OFFLINE is set "
        "and the dataset is not in the local cache: unset HF_HUB_OFFLINE to download it, or set "
        "data.source to a local data file",
    ),
    # ---- train: tasks, templates, models ---------------------------------------------------
    "task-unknown": (lambda c: c.train("data.task=boolqq"), "unknown task 'boolqq'"),
    "task-file-not-utf8": (
        lambda c: c.train(c.keyfile("data.task", "t.yaml", b"name: \xff\n")),
        "is not UTF-8 text",
    ),
    "task-file-missing": (
        lambda c: c.train(f"data.task={c.tmp / 'task.yaml'}"),
        "task file not found",
    ),
    "task-file-unknown-key": (
        lambda c: c.train(c.keyfile("data.task", "t.yaml", "name: t\nfeilds: [a]\n")),
        "unknown task key 'feilds'",
    ),
    "task-bigbench-misspelled": (
        lambda c: c.train("data.task=bigbench:entailed_polarty", "data.source="),
        "did you mean 'entailed_polarity'",
    ),
    "task-bigbench-bad-name": (
        lambda c: c.train("data.task=bigbench:../etc", "data.source="),
        "invalid BIG-bench task name",
    ),
    "paft-without-prompt-set": (
        lambda c: c.train("method=paft"),
        "method paft needs prompts.prompt_set",
    ),
    "paft-prompt-set-missing": (
        lambda c: c.train("method=paft", f"prompts.prompt_set={c.tmp / 'p.jsonl'}"),
        "prompt set not found",
    ),
    "paft-prompt-set-empty": (
        lambda c: c.train("method=paft", c.keyfile("prompts.prompt_set", "p.jsonl", "")),
        "holds no templates",
    ),
    "paft-prompt-set-wrong-type": (
        lambda c: c.train("method=paft", c.keyfile("prompts.prompt_set", "p.jsonl", "1\n2\n")),
        "entry 1 is not a template",
    ),
    "paft-prompt-set-yaml-mapping": (
        lambda c: c.train("method=paft", c.keyfile("prompts.prompt_set", "p.yaml", "a: 1\n")),
        "expected a list of templates",
    ),
    "paft-prompt-set-directory": (
        lambda c: c.train("method=paft", f"prompts.prompt_set={c.tmp}"),
        "is a directory, not a file",
    ),
    "template-bad-slot": (
        lambda c: c.train("prompts.template={goal} Answer:"),
        "slot {goal} is not a field of task boolq",
    ),
    "model-path-missing": (
        lambda c: c.train(f"model.name={c.tmp / 'no' / 'model'}"),
        "model directory not found",
    ),
    "model-dir-without-config": (
        lambda c: c.train(f"model.name={c.file('m/readme.md', 'x') and c.tmp / 'm'}"),
        "is not a model directory (no config.json)",
    ),
    "model-pickle-only": (
        lambda c: (
            c.file("m/config.json", "{}"),
            c.train(f"model.name={c.file('m/pytorch_model.bin', b'x').parent}"),
        )[1],
        "holds only pickled weights",
    ),
    "model-bad-dtype": (lambda c: c.train("model.dtype=float8"), "unknown dtype 'float8'"),
    # ---- eval --------------------------------------------------------------------------------
    "eval-adapter-missing": (lambda c: c.eval(f"adapter={c.tmp / 'none'}"), "adapter not found"),
    "eval-adapter-is-file": (
        lambda c: c.eval(f"adapter={c.file('a.safetensors', b'x')}"),
        "give the adapter directory",
    ),
    "eval-adapter-no-config": (
        lambda c: c.eval(f"adapter={c.adapter(drop=('adapter_config.json',))}"),
        "no adapter_config.json",
    ),
    "eval-adapter-bad-config": (
        lambda c: c.eval(f"adapter={c.adapter(adapter_config__json='{not json')}"),
        "adapter_config.json is unreadable",
    ),
    "eval-adapter-config-not-peft": (
        lambda c: c.eval(f"adapter={c.adapter(adapter_config__json='{}')}"),
        "not a PEFT config",
    ),
    "eval-adapter-no-weights": (
        lambda c: c.eval(f"adapter={c.adapter(drop=('adapter_model.safetensors',))}"),
        "has no weights",
    ),
    "eval-adapter-pickle": (
        lambda c: c.eval(
            f"adapter={c.adapter(drop=('adapter_model.safetensors',), adapter_model__bin=b'x')}"
        ),
        "holds only pickled weights",
    ),
    "eval-adapter-garbage-weights": (
        lambda c: c.eval(f"adapter={c.adapter(adapter_model__safetensors=b'garbage' * 10)}"),
        "adapter_model.safetensors is damaged",
    ),
    "eval-adapter-nan-weights": (
        lambda c: c.eval(f"adapter={_nan_adapter(c)}"),
        "has non-finite weights",
    ),
    "eval-adversarial-missing": (
        lambda c: c.eval(f"adversarial_set={c.tmp / 'adv.jsonl'}"),
        "prompt set not found",
    ),
    "eval-reference-bad-slot": (
        lambda c: c.eval("reference_template={goal}?"),
        "slot {goal} is not a field",
    ),
    "eval-output-is-file": (
        lambda c: c.eval(out=c.file("out", "x")),
        "is a file, not a directory",
    ),
    "eval-output-holds-other-results": (
        lambda c: (c.file("out/results.json", '{"mine": 1}'), c.eval())[1],
        "results.json was not written by flexpaft eval",
    ),
    "eval-batch-size-zero": (lambda c: c.eval("batch_size=0"), "batch_size must be at least 1"),
    "eval-threshold-above-1": (lambda c: c.eval("thresholds=[1.5]"), "thresholds[0] must be"),
    "eval-max-new-tokens-zero": (lambda c: c.eval("max_new_tokens=0"), "max_new_tokens must be"),
    # ---- search ------------------------------------------------------------------------------
    "search-output-is-file": (
        lambda c: ["search", *c.train(out=c.file("out", "x"))[1:]],
        "is a file, not a directory",
    ),
    "search-wrong-method": (
        lambda c: ["search", *c.train("method=topaccuracy")[1:]],
        "flexpaft search needs method flexora",
    ),
    "search-fraction-zero": (
        lambda c: ["search", *c.train("method=flexora", "flexora.fraction=0")[1:]],
        "flexora.fraction must be in (0, 1]",
    ),
    # ---- prompts validate / split / convert --------------------------------------------------
    "validate-missing": (
        lambda c: ["prompts", "validate", c.tmp / "p.jsonl", "--task", "boolq"],
        "prompt set not found",
    ),
    "validate-empty": (
        lambda c: ["prompts", "validate", c.file("p.txt", "\n"), "--task", "boolq"],
        "holds no templates",
    ),
    "validate-unknown-task": (
        lambda c: ["prompts", "validate", c.s["prompts"], "--task", "boolqq"],
        "unknown task 'boolqq'",
    ),
    "validate-bad-format": (
        lambda c: ["prompts", "validate", c.s["prompts"], "--task", "boolq", "--format", "x"],
        "unknown answer format 'x'",
    ),
    "validate-out-is-directory": (
        lambda c: ["prompts", "validate", c.s["prompts"], "--task", "boolq", "--out", c.tmp],
        "is a directory, not a file",
    ),
    "split-out-is-file": (
        lambda c: ["prompts", "split", c.s["prompts"], "--out", c.file("o", "x")],
        "is a file, not a directory",
    ),
    "split-too-small": (
        lambda c: [
            "prompts",
            "split",
            c.file("p.txt", TEMPLATES[0].replace("\n", " ")),
            "--out",
            c.out,
        ],  # fmt: skip
        "too small to split",
    ),
    "split-fraction-zero": (
        lambda c: ["prompts", "split", c.s["prompts"], "--test-fraction", "0", "--out", c.out],
        "test fraction must be in (0, 1)",
    ),
    "convert-out-is-directory": (
        lambda c: ["prompts", "convert", c.s["prompts"], c.tmp],
        "is a directory, not a file",
    ),
    "convert-unknown-extension": (
        lambda c: ["prompts", "convert", c.s["prompts"], c.tmp / "p.docx"],
        "unknown prompt-set format 'docx'",
    ),
    "convert-not-utf8": (
        lambda c: ["prompts", "convert", c.file("p.txt", b"\xff\xfe{x}\n"), c.tmp / "o.jsonl"],
        "is not UTF-8 text",
    ),
    "convert-invalid-json": (
        lambda c: ["prompts", "convert", c.file("p.jsonl", '{"template": "a"\n'), c.out],
        "p.jsonl:1: invalid JSON",
    ),
    # ---- prompts generate --------------------------------------------------------------------
    "generate-per-request-zero": (
        lambda c: [
            "prompts",
            "generate",
            "--task",
            "boolq",
            "--out",
            c.out,
            "--generator",
            "openai",
            "--models",
            "m",
            "--per-request",
            "0",
        ],  # fmt: skip
        "--per-request must be at least 1",
    ),
    "generate-key-as-env-name": (
        lambda c: [
            "prompts",
            "generate",
            "--task",
            "boolq",
            "--out",
            c.out,
            "--generator",
            "openai",
            "--models",
            "m",
            "--api-key-env",
            SECRET,
        ],  # fmt: skip
        "takes the NAME of the environment variable",
    ),
    "generate-cache-not-utf8": (
        # Read before any request: port 9 refuses, and no request is made.
        lambda c: [
            "prompts",
            "generate",
            "--task",
            "boolq",
            "--out",
            c.out,
            "--generator",
            "openai",
            "--models",
            "m",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--cache",
            c.file("cache.jsonl", b'{"reply": "a"}\n\xff\xfe\n'),
        ],  # fmt: skip
        "cache.jsonl is not UTF-8 text (line 2): it is damaged or not a flexpaft reply cache; "
        "delete it (its replies are asked for again) or give another --cache file",
    ),
    "generate-unknown-generator": (
        lambda c: ["prompts", "generate", "--task", "boolq", "--out", c.out, "--generator", "gpt"],
        "unknown generator 'gpt'",
    ),
    "generate-split-above-1": (
        lambda c: ["prompts", "generate", "--task", "boolq", "--out", c.out, "--split", "2"],
        "--split must be between 0 and 1",
    ),
    "generate-out-is-file": (
        lambda c: ["prompts", "generate", "--task", "boolq", "--out", c.file("o", "x")],
        "is a file, not a directory",
    ),
    "generate-seeds-missing": (
        lambda c: [
            "prompts",
            "generate",
            "--task",
            "boolq",
            "--out",
            c.out,
            "--seeds",
            c.tmp / "seeds.jsonl",
        ],  # fmt: skip
        "prompt set not found",
    ),
    "generate-bigbench-misspelled": (
        lambda c: ["prompts", "generate", "--task", "bigbench:sports_understandin", "--out", c.out],
        "did you mean 'sports_understanding'",
    ),
    # ---- report ------------------------------------------------------------------------------
    "report-missing-run": (lambda c: ["report", c.tmp / "nothing", "-o", c.out], "no eval results"),
    "report-out-is-file": (
        lambda c: ["report", c.s["results"], "-o", c.file("o", "x")],
        "is a file, not a directory",
    ),
    "report-different-examples": (
        lambda c: ["report", c.s["results"], _results_with_digest(c, "0" * 64), "-o", c.out],
        "other and base were scored on different examples",
    ),
    "report-malformed-results": (
        lambda c: ["report", c.file("r/results.json", "{torn"), "-o", c.out],
        "cannot read",
    ),
    "report-duplicate-labels": (
        lambda c: ["report", f"a={c.s['results']}", f"a={c.s['results']}", "-o", c.out],
        "two runs are labelled 'a'",
    ),
    # ---- demo --------------------------------------------------------------------------------
    "demo-train-examples-zero": (
        lambda c: ["demo", "--train-examples", "0", "--out", c.out],
        "--train-examples must be at least 1",
    ),
    "demo-test-templates-zero": (
        lambda c: ["demo", "--test-templates", "0", "--out", c.out],
        "--test-templates must be at least 1",
    ),
    "demo-epochs-zero": (
        lambda c: ["demo", "--epochs", "0", "--out", c.out],
        "--epochs must be a positive number",
    ),
    "demo-lr-nan": (lambda c: ["demo", "--lr", "nan", "--out", c.out], "--lr must be a positive"),
    "demo-out-is-file": (
        lambda c: ["demo", "--out", c.file("o", "x")],
        "is a file, not a directory",
    ),
    "demo-bigbench-misspelled": (
        lambda c: ["demo", "--task", "bigbench:entailed_polarityy", "--out", c.out],
        "did you mean 'entailed_polarity'",
    ),
}


def _snapshot(*roots: Path) -> dict[str, bytes]:
    return {
        str(p): p.read_bytes() if p.is_file() else b"<dir>"
        for root in roots
        for p in sorted(root.rglob("*"))
    }


def _edited_adapter_config(c: Case, **change) -> Path:
    conf = json.loads((c.s["adapter"] / "adapter_config.json").read_text())
    return c.adapter(adapter_config__json=json.dumps({**conf, **change}))


# The audit's last classes (issue 31): accepted silently before, or a traceback.
CASES.update(
    {
        "train-max-length-huge": (
            lambda c: c.train(f"data.max_length={2**70}"),
            "data.max_length must be between 1 and 1048576",
        ),
        "train-layers-empty": (
            lambda c: c.train("lora.layers_to_transform=[]"),
            "lora.layers_to_transform is empty, which PEFT reads as every block",
        ),
        "train-layers-missing-block": (
            lambda c: c.train("lora.layers_to_transform=[1,99]"),
            "block 99 does not exist, the model has 4 blocks (0-3)",
        ),
        "eval-config-device-file": (
            lambda c: ["eval", "-c", "/dev/null"],
            "config file /dev/null is not a regular file",
        ),
        "eval-adapter-peft-type-edited": (
            lambda c: c.eval(f"adapter={_edited_adapter_config(c, peft_type='NOT_LORA')}"),
            "has peft_type 'NOT_LORA'; flexpaft loads LoRA adapters",
        ),
        "push-torn-results": (
            lambda c: [
                "push",
                c.s["adapter"],
                "--repo-id",
                "me/x",
                "--eval",
                c.file("torn/results.json", '{"name": "x", "per_templ'),
            ],  # fmt: skip
            "results.json is damaged: invalid JSON",
        ),
    }
)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, tmp_path, shared, capsys, monkeypatch):
    monkeypatch.delenv("FLEXPAFT_BIGBENCH_ARCHIVE", raising=False)
    import flexpaft.tasks.bigbench as bigbench

    # Nothing here may download: the BIG-bench archive comes through pip.
    monkeypatch.setattr(bigbench, "_download_archive", lambda dest: pytest.fail("downloaded"))
    build, message = CASES[case]
    argv = [str(a) for a in build(Case(tmp_path, shared))]
    before = _snapshot(tmp_path, shared["root"])
    code = main(["-q", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("flexpaft: error:"), err
    assert message in lines[0], err
    assert "Traceback" not in err and SECRET not in err
    # Nothing written, nothing half-written, nothing moved.
    assert _snapshot(tmp_path, shared["root"]) == before


def test_matrix_covers_every_verb():
    verbs = {k.split("-")[0] for k in CASES}
    assert {"train", "eval", "search", "validate", "split", "convert", "generate", "report",
            "demo", "data", "paft", "model", "task"} <= verbs  # fmt: skip
    assert len(CASES) >= 60


# ---- faults: divergence, damaged checkpoints, foreign directories, killed saves ---------------
def _train_args(shared, out: Path, *pairs: str) -> list[str]:
    c = Case(out.parent, shared)
    return [str(a) for a in c.train("optim.batch_size=4", *pairs, out=out)]


def test_divergence_in_float16_exits_2_without_an_adapter(tmp_path, shared, capsys):
    # The reproduction: float16 and a huge learning rate give NaN from step 2.
    args = _train_args(
        shared, tmp_path / "r", "model.dtype=float16", "optim.lr=1e4", "optim.max_steps=8"
    )
    code = main(["-q", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "training diverged at step 2: loss is nan (last finite loss" in err
    assert "lower optim.lr" in err and "bfloat16" in err
    assert not (tmp_path / "r" / "adapter").exists()


def _interrupted_run(shared, out: Path, monkeypatch, *pairs: str) -> list[str]:
    """Train until the first checkpoint is saved, then 'kill' the run there."""
    import flexpaft.training.loop as trainer_mod

    real = trainer_mod.save_checkpoint

    def save_then_interrupt(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    args = _train_args(shared, out, "optim.max_steps=4", "checkpoint_every=2", *pairs)
    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "save_checkpoint", save_then_interrupt)
        assert main(["-q", *args]) == 130
    assert (out / "checkpoint" / "trainer_state.json").is_file()
    return args


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("trainer_state.json", '{"step": 2, "ep', "trainer_state.json: "),
        ("trainer_state.json", '["not", "a", "state"]', "trainer_state.json: "),
        ("adapter.safetensors", b"\x00" * 40, "adapter.safetensors: "),
        ("optim.pt", b"garbage", "optim.pt: "),
        # A pickle that would run code when loaded: refused by weights_only, reported the same.
        ("optim.pt", "pickle", "optim.pt: "),
    ],
)
def test_damaged_checkpoint_is_one_line_and_resume_false_starts_over(
    name, content, message, tmp_path, shared, capsys, monkeypatch
):
    out = tmp_path / "r"
    args = _interrupted_run(shared, out, monkeypatch)
    target = out / "checkpoint" / name
    if content == "pickle":
        import pickle

        target.write_bytes(pickle.dumps({"optimizer": print, "scheduler": {}}))
    else:
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
    capsys.readouterr()
    assert main(["-q", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"checkpoint {out / 'checkpoint'} is damaged ({message}" in err
    assert "--set resume=false to start over" in err
    assert not (out / "adapter").exists()
    # The suggested escape works: the damaged state is not even read.
    assert main(["-q", *args, "--set", "resume=false"]) == 0, capsys.readouterr().err
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "checkpoint").exists()  # finished: nothing left to resume


def test_output_directory_of_someone_else_is_never_clobbered(tmp_path, shared, capsys):
    out = tmp_path / "r"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "todo.txt").write_text("mine")
    args = _train_args(shared, out, "optim.max_steps=1")
    assert main(["-q", *args]) == 2
    assert "holds no flexpaft run (notes)" in capsys.readouterr().err
    assert main(["-q", *args, "--overwrite"]) == 0
    assert (out / "notes" / "todo.txt").read_text() == "mine"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    # Same config again: allowed (it is this run); another config: refused, then --overwrite.
    assert main(["-q", *args]) == 0
    other = [*args, "--set", "optim.lr=3e-4"]
    capsys.readouterr()
    assert main(["-q", *other]) == 2
    assert "finished run of a different configuration" in capsys.readouterr().err
    assert main(["-q", *other, "--overwrite"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["optim"]["lr"] == 3e-4
    assert (out / "notes" / "todo.txt").read_text() == "mine"


def test_a_save_killed_between_its_renames_is_recovered(tmp_path):
    from flexpaft.io import atomic_directory, recover_directory

    target = tmp_path / "adapter"
    with atomic_directory(target) as tmp:
        (tmp / "w.bin").write_text("v1")
    # Killed after "move the old aside" and before "move the new in": no adapter/ at all, the
    # old one hidden, a finished temporary directory beside it.
    os_old = tmp_path / ".adapter.old-4242"
    target.rename(os_old)
    (tmp_path / ".adapter.abcd.tmp").mkdir()
    (tmp_path / ".adapter.abcd.tmp" / "w.bin").write_text("v2-partial")
    assert recover_directory(target) is True
    assert (target / "w.bin").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    # And the next save goes through the same repair on its own.
    target.rename(os_old)
    with atomic_directory(target) as tmp:
        (tmp / "w.bin").write_text("v3")
    assert (target / "w.bin").read_text() == "v3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_eval_results_carry_a_data_digest_and_equal_ones_compare(tmp_path, shared, capsys):
    data = json.loads((shared["results"] / "results.json").read_text())
    assert len(data["data_digest"]) == 64
    copy = tmp_path / "copy" / "results.json"
    copy.parent.mkdir()
    copy.write_text(json.dumps({**data, "name": "copy"}))
    assert (
        main(["-q", "report", str(shared["results"]), str(copy), "-o", str(tmp_path / "rep")]) == 0
    )


# ---- hub lookups on a machine without the hub -------------------------------------------------
# The CLI in a child process, with the environment variables as a user sets them (the hub
# libraries read them once, at import); the child times ``main`` alone, not its imports.
_TIMED_MAIN = """
import sys, time
import datasets, flexpaft.cli
start = time.perf_counter()
code = flexpaft.cli.main(sys.argv[1:])
print(f"{time.perf_counter() - start:.2f}")
sys.exit(code)
"""


@pytest.mark.parametrize("hub", ["HF_HUB_OFFLINE", "unreachable-endpoint"])
@pytest.mark.parametrize("verb", ["validate-data", "eval-empty-config"])
def test_an_unreachable_hub_is_one_line_within_seconds(tmp_path, shared, hub, verb):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    # An empty cache: the dataset is nowhere on this machine.
    env["HF_HOME"] = str(tmp_path / "hf")
    if hub == "HF_HUB_OFFLINE":
        env["HF_HUB_OFFLINE"], reason = "1", "HF_HUB_OFFLINE is set"
    else:
        # Port 9 (discard) refuses: before, datasets retried 5 times over about 25 s and printed
        # 23 lines of "Retrying in 8s".
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"
        reason = "the hub at http://127.0.0.1:9 cannot be reached (ConnectError"
    if verb == "validate-data":
        argv, dataset = ["prompts", "validate", str(shared["prompts"]), "--task", "boolq",
                         "--data", "flexpaft-test/no-such-dataset"], "flexpaft-test/no-such-dataset"  # fmt: skip
    else:
        # No config at all: eval's default task reads BoolQ from the hub.
        empty = tmp_path / "empty.yaml"
        empty.write_text("")
        argv, dataset = ["eval", "-c", str(empty), "-o", str(tmp_path / "out")], "google/boolq"
    proc = subprocess.run(
        [sys.executable, "-c", _TIMED_MAIN, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Retrying" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"flexpaft: error: cannot load dataset '{dataset}' from the hub: ")
    assert reason in lines[0] and "not in the local cache" in lines[0], lines[0]
    assert "set data.source to a local data file" in lines[0]
    # The retries this replaces took 25-29 s; main alone takes about 2 s on a quiet 2-core
    # machine (it imports torch and transformers lazily), 8 s when two other jobs share the
    # cores: the bound tells the two paths apart without timing the machine's load.
    assert float(proc.stdout.split()[-1]) < 15, proc.stdout
    assert not (tmp_path / "out").exists()


def test_a_reachable_hub_is_still_asked(monkeypatch):
    # The probe's answer decides: a hub that answers gets the lookup as before (no offline mode).
    import datasets.config
    from huggingface_hub import constants

    import flexpaft.hub_reach as hub_reach

    for name in hub_reach.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)

    class Session:  # requests' signature (huggingface_hub < 1.0): no follow_redirects keyword
        def head(self, url, timeout=None, allow_redirects=False):
            assert timeout <= 3
            return object()

    monkeypatch.setattr("huggingface_hub.utils.get_session", lambda: Session())
    assert hub_reach.hub_unreachable() is None
    seen = []
    with hub_reach.hub_lookup("dataset 'x/y'", "fix"):
        seen.append(datasets.config.HF_HUB_OFFLINE)
    assert seen == [False]
    with pytest.raises(hub_reach.FlexpaftError, match="from the hub: boom$"):
        with hub_reach.hub_lookup("dataset 'x/y'", "fix"):
            raise RuntimeError("boom\nsecond line")


@pytest.mark.parametrize("load", ["model", "tokenizer"])
def test_a_hub_model_id_offline_is_one_quick_line(monkeypatch, load):
    # Before, transformers retried five times over about 55 s with a line each.
    import time

    import flexpaft.hub_reach as hub_reach
    from flexpaft import models
    from flexpaft.errors import FlexpaftError

    reason = ("the hub at http://127.0.0.1:9 cannot be reached (ConnectError)", "connect")
    monkeypatch.setattr(hub_reach, "hub_unreachable", lambda: reason)
    start = time.perf_counter()
    with pytest.raises(FlexpaftError) as e:
        if load == "model":
            models.load_model("flexpaft-test/no-such-model", device="cpu")
        else:
            models.load_tokenizer("flexpaft-test/no-such-model")
    assert time.perf_counter() - start < 15  # the retries took 55 s
    line = str(e.value)
    assert "\n" not in line and line.startswith("cannot load model 'flexpaft-test/no-such-model'")
    assert reason[0] in line and "not in the local cache" in line
    assert "set model.name to a local model directory" in line


def test_local_model_paths_skip_the_hub_probe(monkeypatch, tmp_path):
    import flexpaft.hub_reach as hub_reach
    from flexpaft import models

    def probe():
        raise AssertionError("a local path never probes the hub")

    monkeypatch.setattr(hub_reach, "hub_unreachable", probe)
    for name in (str(tmp_path), "./model", "a/b/c"):
        with models.hub_model_lookup(name):
            pass
