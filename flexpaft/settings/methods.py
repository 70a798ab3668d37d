"""The training methods, as rows: each is a template policy and a layer policy.

A method is two independent choices, so it is data, not code: which templates the examples are
rendered under (``one``: the user's or the task's template; ``ranked``: the prompt set's template
that scores best on the base model; ``set``: a template drawn from the prompt set per example and
per epoch, PAFT) and which blocks get LoRA (``all``, or ``search``: Flexora's bilevel search picks
them). The trainer reads these properties and never a method's name; the policies themselves
live in ``flexpaft.methods`` (``TEMPLATE_POLICIES``, ``LAYER_POLICIES``). Adding a method is a row
here, plus a policy module when it needs a new kind of choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TemplatePolicy = Literal["one", "ranked", "set"]
LayerPolicy = Literal["all", "search"]


@dataclass(frozen=True)
class Method:
    name: str
    templates: TemplatePolicy
    layers: LayerPolicy
    summary: str

    @property
    def draws_templates(self) -> bool:
        """Examples are rendered under templates drawn from a prompt set (PAFT's sampling):
        the own-template share (``prompts.own_rate``) and the consistency term apply."""
        return self.templates == "set"

    @property
    def needs_prompt_set(self) -> bool:
        return self.templates in ("ranked", "set")

    @property
    def searches_layers(self) -> bool:
        return self.layers == "search"

    @property
    def auto_loss(self) -> str:
        """What ``optim.loss=auto`` means for this method on a scored answer format: the loss
        over the answer options where templates are drawn (the PAFT tax study: it lifted PAFT's
        worst unseen template by 22 points), the answer loss otherwise (the papers' baseline)."""
        return "options" if self.draws_templates else "answer"


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("lora", "one", "all", "LoRA under one template (the task's or prompts.template)"),
        Method("paft", "set", "all", "PAFT: a template drawn from prompts.prompt_set per example"),
        Method(
            "topaccuracy",
            "ranked",
            "all",
            "LoRA under the prompt set's template that scores best on the base model",
        ),
        Method("flexora", "one", "search", "Flexora: searched blocks, one template"),
        Method("flexora+paft", "set", "search", "Flexora's searched blocks, trained with PAFT"),
    )
}


def method(name: str) -> Method:
    """The row of method ``name``; an unknown name is a ValueError listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r} (choose from {', '.join(METHODS)})") from None


def with_layers(name: str, layers: LayerPolicy) -> str:
    """The method that keeps ``name``'s templates and uses ``layers``: ``flexpaft search``
    runs the search of a method's searching twin (lora -> flexora, paft -> flexora+paft)."""
    row = method(name)
    for m in METHODS.values():
        if m.templates == row.templates and m.layers == layers:
            return m.name
    raise ValueError(f"no method uses the templates of {name!r} with layers={layers!r}")
