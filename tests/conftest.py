"""Shared fixtures: a tiny randomly initialised Llama and a byte-level BPE tokenizer.

The model is saved to disk once per session so every layer of flexpaft, including the CLI,
loads it exactly as it would load a real checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_DATA = SHARED / "data"
SHARED_PROMPTS = SHARED / "prompts" / "paft"

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared is not present")

CORPUS = [
    "Question: is the sky blue? Answer: yes",
    "Question: is fire cold? Answer: no",
    "Passage: the cat sat on the mat. Question: did the cat sit? Answer: yes",
    "A. yes B. no Answer: A",
    "A. first B. second C. third D. fourth E. fifth Answer: B",
    "The answer is C. The answer is D. The answer is E.",
    "Goal: open a jar. Solution: twist the lid. Option one or option two.",
]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def build_model(vocab_size: int, layers: int = 2, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny Llama (4 blocks) + tokenizer directory."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = build_tokenizer()
    model = build_model(len(tok), layers=4)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """(model, tokenizer) loaded through flexpaft's own loader."""
    from flexpaft.models import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FLEXPAFT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def boolq_rows(n: int = 24) -> list[dict]:
    """Synthetic BoolQ-schema rows: the answer is 'yes' exactly when the passage says so."""
    rows = []
    for i in range(n):
        yes = i % 2 == 0
        rows.append(
            {
                "question": f"is item {i} red",
                "passage": f"Item {i} is {'red' if yes else 'blue'}.",
                "answer": yes,
            }
        )
    return rows


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def recording_cudnn_flag(real_loss, seen: dict[str, list[bool]]):
    """``real_loss`` that records, in ``seen["forward"]`` and ``seen["backward"]``, whether SDPA's
    cuDNN kernel was allowed during each forward and each backward through the loss."""
    import torch

    def loss_fn(model, batch):
        seen["forward"].append(torch.backends.cuda.cudnn_sdp_enabled())
        loss = real_loss(model, batch)
        if loss.requires_grad:
            loss.register_hook(
                lambda g: seen["backward"].append(torch.backends.cuda.cudnn_sdp_enabled())
            )
        return loss

    return loss_fn
