"""Evaluation during training: loss and accuracy on held-out examples under held-out templates,
the best adapter by a chosen metric, and optional early stopping.

Accuracy comes from the project's evaluator (``evaluate_templates``), loss from the training
loss (``answer_loss``) on the same (example, template) pairs, so the numbers mean what they mean
everywhere else in flexpaft. Under several processes every rank scores its share of the
examples and the sums are reduced, so every rank takes the same best/stop decision.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexpaft.errors import FlexpaftError
from flexpaft.settings.train import VALIDATION_METRICS as METRICS
from flexpaft.settings.train import ValidationSettings

if TYPE_CHECKING:  # the config (and so `flexpaft --help`) must not import torch
    import torch

    from flexpaft.prompts import Template
    from flexpaft.tasks.spec import AnswerFormat, Example, TaskSpec

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
BEST_FILE = "best_lora.safetensors"


def eval_templates(
    settings: ValidationSettings, task: TaskSpec, fmt: AnswerFormat, training: list[Template]
) -> list[Template]:
    from flexpaft.prompts.task_templates import load_valid_set

    found = (
        list(load_valid_set(settings.eval_templates, task, fmt))
        if settings.eval_templates
        else training
    )
    chosen = found[: settings.max_eval_templates]
    shared = {t.text for t in chosen} & {t.text for t in training}
    if settings.eval_templates and shared:
        log.warning("%d validation template(s) are also training templates", len(shared))
    return chosen


class Validator:
    """Evaluates the model every ``eval_every`` steps and keeps the best LoRA weights in memory."""

    def __init__(
        self,
        settings: ValidationSettings,
        task: TaskSpec,
        fmt: AnswerFormat,
        examples: list[Example],
        templates: list[Template],
        tokenizer: Any,
        acc: Any,
        max_length: int,
    ) -> None:
        if len(examples) < acc.num_processes:
            raise FlexpaftError(
                f"validation.eval_examples ({len(examples)}) must be at least the number of "
                f"processes ({acc.num_processes})"
            )
        self.s, self.task, self.fmt, self.tok, self.acc = settings, task, fmt, tokenizer, acc
        self.templates, self.max_length = templates, max_length
        self.n_examples = len(examples)
        self.examples = examples[acc.process_index :: acc.num_processes]  # this rank's share
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stale = 0  # evaluations since the last improvement
        self.stopped_early = False
        self.seconds = 0.0  # time spent evaluating (not counted as training time)

    # -- when --

    def due(self, step: int, total_steps: int) -> bool:
        if not self.s.enabled or (self.history and self.history[-1]["step"] == step):
            return False
        return step % self.s.eval_every == 0 or step >= total_steps

    # -- what --

    def measure(self, model: torch.nn.Module) -> dict[str, Any]:
        """Loss and per-template accuracy over every rank's examples (a collective)."""
        import torch

        with torch.no_grad():
            return self._measure(model)

    def _measure(self, model: torch.nn.Module) -> dict[str, Any]:
        import torch

        from flexpaft.evaluation.evaluator import evaluate_templates
        from flexpaft.training.data import PadCollator, RenderedDataset, answer_loss

        device = self.acc.device
        was_training = model.training
        model.eval()
        res = evaluate_templates(
            model,
            self.tok,
            self.task,
            self.fmt,
            self.templates,
            self.examples,
            batch_size=self.s.batch_size,
            max_length=self.max_length,
            progress=False,
        )
        correct = torch.tensor(
            [sum(t.correct) for t in res.per_template], dtype=torch.float64, device=device
        )
        # Loss: the training objective on the same pairs, weighted by answer tokens.
        dataset = RenderedDataset(
            self.task, self.examples, self.templates, self.fmt, self.tok, self.max_length
        )
        collate = PadCollator(self.tok.pad_token_id, 1)
        pairs = [(e, t) for t in range(len(self.templates)) for e in range(len(self.examples))]
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        tokens = torch.zeros((), dtype=torch.float64, device=device)
        for i in range(0, len(pairs), self.s.batch_size):
            batch = collate([dataset[p] for p in pairs[i : i + self.s.batch_size]])
            batch = {k: v.to(device) for k, v in batch.items()}
            n = (batch["labels"][:, 1:] != -100).sum()
            loss_sum += answer_loss(model, batch).double() * n
            tokens += n
        if was_training:
            model.train()
        sums = torch.cat([correct, loss_sum[None], tokens[None]])
        if self.acc.num_processes > 1:
            sums = self.acc.reduce(sums, reduction="sum")
        per_template = (sums[: len(self.templates)] / self.n_examples).tolist()
        return {
            "loss": float(sums[-2] / sums[-1]),
            "accuracy": sum(per_template) / len(per_template),
            "min_accuracy": min(per_template),
            "per_template": {t.id: a for t, a in zip(self.templates, per_template)},
        }

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        best = self.best[self.s.metric]
        return value > best if METRICS[self.s.metric] == "max" else value < best

    def run(self, step: int, prepared: torch.nn.Module) -> bool:
        """Evaluate at ``step``; keep the weights if they are the best; True = stop training."""
        import time

        from peft import get_peft_model_state_dict

        started = time.perf_counter()
        model = self.acc.unwrap_model(prepared)
        row = {"step": step, **self.measure(model)}
        self.history.append(row)
        if self.improved(row[self.s.metric]):
            self.best, self.stale = row, 0
            # LoRA weights are small: the best copy stays in host memory.
            self.best_state = {
                k: v.detach().to("cpu", copy=True)
                for k, v in get_peft_model_state_dict(model).items()
            }
        else:
            self.stale += 1
        log.info(
            "step %d validation loss %.4f accuracy %.4f (best %s %.4f at step %d)",
            step,
            row["loss"],
            row["accuracy"],
            self.s.metric,
            self.best[self.s.metric],
            self.best["step"],
        )
        patience = self.s.early_stopping_patience
        self.stopped_early = bool(patience and self.stale >= patience)
        self.seconds += time.perf_counter() - started
        return self.stopped_early

    def restore_best(self, model: torch.nn.Module) -> None:
        """Put the best evaluation's LoRA weights into ``model`` (the adapter to be saved)."""
        from peft import set_peft_model_state_dict

        if self.best_state is not None and self.best is not self.history[-1]:
            set_peft_model_state_dict(model, self.best_state)

    # -- persistence beside the trainer's checkpoint --

    def save(self, directory: Path, step: int) -> None:
        from safetensors.torch import save_file

        from flexpaft.io import atomic_directory

        with atomic_directory(directory) as tmp:
            state = {
                "step": step,
                "history": self.history,
                "best_step": self.best["step"] if self.best else None,
                "stale": self.stale,
            }
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
            if self.best_state is not None:
                save_file(self.best_state, str(tmp / BEST_FILE))

    def resume(self, directory: Path, step: int) -> None:
        from safetensors.torch import load_file

        f = directory / STATE_FILE
        state = json.loads(f.read_text()) if f.is_file() else None
        if state is None or state["step"] != step:
            if self.s.enabled:
                log.warning("no validation state for step %d: the best adapter restarts", step)
            return
        self.history, self.stale = state["history"], state["stale"]
        rows = [r for r in self.history if r["step"] == state["best_step"]]
        if rows and (directory / BEST_FILE).is_file():
            self.best = rows[0]
            self.best_state = load_file(str(directory / BEST_FILE))

    def summary(self) -> dict[str, Any]:
        if not self.s.enabled:
            return {}
        return {
            "metric": self.s.metric,
            "best_step": self.best["step"] if self.best else None,
            "best": {k: v for k, v in self.best.items() if k != "step"} if self.best else None,
            "final_step": self.history[-1]["step"] if self.history else None,
            "stopped_early": self.stopped_early,
            "eval_seconds": round(self.seconds, 2),
            "examples": self.n_examples,
            "templates": [t.id for t in self.templates],
            "history": self.history,
        }
