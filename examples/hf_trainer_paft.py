"""PAFT in a transformers ``Trainer`` script: LoRA fine-tuning where every training example is
rendered under a prompt template drawn at random, again every epoch, so the model learns the task
and not one wording. The lines flexpaft adds are marked ``# PAFT``; the rest is an ordinary
Trainer + PEFT script.

    python examples/hf_trainer_paft.py                    # the embedded SmolLM2-135M on snips
    python examples/hf_trainer_paft.py --model DIR --max-steps 4 --output-dir /tmp/paft-hf  # CI
    python examples/hf_trainer_paft.py --examples 160 --epochs 1  # 20 steps: a CPU-sized run

The adapter it saves is a plain PEFT adapter: ``PeftModel.from_pretrained(base, output_dir)``.
"""

from __future__ import annotations

import argparse

import datasets
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from flexpaft.hf import OptionsLossMixin, PaftData  # PAFT
from flexpaft.models import resolve_model
from flexpaft.prompts.generate.offline import generate_offline
from flexpaft.tasks import AnswerFormat, load_task
from flexpaft.tasks.data import packaged_path


class PaftTrainer(OptionsLossMixin, Trainer):  # PAFT: only for loss="options"
    """Trainer trained on the loss over the task's answer options."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded", help="hub id, local directory or 'embedded'")
    p.add_argument("--output-dir", default="runs/hf-paft", help="where the adapter is saved")
    p.add_argument("--templates", default="", help="prompt-set file (default: 40 generated)")
    p.add_argument("--loss", default="options", choices=("options", "answer"))
    p.add_argument("--examples", type=int, default=400, help="training examples (snips train)")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after N steps (-1: epochs)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> str:
    a = parse_args(argv)
    path = resolve_model(a.model)  # 'embedded': the SmolLM2 GGUF, dequantized once into a cache
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    lora = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, lora)

    # Your data in its own schema: here the snips intents shipped with flexpaft.
    task = load_task("snips")
    rows = datasets.load_dataset("json", data_files=str(packaged_path(task, "train")))["train"]
    rows = rows.shuffle(seed=a.seed).select(range(min(a.examples, len(rows))))
    # Templates to draw from: a prompt-set file, or 40 generated offline from a format grammar.
    templates = a.templates or generate_offline(task, AnswerFormat.LABEL_WORDS, n=40, seed=a.seed)

    paft = PaftData(task, rows, templates, tokenizer, loss=a.loss, seed=a.seed)  # PAFT
    args = TrainingArguments(
        a.output_dir,
        num_train_epochs=a.epochs,
        max_steps=a.max_steps,
        per_device_train_batch_size=a.batch_size,
        learning_rate=a.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        seed=a.seed,
        **paft.training_args_kwargs(),  # PAFT: keep the dataset's index column
    )
    trainer_class = PaftTrainer if a.loss == "options" else Trainer
    trainer = trainer_class(
        model=model,
        args=args,
        processing_class=tokenizer,
        **paft.trainer_kwargs(),  # PAFT: train_dataset, data_collator, callbacks
    )
    trainer.train()
    trainer.save_model(a.output_dir)
    print(f"adapter saved to {a.output_dir} ({paft})")
    return a.output_dir


if __name__ == "__main__":
    main()
