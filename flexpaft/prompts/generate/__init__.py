"""PAFT stage 1: candidate prompts (offline grammar, LLM generators), filters, adversarial set;
``generate_prompts`` runs them all into a directory."""

from flexpaft.prompts.generate.adversarial import make_adversarial
from flexpaft.prompts.generate.clients import HFChat, OpenAIChat
from flexpaft.prompts.generate.filters import FilterReport, filter_candidates
from flexpaft.prompts.generate.llm import ReplyCache, generate_with_llms
from flexpaft.prompts.generate.meta import parse_reply
from flexpaft.prompts.generate.offline import generate_offline
from flexpaft.prompts.generate.pipeline import GeneratedPrompts, generate_prompts

__all__ = [
    "FilterReport",
    "GeneratedPrompts",
    "HFChat",
    "OpenAIChat",
    "ReplyCache",
    "filter_candidates",
    "generate_offline",
    "generate_prompts",
    "generate_with_llms",
    "make_adversarial",
    "parse_reply",
]
