"""The end of a search: the selection (a rule on alpha, or the validated rule's rungs), the
stage-2 ranks, and what is written for it (selection.json, alpha.jsonl's overlaps, alpha.png)."""

from __future__ import annotations

import json
from typing import Any

from flexpaft.io import atomic_write_text
from flexpaft.memory import peak_memory
from flexpaft.methods.flexora.blocks import modules_by_block
from flexpaft.methods.flexora.checkpoint import read_alpha_log
from flexpaft.methods.flexora.ladder import Ladder, validated_selection
from flexpaft.methods.flexora.outcome import (
    ALPHA_LOG,
    ALPHA_PLOT,
    SELECTION,
    SearchOutcome,
    block_patterns,
    write_selection,
)
from flexpaft.methods.flexora.plots import plot_alpha
from flexpaft.methods.flexora.select import gate_ranks, overlap, select_layers
from flexpaft.training.lora import adapted_module_names


def validated(search: Any) -> Ladder:
    """The validated rule's rungs, scored on every validation batch of ``search`` (a
    ``LayerSearch``; ladder.py); every rank gathers every rank's losses, so all choose alike."""
    gather = None
    if search.acc.num_processes > 1:
        from accelerate.utils import gather_object

        gather = gather_object
    model = search.acc.unwrap_model(search.wrapped)
    f = search.cfg.flexora
    own = search.own_val.batches if search.own_val is not None else None
    return validated_selection(
        model, search.gates, search.val.batches, search.rows, f.tolerance_se, gather, own
    )


def conclude(search: Any) -> tuple[SearchOutcome, str]:
    """Select the blocks of a finished ``LayerSearch`` and write its outputs (main process);
    returns the outcome and the line to log about the selection."""
    cfg, f, acc = search.cfg, search.cfg.flexora, search.acc
    alpha = search.gates.alpha.detach().cpu().tolist()
    gates = search.gates.values().detach().cpu().tolist()
    ladder = validated(search) if f.selection == "validated" else None
    layers = ladder.layers if ladder else select_layers(alpha, f.selection, f.k, f.fraction)
    ranks, rank_pattern, alpha_pattern = {}, {}, {}
    if f.ranks == "gate":
        lora = cfg.lora
        per_block = gate_ranks(alpha, layers, lora.r, lora.alpha, lora.use_rslora)
        names = modules_by_block(search.model.get_base_model(), search.layout)
        rank_pattern, alpha_pattern = block_patterns(names, per_block)
        ranks = {i: rank for i, (rank, _) in per_block.items()}
    memory, kind = peak_memory(acc.device)
    spread = 0.0
    if acc.num_processes > 1:
        # Every rank selects from its own alpha: check they really are one alpha.
        every = acc.gather(search.gates.alpha.detach()[None])
        spread = float((every - every[0]).abs().max())
    outcome = SearchOutcome(
        layers=layers,
        train_examples=search.train_examples,
        alpha=alpha,
        gates=gates,
        rule=f.selection,
        steps=search.step,
        inner_steps=search.inner_steps,
        seconds=search.seconds,
        peak_memory_bytes=memory,
        peak_memory_kind=kind,
        n_blocks=search.layout.count,
        block_list=search.layout.prefix,
        layers_pattern=search.layers_pattern,
        unroll=search.unroll,
        budget_steps=search.total,
        stopped_early=search.stopped_early,
        ranks=ranks,
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        alpha_rank_spread=spread,
        target_modules=adapted_module_names(search.model.get_base_model()),
        lora=cfg.lora,
        ladder=ladder.records if ladder else [],
        compute_share=round(search.compute_share(search.step), 4),
        inner_loss=search.train_loss_kind,
    )
    if acc.is_main_process:
        out = search.out
        write_selection(out / SELECTION, outcome, cfg, search.config_hash)
        rows = read_alpha_log(out / ALPHA_LOG, search.step)
        # How settled the selection was: its overlap at every step with the final one.
        for row in rows:
            if "selected" in row:
                row["overlap_final"] = round(overlap(row["selected"], layers), 4)
        atomic_write_text(out / ALPHA_LOG, "".join(json.dumps(r) + "\n" for r in rows))
        plot_alpha(rows, out / ALPHA_PLOT)
    if ladder:
        return outcome, f"{ladder.message}: {layers}"
    n = search.layout.count
    return outcome, f"flexora selected {len(layers)} of {n} blocks ({f.selection}): {layers}"
