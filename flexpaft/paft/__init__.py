"""PAFT stage 1: candidate prompts (offline grammar, LLM generators), filters, adversarial set."""

from flexpaft.paft.adversarial import make_adversarial
from flexpaft.paft.filters import FilterReport, filter_candidates
from flexpaft.paft.llm import HFChat, OpenAIChat, ReplyCache, generate_with_llms, parse_reply
from flexpaft.paft.offline import generate_offline

__all__ = [
    "FilterReport",
    "HFChat",
    "OpenAIChat",
    "ReplyCache",
    "filter_candidates",
    "generate_offline",
    "generate_with_llms",
    "make_adversarial",
    "parse_reply",
]
