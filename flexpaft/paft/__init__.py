"""PAFT stage 1: candidate prompts (offline grammar, LLM generators), filters, adversarial set."""
