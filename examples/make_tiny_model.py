"""Write a tiny randomly initialised Llama and its tokenizer to a directory, for CI runs of the
examples (a few real training steps in seconds; what it learns is meaningless).

    python examples/make_tiny_model.py /tmp/tiny-llama
    python examples/trl_sft_paft.py --model /tmp/tiny-llama --max-steps 4 --output-dir /tmp/out
"""

from __future__ import annotations

import argparse
import json
from importlib import resources


def snips_texts() -> list[str]:
    path = resources.files("flexpaft").joinpath("data", "snips_train.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:400]]
    return [r["text"] for r in rows] + ["Request: Intent: Answer: playlist restaurant weather"]


def build(path: str, seed: int = 0) -> str:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(snips_texts(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="directory to write the model and tokenizer to")
    print(build(parser.parse_args().path))
