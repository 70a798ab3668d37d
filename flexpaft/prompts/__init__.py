"""Prompt templates and prompt sets."""

from flexpaft.prompts.promptset import PromptSet
from flexpaft.prompts.template import Template, TemplateError

__all__ = ["PromptSet", "Template", "TemplateError"]
