"""Prompt templates and prompt sets."""

from .promptset import PromptSet
from .template import Template, TemplateError

__all__ = ["PromptSet", "Template", "TemplateError"]
