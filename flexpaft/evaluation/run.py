"""``flexpaft eval``: a model (+ adapter) on a task under every template of a prompt set."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flexpaft.chat import chat_record, resolve_chat
from flexpaft.data_checks import warn_long_prompts
from flexpaft.errors import FlexpaftError
from flexpaft.evaluation.distributed import evaluate_sharded, process_state
from flexpaft.evaluation.evaluator import (
    EvalResult,
    TemplateResult,
    evaluate_templates,
    load_adapter,
    markdown_table,
)
from flexpaft.evaluation.results import check_template_result
from flexpaft.io import atomic_write_json, atomic_write_text, sha256_file, sha256_json, write_error
from flexpaft.locks import run_dir_lock
from flexpaft.memory import releases_memory
from flexpaft.models import adapter_base_model, base_fingerprint, peek_config
from flexpaft.prompts import PromptSet, Template
from flexpaft.prompts.task_templates import default_template, load_valid_set, own_template
from flexpaft.settings.evaluate import EvalConfig, upgrade_stored
from flexpaft.splits import check_disjoint
from flexpaft.stored import damaged, read_adapter_info, read_jsonl_objects
from flexpaft.validate import check_adapter_dir, check_eval_output, check_writable_dir
from flexpaft.version import versions

log = logging.getLogger(__name__)

ADAPTER_INFO = "flexpaft_adapter.json"  # written by train.loop


@releases_memory
def run_eval(cfg: EvalConfig, progress: bool = True, overwrite: bool = False) -> EvalResult:
    """Evaluate ``cfg`` and write results.json/results.md/templates.jsonl to its output_dir.

    The output directory is held for the run (one writer at a time), and finished results of
    another configuration there are refused unless ``overwrite``, as ``train`` refuses."""
    check_writable_dir(cfg.output_dir)
    if os.environ.get("RANK", "0") != "0":  # under a launcher the main process holds it
        return _run_eval(cfg, progress, overwrite)
    with run_dir_lock(cfg.output_dir, "flexpaft eval"):
        return _run_eval(cfg, progress, overwrite)


def eval_request(cfg: EvalConfig | dict) -> str:
    """What makes two evaluations "the same configuration": every setting but where the
    results go (the same digest for a config and for its copy in results.json)."""
    d = dict(asdict(cfg) if not isinstance(cfg, dict) else upgrade_stored(cfg))
    d.pop("output_dir", None)
    return sha256_json(d)


def check_eval_overwrite(out: Path, cfg: EvalConfig, overwrite: bool) -> None:
    """Refuse to replace finished results of another configuration without ``overwrite``."""
    f = out / "results.json"
    if overwrite or not f.is_file():
        return
    try:
        previous = json.loads(f.read_text(encoding="utf-8")).get("config")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        previous = None  # check_eval_output has judged a foreign or torn file already
    if isinstance(previous, dict) and eval_request(previous) == eval_request(cfg):
        return
    raise FlexpaftError(
        f"{out} holds finished results of a different evaluation: choose another output_dir, "
        "or --overwrite to replace them"
    )


def _run_eval(cfg: EvalConfig, progress: bool, overwrite: bool) -> EvalResult:
    out = Path(cfg.output_dir)
    # Everything that can be wrong with the inputs is found before the model is loaded.
    check_writable_dir(out)
    check_eval_output(out)
    check_eval_overwrite(out, cfg, overwrite)
    if cfg.adapter:
        check_adapter_dir(cfg.adapter)
    base = base_model_for(cfg)
    task, fmt, examples = cfg.data.load()
    p = cfg.prompts
    if p.prompt_set:
        templates = list(load_valid_set(p.prompt_set, task, fmt))
        if p.max_templates is not None and p.max_templates < len(templates):
            log.info("evaluating the first %d of %d templates", p.max_templates, len(templates))
            templates = templates[: p.max_templates]
    else:
        templates = [default_template(task, fmt)]
    adversarial = list(load_valid_set(p.adversarial_set, task, fmt)) if p.adversarial_set else []
    # The user's own prompt (the task's unless prompts.template), scored beside the set.
    ref = own_template(p.template, task, fmt) if p.own else None
    # Under `accelerate launch` / torchrun the templates are split across the processes.
    state = process_state()
    device = state.device if state is not None else None
    model, tok = dataclasses.replace(cfg.model, name=base).load(device)
    if cfg.adapter:
        check_disjoint(cfg.adapter, examples, cfg.data.allow_overlap)
        model = load_adapter(model, cfg.adapter)
    chat = resolve_chat(cfg.model.chat_template, tok)
    chat_info = chat_record(cfg.model.chat_template, chat)
    if cfg.adapter:
        warn_chat_mismatch(cfg.adapter, chat_info)
    if state is None or state.is_main_process:
        checked = [*templates, *adversarial, *([ref] if ref is not None else [])]
        warn_long_prompts(
            task, fmt, examples, checked, tok, cfg.max_length, "max_length", chat, with_answer=False
        )

    partial = PartialResults(out / "partial.jsonl", _resume_key(cfg, examples))

    def run(ts: list[Template]) -> EvalResult:
        if state is not None:
            return evaluate_sharded(state, evaluate, ts, tuple(cfg.thresholds))
        return evaluate(ts)

    def evaluate(ts: list[Template]) -> EvalResult:
        return evaluate_templates(
            model,
            tok,
            task,
            fmt,
            ts,
            examples,
            cfg.mode,
            cfg.batch_size,
            cfg.max_length,
            cfg.max_new_tokens,
            cfg.length_normalize,
            tuple(cfg.thresholds),
            progress,
            cfg.max_batch_tokens,
            done=partial.results,
            on_result=partial.add,
            chat=chat,
        )

    res = run(templates)
    extra = {}
    if adversarial:
        extra["adversarial"] = run(adversarial).to_dict()
    if ref is not None:
        # Scored once: under no prompt set the main result already is the own prompt's.
        own_res = res if [t.text for t in templates] == [ref.text] else run([ref])
        extra["reference"] = own_res.to_dict()
    name = cfg.name or (Path(cfg.adapter).parent.name if cfg.adapter else "base")
    if state is None or state.is_main_process:
        # The digest lets ``flexpaft report`` refuse runs scored on different examples.
        digest = sha256_json([[e.fields, e.options, e.gold] for e in examples])
        atomic_write_json(
            out / "results.json",
            # Gold answers let a report show the majority-label rate beside the accuracies.
            {
                "name": name,
                "config": asdict(cfg),
                "data_digest": digest,
                "chat_template": chat_info,
                "base_model": base,
                "versions": versions(),
                **res.to_dict(),
                **extra,
                "gold": [ex.gold for ex in examples],
            },
        )
        atomic_write_text(out / "results.md", markdown_table(res, f"{name}: {task.name}"))
        PromptSet(templates).save(out / "templates.jsonl")
        partial.remove()
    if state is not None:
        state.wait_for_everyone()
    return res


def base_model_for(cfg: EvalConfig) -> str:
    """The base model to load: ``model.name``, or the adapter's own base when it is empty (the
    embedded model without an adapter). A base given apart from the adapter's is checked
    against it now, from its config alone, so a mismatch costs no model load."""
    if not cfg.adapter:
        return cfg.model.name or "embedded"
    if not cfg.model.name:
        name = adapter_base_model(cfg.adapter)
        log.info("base model: %s (the adapter's)", name)
        return name
    info = read_adapter_info(cfg.adapter) or {}
    want = info.get("base_fingerprint")
    config = peek_config(cfg.model.name, cfg.model.trust_remote_code) if want else None
    if config is not None:
        have = base_fingerprint(config)
        diff = [k for k in want if want[k] != have.get(k)]
        if diff:
            raise FlexpaftError(
                f"adapter {cfg.adapter} was trained on another base model "
                f"({info.get('base_model')}; {cfg.model.name} differs in {', '.join(diff)}): "
                f"leave model.name empty to use the adapter's, or --set model.name="
                f"{info.get('base_model')}"
            )
    return cfg.model.name


def warn_chat_mismatch(adapter: str, chat_info: dict) -> bool:
    """Warn (and return True) when ``adapter`` was trained under another chat template choice:
    its answers were learned after a different prompt format than the one scored now."""
    info = read_adapter_info(adapter)
    if info is None:
        return False
    trained = info.get("chat_template")
    if not trained:
        # Adapters from before chat templates existed were trained on raw prompts.
        trained = {"setting": "none", "applied": False, "digest": ""}
    if (trained["applied"], trained["digest"]) == (chat_info["applied"], chat_info["digest"]):
        return False
    log.warning(
        "warning: adapter %s was trained with chat_template=%s (%s) but is evaluated with "
        "chat_template=%s (%s); set model.chat_template=%s to match",
        adapter,
        trained["setting"],
        "applied" if trained["applied"] else "raw prompts",
        chat_info["setting"],
        "applied" if chat_info["applied"] else "raw prompts",
        trained["setting"],
    )
    return True


def _resume_key(cfg: EvalConfig, examples: list) -> str:
    """What makes per-template results reusable: model, adapter, data, scoring settings."""
    d = asdict(cfg)
    for k in ("output_dir", "name", "prompts"):
        d.pop(k)
    if cfg.adapter:
        weights = Path(cfg.adapter) / "adapter_model.safetensors"
        d["adapter_digest"] = sha256_file(weights) if weights.is_file() else ""
    d["examples"] = [[e.fields, e.options, e.gold] for e in examples]
    return sha256_json(d)


class PartialResults:
    """Per-template results appended as they finish, so an interrupted evaluation under many
    templates resumes where it stopped. Lines written under another key are ignored; a torn
    last line (killed mid-write) is skipped."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key
        self.results: dict[str, TemplateResult] = {}
        if path.is_file():
            remedy = "delete it to evaluate every template again"
            for n, row in read_jsonl_objects(path, remedy):
                if row.get("key") != key:
                    continue
                problem = check_template_result(row.get("result"))
                if problem:
                    raise damaged(path, f"line {n}: {problem}", remedy)
                self.results[row["result"]["id"]] = TemplateResult(**row["result"])

    def add(self, result: TemplateResult) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": self.key, "result": asdict(result)}) + "\n")
                f.flush()
        except OSError as e:
            raise write_error(e, self.path) from None  # a full disk: name the file

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class EvalRun:
    """A finished ``flexpaft.evaluate``: the accuracy under every template of the prompt set
    (``result``), under the user's own prompt (``own``) and the adversarial set, and where
    results.json went."""

    output_dir: Path
    result: EvalResult
    own: EvalResult | None = None
    adversarial: EvalResult | None = None

    @property
    def mean(self) -> float:
        """Accuracy averaged over the templates."""
        return float(sum(self.result.accuracies) / len(self.result.accuracies))

    @property
    def worst(self) -> float:
        """Accuracy under the worst template."""
        return float(min(self.result.accuracies))

    @property
    def results_file(self) -> Path:
        return self.output_dir / "results.json"


def evaluate(cfg: EvalConfig, progress: bool = True, overwrite: bool = False) -> EvalRun:
    """Evaluate ``cfg`` (``flexpaft eval``): a model, with ``cfg.adapter`` if set, under every
    template of ``cfg.prompts.prompt_set`` and the own prompt, on ``cfg.data``'s examples;
    writes results.json, results.md and templates.jsonl to ``cfg.output_dir``."""
    result = run_eval(cfg, progress=progress, overwrite=overwrite)
    out = Path(cfg.output_dir)
    stored: dict[str, Any] = {}
    if (out / "results.json").is_file():  # under a launcher only the main process writes it
        stored = json.loads((out / "results.json").read_text(encoding="utf-8"))
    extra = {
        k: EvalResult.from_dict(stored[k]) for k in ("reference", "adversarial") if k in stored
    }
    return EvalRun(out, result, extra.get("reference"), extra.get("adversarial"))
