"""PAFT without the wording tax (issue 23): own-template draws, the options loss, consistency,
and the report's own-prompt numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import boolq_rows, write_jsonl
from test_trainer import _cfg  # the trainer tests' tiny-run config

from flexpaft.errors import FlexpaftError
from flexpaft.settings.loading import load_config
from flexpaft.settings.train import TrainConfig
from flexpaft.training.sampling import PromptBatchSampler, plan_epoch

TEXTS = [
    "{passage}\nQ: {question}?\nA:",
    "Q: {question}? {passage}\nAnswer:",
    "{question}?\n{passage}\nYes or no:",
]


# --- 2a: the own template drawn at a set rate -------------------------------------------------


def test_own_template_share_is_the_rate_and_the_stream_replays():
    n, t, own, rate = 4000, 10, 3, 0.3
    plans = [plan_epoch(n, t, epoch, seed=7, own=own, own_rate=rate) for epoch in range(3)]
    share = np.mean(np.concatenate([p.templates for p in plans]) == own)
    # 12000 draws: the share's standard error is sqrt(.3 * .7 / 12000) = 0.0042.
    assert abs(share - rate) < 0.02
    # The other draws are uniform over the 9 other templates: each near 0.7 / 9 = 0.078.
    others = np.concatenate([p.templates for p in plans])
    counts = np.bincount(others, minlength=t) / others.size
    assert np.all(np.abs(np.delete(counts, own) - 0.7 / 9) < 0.015)
    again = plan_epoch(n, t, 1, seed=7, own=own, own_rate=rate)
    assert np.array_equal(again.templates, plans[1].templates)
    assert np.array_equal(again.examples, plans[1].examples)


def test_without_own_rate_the_stream_is_the_original_one():
    # Runs trained before own_rate existed replay exactly: same draw as without the arguments.
    a = plan_epoch(50, 6, 2, seed=3)
    b = plan_epoch(50, 6, 2, seed=3, own=4, own_rate=0.0)
    assert np.array_equal(a.templates, b.templates) and np.array_equal(a.examples, b.examples)
    assert not np.array_equal(
        a.templates, plan_epoch(50, 6, 2, seed=3, own=4, own_rate=0.5).templates
    )


def test_own_rate_in_steps_mode_keeps_one_template_per_block():
    plan = plan_epoch(
        64, 5, 0, seed=1, mode="steps", k_steps=2, global_batch=4, own=0, own_rate=0.5
    )
    blocks = plan.templates.reshape(-1, 8)
    assert np.all(blocks == blocks[:, :1])
    assert 0 in blocks[:, 0]


def test_own_draws_are_sharded_by_rank_and_resume_mid_epoch():
    kw = dict(batch_size=2, seed=5, own=1, own_rate=0.4)
    one = PromptBatchSampler(40, 6, world_size=1, **kw)
    r0 = PromptBatchSampler(40, 6, rank=0, world_size=2, **kw)
    r1 = PromptBatchSampler(40, 6, rank=1, world_size=2, **kw)
    full = one.batches(1)
    assert r0.batches(1) + r1.batches(1) != full  # different layout...
    interleaved = [b for pair in zip(r0.batches(1), r1.batches(1)) for b in pair]
    assert interleaved == full  # ...of one global stream
    one.set_epoch(1, skip=3)
    assert list(one) == full[3:]


def test_own_rate_is_validated():
    for bad in ("1", "-0.1", "1.5"):
        with pytest.raises(FlexpaftError, match="own_rate"):
            load_config(TrainConfig, None, [f"prompts.own_rate={bad}"])


def test_own_template_is_added_to_the_training_templates(tmp_path):
    from flexpaft.methods.templates import sampled_own_index, training_templates
    from flexpaft.tasks.builtin import BUILTIN_TASKS
    from flexpaft.tasks.spec import AnswerFormat

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"template": t} for t in TEXTS])
    task, fmt = BUILTIN_TASKS["boolq"], AnswerFormat.LABEL_WORDS
    cfg = load_config(
        TrainConfig, None, ["method=paft", f"prompts.prompt_set={prompts}", "prompts.own_rate=0.2"]
    )
    templates, info = training_templates(cfg, task, fmt, [], None, None)
    assert len(templates) == 4 and templates[-1].text == task.templates["label_words"]
    assert info["own"]["added"] is True and info["own"]["rate"] == 0.2
    assert sampled_own_index(cfg, task, fmt, templates) == 3
    # Already in the set (prompts.template names one of them): not added twice.
    cfg2 = load_config(
        TrainConfig,
        None,
        ["method=paft", f"prompts.prompt_set={prompts}", "prompts.own_rate=0.2"]
        + [f"prompts.template={TEXTS[1]}"],
    )
    templates2, info2 = training_templates(cfg2, task, fmt, [], None, None)
    assert len(templates2) == 3 and info2["own"]["added"] is False
    assert sampled_own_index(cfg2, task, fmt, templates2) == 1
    # Off (0; the default is 0.5): the prompt set as it is, no own index.
    cfg3 = load_config(
        TrainConfig, None, ["method=paft", f"prompts.prompt_set={prompts}", "prompts.own_rate=0"]
    )
    templates3, info3 = training_templates(cfg3, task, fmt, [], None, None)
    assert len(templates3) == 3 and "own" not in info3
    assert sampled_own_index(cfg3, task, fmt, templates3) is None


# --- 2b, 2c: options loss and consistency ---------------------------------------------------


def test_symmetric_kl_by_hand():
    from flexpaft.training.consistency import symmetric_kl

    # p = softmax([0, ln 3]) = (1/4, 3/4); q = softmax([ln 3, 0]) = (3/4, 1/4).
    a = torch.tensor([[0.0, math.log(3)]])
    b = torch.tensor([[math.log(3), 0.0]])
    # KL(p||q) = 1/4 ln(1/3) + 3/4 ln 3 = 1/2 ln 3 = KL(q||p); their mean is 1/2 ln 3.
    assert symmetric_kl(a, b).item() == pytest.approx(0.5 * math.log(3), abs=1e-6)
    assert symmetric_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)
    # A missing third option (-inf in both) adds nothing and makes no NaN; example mean of two.
    a3 = torch.tensor([[0.0, math.log(3), float("-inf")], [1.0, 1.0, 1.0]])
    b3 = torch.tensor([[math.log(3), 0.0, float("-inf")], [1.0, 1.0, 1.0]])
    assert symmetric_kl(a3, b3).item() == pytest.approx(0.25 * math.log(3), abs=1e-6)


def test_consistency_loss_is_the_mean_ce_plus_weighted_kl(tiny):
    from flexpaft.prompts import Template
    from flexpaft.tasks.builtin import BUILTIN_TASKS
    from flexpaft.tasks.spec import AnswerFormat
    from flexpaft.training.consistency import (
        PairedCollator,
        PairedOptionsDataset,
        consistency_loss,
        split_pair,
        symmetric_kl,
    )
    from flexpaft.training.options import option_scores

    model, tok = tiny
    task, fmt = BUILTIN_TASKS["boolq"], AnswerFormat.LABEL_WORDS
    examples = [task.normalize(r, uid=str(i)) for i, r in enumerate(boolq_rows(4))]
    templates = [Template(t, str(i)) for i, t in enumerate(TEXTS)]
    ds = PairedOptionsDataset(task, examples, templates, fmt, tok, 64)
    batch = PairedCollator(tok.pad_token_id)([ds[(i, i % 3, (i + 1) % 3)] for i in range(4)])
    with torch.no_grad():
        loss, parts = consistency_loss(model, batch, 0.7)
        first, second = split_pair(batch)
        s1, s2 = option_scores(model, first), option_scores(model, second)
        ce = lambda s: torch.nn.functional.cross_entropy(s, first["gold"]).item()  # noqa: E731
        expected = 0.5 * (ce(s1) + ce(s2)) + 0.7 * symmetric_kl(s1, s2).item()
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert parts["sym_kl"] > 0  # two different wordings of a random model disagree


def test_second_template_differs_and_depends_on_the_example_only():
    from flexpaft.training.sampling import second_templates

    plan = plan_epoch(30, 4, 2, seed=9, second=True)
    assert plan.second is not None and np.all(plan.second != plan.templates)
    again = plan_epoch(30, 4, 2, seed=9, second=True)
    assert np.array_equal(plan.second, again.second)
    # Offset by example: reordering the examples moves each example's offset with it.
    perm = plan.examples[::-1]
    first = plan.templates[::-1]
    assert np.array_equal(second_templates(perm, first, 4, 9, 2), plan.second[::-1])
    assert np.array_equal(second_templates(np.arange(3), np.zeros(3, int), 1, 0, 0), [0, 0, 0])


def test_loss_and_consistency_are_validated_and_refused_where_meaningless():
    with pytest.raises(FlexpaftError, match="optim.loss"):
        load_config(TrainConfig, None, ["optim.loss=tokens"])
    for bad in ("-1", "nan"):
        with pytest.raises(FlexpaftError, match="consistency"):
            load_config(TrainConfig, None, [f"optim.consistency={bad}"])
    with pytest.raises(FlexpaftError, match="several training templates"):
        load_config(TrainConfig, None, ["optim.consistency=0.5"])  # method lora
    from flexpaft.tasks.spec import AnswerFormat

    for key in ("optim.loss=options", "optim.consistency=1"):
        cfg = load_config(TrainConfig, None, ["method=paft", key])
        with pytest.raises(FlexpaftError, match="generation has none"):
            cfg.check_format(AnswerFormat.GENERATION)
        cfg.check_format(AnswerFormat.LABEL_WORDS)


def test_generation_with_options_loss_is_refused_in_one_line_before_loading(tmp_path):
    import subprocess
    import sys

    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(8))
    sets = ["model.name=/nonexistent", f"data.source={data}", "data.format=generation"]
    sets += ["optim.loss=options", f"output_dir={tmp_path / 'run'}"]
    cmd = [sys.executable, "-m", "flexpaft.cli", "train"]
    for s in sets:
        cmd += ["--set", s]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert (
        lines[-1].startswith("flexpaft: error: optim.loss=options")
        and "Traceback" not in done.stderr
    )


@pytest.mark.parametrize(
    "extra",
    [
        ("optim.loss=options",),
        ("optim.consistency=0.5", "prompts.own_rate=0.25"),
    ],
)
def test_training_with_the_new_settings_resumes_bit_identically(tmp_path, tiny_model_dir, extra):
    from safetensors.torch import load_file

    import flexpaft.training.loop as trainer_mod
    from flexpaft.recipe import train

    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(24))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"template": t} for t in TEXTS])
    common = ["method=paft", f"prompts.prompt_set={prompts}", "optim.max_steps=4", *extra]
    full = train(
        _cfg(tiny_model_dir, data, tmp_path / "full", *common, "checkpoint_every=0"),
        progress=False,
    )
    part_cfg = _cfg(tiny_model_dir, data, tmp_path / "part", *common, "checkpoint_every=2")
    real_save = trainer_mod.save_checkpoint

    def save_then_crash(*a, **k):
        real_save(*a, **k)
        raise KeyboardInterrupt

    trainer_mod.save_checkpoint = save_then_crash
    try:
        with pytest.raises(KeyboardInterrupt):
            train(part_cfg, progress=False)
    finally:
        trainer_mod.save_checkpoint = real_save
    resumed = train(part_cfg, progress=False)
    a = load_file(str(full.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    m = full.manifest
    assert m["steps"] == 4 and m["tokens"] > 0 and m["train_seconds"] > 0
    assert json.loads((tmp_path / "full" / "manifest.json").read_text())["config"]["optim"][
        "loss"
    ] == ("options" if "optim.loss=options" in extra else "auto")
    # auto under paft on a scored format is the loss over the options, and the manifest says so.
    assert m["loss"] == "options"


def test_consistency_counts_the_second_views_tokens():
    from flexpaft.training.consistency import batch_tokens

    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert batch_tokens({"attention_mask": mask}) == (5, 6)
    paired = {"first.attention_mask": mask, "second.attention_mask": torch.ones(2, 4, dtype=int)}
    assert batch_tokens(paired) == (13, 14)


# --- 1: the report shows the tax -----------------------------------------------------------

IDS = ["t1", "t2", "t3"]
# Per-template accuracy 0.5, 0.5, 0.75: mean 7/12, worst 0.5.
LORA = [[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0]]
# Per-template accuracy 1, 0.75, 1: mean 11/12, worst 0.75.
PAFT = [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]]


def _per_template(rows, ids):
    return [
        {
            "id": tid,
            "text": f"Q {tid}: {{goal}}",
            "accuracy": sum(c) / len(c),
            "n": len(c),
            "correct": c,
            "predictions": [0] * len(c),
        }
        for tid, c in zip(ids, rows)
    ]


def _results(name, rows, own=None, ids=IDS):
    d = {"name": name, "task": "piqa", "format": "letter", "mode": "first_token", "seconds": 1.0}
    d["per_template"] = _per_template(rows, ids)
    if own is not None:
        ref = {"task": "piqa", "format": "letter", "mode": "first_token", "seconds": 1.0}
        d["reference"] = {**ref, "per_template": _per_template([own], ["own"])}
    return d


def test_own_prompt_numbers_by_hand():
    from flexpaft.reporting import build_report

    runs = [
        ("lora", _results("lora", LORA, [1, 1, 1, 1])),
        ("paft", _results("paft", PAFT, [1, 1, 1, 0])),
    ]
    rep = build_report(runs, n_boot=500)
    lora, paft = rep["methods"]
    assert lora["reference_accuracy"] == 1.0 and paft["reference_accuracy"] == 0.75
    assert lora["own_gap_mean"] == pytest.approx(1 - 7 / 12)
    assert lora["own_gap_worst"] == pytest.approx(0.5)
    assert paft["own_gap_mean"] == pytest.approx(0.75 - 11 / 12)
    assert paft["own_gap_worst"] == pytest.approx(0.0)
    own = lora["own_prompt"]
    assert own["accuracy"] == 1.0 and own["interval"] == [1.0, 1.0]  # every example right
    assert own["gap_mean"]["value"] == pytest.approx(5 / 12)
    g = paft["own_prompt"]["gap_worst"]
    assert g["low"] <= g["value"] <= g["high"]
    (cmp,) = rep["own_comparisons"]
    assert (cmp["a"], cmp["b"]) == ("paft", "lora")
    assert cmp["diff"]["value"] == pytest.approx(-0.25)
    assert cmp["diff"]["high"] <= 0  # paft is never above: it misses one example lora gets


def test_own_prompt_gaps_are_paired():
    from flexpaft.reporting import intervals

    # The own template scores exactly like the only unseen one: every replicate's gap is 0.
    # Unpaired (own and unseen resampled apart) the interval would be wide: own's alone is.
    c = np.array([[1, 0, 1, 0, 1, 1, 0, 0]], dtype=float)
    rs = intervals.Resamples.draw(1, 8, 400, seed=1)
    res = intervals.own_prompt(c[0], c, rs)
    for key in ("gap_mean", "gap_worst"):
        assert (res[key]["low"], res[key]["high"]) == (0.0, 0.0) and not res[key]["separated"]
    lo, hi = res["interval"]
    assert hi - lo > 0.3
    same = intervals.compare_own(c[0], c[0], rs)
    assert (same["low"], same["high"], same["separated"]) == (0.0, 0.0, False)


def test_report_shows_the_own_prompt_table_and_omits_it_without_references():
    from flexpaft.reporting import build_report, render_html, render_markdown

    runs = [
        ("lora", _results("lora", LORA, [1, 1, 1, 1])),
        ("paft", _results("paft", PAFT, [1, 1, 1, 0])),
    ]
    md = render_markdown(build_report(runs, n_boot=200))
    assert "## Under the user's own prompt (%)" in md
    assert "| lora | 100.0 [100.0, 100.0] | +41.7 [" in md
    assert "| paft vs lora | -25.0 [" in md
    assert "Under the user's own prompt" in render_html(build_report(runs, n_boot=200))
    # Without intervals: the point values.
    md0 = render_markdown(build_report(runs, n_boot=0))
    assert "| paft | 75.0 | -16.7 | 0.0 |" in md0
    # A run without a reference evaluation lacks the row; none with one: no section at all.
    mixed = [runs[0], ("paft", _results("paft", PAFT))]
    rep = build_report(mixed, n_boot=200)
    assert "own_prompt" not in rep["methods"][1] and rep["own_comparisons"] == []
    assert "| lora | 100.0" in render_markdown(rep)
    none = [("lora", _results("lora", LORA)), ("paft", _results("paft", PAFT))]
    assert "own prompt" not in render_markdown(build_report(none, n_boot=200))


def test_own_prompt_from_a_named_test_template_and_over_seeds():
    from flexpaft.reporting import build_report

    runs = [("lora", _results("lora", LORA)), ("paft", _results("paft", PAFT))]
    rep = build_report(runs, reference_template="t3", n_boot=200)
    assert rep["methods"][0]["own_prompt"]["accuracy"] == 0.75
    assert rep["own_comparisons"][0]["diff"]["value"] == pytest.approx(0.25)
    # Two seeds of paft: own correctness averaged example by example (0.75 and 0.5 -> 0.625).
    seeds = [
        ("lora", _results("lora", LORA, [1, 1, 1, 1])),
        ("paft", _results("paft", PAFT, [1, 1, 1, 0])),
        ("paft", _results("paft", PAFT, [1, 0, 1, 0])),
    ]
    rep = build_report(seeds, n_boot=200, group_seeds=True)
    assert rep["methods"][1]["own_prompt"]["accuracy"] == pytest.approx(0.625)
    assert rep["methods"][1]["reference_accuracy"] == pytest.approx(0.625)


def test_eval_accepts_own_template_as_the_reference(tmp_path):
    from flexpaft.cli import build_parser
    from flexpaft.settings.evaluate import EvalConfig
    from flexpaft.settings.loading import config_from_args

    text = "{goal}\nA: {sol1}\nB: {sol2}\nAnswer:"
    args = build_parser().parse_args(["eval", "--own-template", text])
    cfg = config_from_args(EvalConfig, args, ("adapter", "output_dir", "own_template"))
    assert cfg.reference_template == text
    cfg2 = load_config(EvalConfig, None, ["own_template=default"])
    assert cfg2.reference_template == "default"


def test_demo_and_report_print_the_own_prompt_table(tmp_path, capsys):
    from flexpaft.cli import main
    from flexpaft.reporting import build_report
    from flexpaft.workflows.demo import console_summary

    runs = [
        ("lora", _results("lora", LORA, [1, 1, 1, 1])),
        ("paft", _results("paft", PAFT, [1, 1, 1, 0])),
    ]
    text = console_summary(build_report(runs, n_boot=200))
    assert "Under your own prompt (%):" in text and "| paft vs lora | -25.0 [" in text
    paths = []
    for name, data in runs:
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(data))
        paths.append(f"{name}={tmp_path / name}")
    assert main(["report", *paths, "--bootstrap", "200", "-o", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "Under the user's own prompt (%):" in out and "| lora | 100.0 [100.0, 100.0] |" in out
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["methods"][1]["own_prompt"]["accuracy"] == 0.75


def test_study_trains_and_scores_under_the_own_template(tmp_path):
    from flexpaft.workflows.study import Study, StudyConfig

    own = "{question}? ({passage})\nAnswer:"
    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(24))
    base = [f"output_dir={tmp_path}", f"data.source={data}", "train_examples=8"]
    base.append("test_examples=4")
    study = Study(load_config(StudyConfig, None, [*base, f"own_template={own}"]), progress=False)
    assert f"prompts.template={own}" in study._train_overrides("lora", 0)
    assert study._eval_config("unseen", "paft", 0).reference_template == own
    plain = Study(load_config(StudyConfig, None, base), progress=False)
    assert not any(o.startswith("prompts.template") for o in plain._train_overrides("lora", 0))
    assert plain._eval_config("unseen", "paft", 0).reference_template == "default"


def test_auto_loss_is_the_options_loss_for_paft_on_scored_formats_only():
    from flexpaft.settings.train import OptimSettings
    from flexpaft.tasks import AnswerFormat

    auto = OptimSettings()
    assert auto.loss == "auto"
    assert auto.resolved_loss("paft", AnswerFormat.LABEL_WORDS) == "options"
    assert auto.resolved_loss("flexora+paft", AnswerFormat.LETTER) == "options"
    assert auto.resolved_loss("lora", AnswerFormat.LABEL_WORDS) == "answer"
    assert auto.resolved_loss("paft", AnswerFormat.GENERATION) == "answer"
    assert not auto.scores_options("paft", AnswerFormat.GENERATION)
    assert OptimSettings(loss="options").resolved_loss("lora", AnswerFormat.LETTER) == "options"
    assert OptimSettings(loss="answer").resolved_loss("paft", AnswerFormat.LETTER) == "answer"
    # auto never refuses a generation task; an explicit options loss does.
    load_config(TrainConfig, None, ["method=paft"]).check_format(AnswerFormat.GENERATION)
    with pytest.raises(FlexpaftError, match="optim.loss=options scores the answer options"):
        load_config(TrainConfig, None, ["method=paft", "optim.loss=options"]).check_format(
            AnswerFormat.GENERATION
        )
