"""``flexpaft eval`` reports its throughput (pairs/s; peak memory on CUDA) in its output and in
results.json; resumed templates do not count as scored."""

import json

from conftest import boolq_rows, write_jsonl

from flexpaft.cli import main

TEMPLATES = ["{passage}\nQuestion: {question}?\nAnswer:", "Q: {question}? ({passage})\nA:"]


def test_eval_reports_pairs_per_second(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(10))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"template": t} for t in TEMPLATES])
    argv = ["-q", "eval", "-o", str(tmp_path / "ev")]
    for s in [f"model.name={tiny_model_dir}", f"data.source={data}", f"prompt_set={prompts}"]:
        argv += ["--set", s]
    assert main(argv) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["pairs_scored"] == 2 * 10
    assert res["pairs_per_s"] > 0
    # pairs/s is pairs over scoring time, which is part of the whole call's time.
    # Both numbers are stored rounded (seconds to 0.01 s, pairs/s to 0.001), so allow for that
    # rounding: a scoring time equal to the whole call's once gave 19.998 against 20 / 1.0.
    assert res["pairs_per_s"] >= res["pairs_scored"] / (res["seconds"] + 0.005) - 0.001
    assert res["peak_gpu_mib"] is None  # CPU: no GPU figure rather than a made-up one
    assert f"20 (template x example) pairs, {res['pairs_per_s']:.3f} pairs/s" in out
    assert "pairs/s" in (tmp_path / "ev" / "results.md").read_text()


def test_fully_resumed_evaluation_reports_no_rate(tiny):
    from flexpaft.evaluation.evaluator import evaluate_templates, throughput_line
    from flexpaft.prompts import Template
    from flexpaft.tasks import AnswerFormat, get_task

    model, tok = tiny
    task = get_task("boolq")
    exs = [task.normalize(r) for r in boolq_rows(4)]
    tpls = [Template(t) for t in TEMPLATES]
    first = evaluate_templates(
        model, tok, task, AnswerFormat.LABEL_WORDS, tpls, exs, progress=False
    )
    assert first.pairs_scored == 8 and first.pairs_per_s > 0
    done = {t.id: t for t in first.per_template}
    again = evaluate_templates(
        model, tok, task, AnswerFormat.LABEL_WORDS, tpls, exs, progress=False, done=done
    )
    assert again.pairs_scored == 0 and again.pairs_per_s is None
    assert "no pairs scored" in throughput_line(again)
