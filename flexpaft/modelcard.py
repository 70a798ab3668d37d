"""The adapter's README.md: a Hugging Face model card a teammate or the hub can read.

Built from the run manifest (base model, task, method, templates, chat template, training
settings, library versions) and, when given, an evaluation's results.json. The YAML header is
written by ``huggingface_hub.ModelCardData`` so the hub indexes ``base_model`` and the PEFT
library like any other adapter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flexpaft.io import atomic_write_text
from flexpaft.models import EMBEDDED_ALIASES

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def hub_base_model(name: str) -> str | None:
    """The hub id of a base model setting, or None when only a local copy is known."""
    if name in EMBEDDED_ALIASES:
        return EMBEDDED_HUB_ID
    p = Path(name)
    if p.suffix.lower() == ".gguf":
        return None
    if p.exists():
        config = p / "config.json"
        if config.is_file():
            origin = json.loads(config.read_text(encoding="utf-8")).get("_name_or_path", "")
            # A hub id looks like owner/name and is not a path on this machine.
            if origin.count("/") == 1 and not Path(origin).exists():
                return origin
        return None
    return name


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in rows]
    return lines


def _cell(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return text.replace("|", "\\|").replace("\n", "\\n")


def eval_section(results: dict[str, Any]) -> list[str]:
    """The evaluation table of a ``flexpaft eval`` results.json."""
    s = results.get("summary", {})
    keys = [k for k in s if k != "templates"]
    data = results.get("config", {}).get("data", {})
    lines = [
        f"Evaluated with `flexpaft eval` on {results.get('task')} ({results.get('format')}, "
        f"{results.get('mode')} scoring), {s.get('templates')} templates, "
        f"{(results.get('per_template') or [{}])[0].get('n')} examples "
        f"(source: {data.get('source') or 'hub'}, split: {data.get('split') or 'default'}).",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
        "| " + " | ".join(f"{100 * s[k]:.1f}" for k in keys) + " |",
    ]
    return lines


def model_card(manifest: dict[str, Any], results: dict[str, Any] | None = None) -> str:
    from huggingface_hub import ModelCardData

    cfg = manifest.get("config", {})
    model = cfg.get("model", {})
    base = hub_base_model(model.get("name", "")) or model.get("name", "")
    method = manifest.get("method", "")
    tags = ["flexpaft", "lora", "peft", method.replace("+", "-")]
    header = ModelCardData(
        base_model=hub_base_model(model.get("name", "")),
        library_name="peft",
        pipeline_tag="text-generation",
        tags=[t for t in dict.fromkeys(tags) if t],
    ).to_yaml()
    o, lora, data = cfg.get("optim", {}), cfg.get("lora", {}), cfg.get("data", {})
    templates = manifest.get("templates", {})
    chat = manifest.get("chat_template", {})
    lines = [
        "---",
        header,
        "---",
        "",
        f"# {method} adapter for {base} on {manifest.get('task')}",
        "",
        f"A LoRA adapter trained with flexpaft, method **{method}**, "
        f"on the task **{manifest.get('task')}** ({manifest.get('format')} answers).",
        "",
        "## Use",
        "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        "model = AutoPeftModelForCausalLM.from_pretrained('<this repo or directory>')",
        "```",
        "",
        "or `flexpaft eval --adapter <directory>` to score it under many templates.",
        "",
        "## Prompts",
        "",
    ]
    if "count" in templates:
        lines.append(
            f"Trained under {templates['count']} templates from `{templates.get('source')}` "
            f"(digest {str(templates.get('digest', ''))[:16]}); the list is in the run's "
            "train_templates.jsonl."
        )
    elif "chosen" in templates:
        lines.append(
            f"Trained under template {templates['chosen']}, the best of "
            f"{templates.get('candidates')} candidates on the base model."
        )
    else:
        lines += ["Trained under one template:", "", "```", str(templates.get("template")), "```"]
    lines += [
        "",
        f"Chat template: `{chat.get('setting', 'none')}` "
        + (
            "(prompts wrapped as the user turn, the answer as the assistant turn: use the same "
            "chat format at inference)."
            if chat.get("applied")
            else "(raw prompts, no chat format)."
        ),
        "",
        "## Training",
        "",
        *_table(
            [
                ("base model", base),
                ("method", method),
                ("task / data", f"{data.get('task')} / {data.get('source') or 'hub'}"),
                ("examples", manifest.get("examples")),
                ("steps", manifest.get("steps")),
                ("learning rate", o.get("lr")),
                ("epochs / max steps", f"{o.get('epochs')} / {o.get('max_steps')}"),
                ("batch size x accumulation", f"{o.get('batch_size')} x {o.get('grad_accum')}"),
                ("warm-up ratio", o.get("warmup_ratio")),
                ("weight decay", o.get("weight_decay")),
                (
                    "LoRA r / alpha / dropout",
                    f"{lora.get('r')} / {lora.get('alpha')} / {lora.get('dropout')}",
                ),
                ("target modules", lora.get("target_modules")),
                ("adapted layers", manifest.get("layers")),
                ("seed", manifest.get("seed")),
                ("config hash", manifest.get("config_hash")),
            ]
        ),
        "",
        "## Evaluation",
        "",
    ]
    lines += eval_section(results) if results else ["No evaluation attached yet."]
    lines += ["", "## Framework versions", ""]
    lines += [f"- {k} {v}" for k, v in manifest.get("versions", {}).items()]
    return "\n".join(lines) + "\n"


def write_model_card(
    adapter_dir: str | Path, manifest: dict[str, Any], results: dict[str, Any] | None = None
) -> Path:
    """README.md in ``adapter_dir``; adapter_config.json names the hub base model when known
    (PEFT wrote the local path it loaded, e.g. flexpaft's cache of the embedded model), so
    ``AutoPeftModelForCausalLM`` and lm-eval's ``peft=`` find the base model elsewhere."""
    adapter_dir = Path(adapter_dir)
    hub_id = hub_base_model(manifest.get("config", {}).get("model", {}).get("name", ""))
    config = adapter_dir / "adapter_config.json"
    if hub_id and config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        if data.get("base_model_name_or_path") != hub_id:
            data["base_model_name_or_path"] = hub_id
            atomic_write_text(config, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return atomic_write_text(adapter_dir / "README.md", model_card(manifest, results))
