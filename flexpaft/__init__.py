"""flexpaft: robust, efficient LoRA fine-tuning of causal language models.

Data flow: task + prompt set -> examples rendered under sampled templates -> trainer
(LoRA, optionally gated and searched) -> PEFT adapter -> evaluator under many templates -> report.
"""

__version__ = "0.1.0"
