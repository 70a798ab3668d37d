"""The Python API: the same flow as the command line, from config objects, with result objects;
one YAML file that serves train and eval; eval finding the adapter's own base model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import boolq_rows, build_model, build_tokenizer, write_jsonl

import flexpaft
from flexpaft.cli import main
from flexpaft.errors import FlexpaftError

TEMPLATES = [
    "{passage}\nQuestion: {question}?\nAnswer:",
    "Passage: {passage}\nQ: {question}?\nA:",
    "Read: {passage}\nIs it true: {question}?\nReply yes or no:",
    "{question}? Context: {passage}\nAnswer:",
]


@pytest.fixture
def files(tmp_path):
    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(24))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"template": t} for t in TEMPLATES])
    return data, prompts


def test_import_is_torch_free_and_lists_the_api():
    code = (
        "import sys, flexpaft; names = sorted(flexpaft.__all__); "
        "print(names); print([m for m in ('torch', 'transformers', 'peft') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names, heavy = out.stdout.splitlines()
    for name in ("train", "evaluate", "search", "search_layers", "report", "study"):
        assert f"'{name}'" in names
    assert heavy == "[]"
    assert callable(flexpaft.train) and callable(flexpaft.evaluate) and callable(flexpaft.report)


def test_train_evaluate_report_from_python(tmp_path, tiny_model_dir, files):
    data, prompts = files
    cfg = flexpaft.TrainConfig.from_yaml(
        None,
        f"prompts.prompt_set={prompts}",  # a --set string
        method="paft",
        output_dir=str(tmp_path / "paft"),
        model={"name": str(tiny_model_dir)},
        data__source=str(data),  # a nested key as a keyword argument
        data__limit=16,
        optim={"max_steps": 2, "batch_size": 4, "num_workers": 0},
    )
    run = flexpaft.train(cfg, progress=False)
    assert run.adapter_dir == tmp_path / "paft" / "adapter"
    assert run.manifest["method"] == "paft" and run.metrics["steps"] == 2
    assert run.metrics["final_loss"] is not None and run.layers == [0, 1, 2, 3]

    ev = flexpaft.evaluate(
        flexpaft.EvalConfig.from_yaml(
            None,
            adapter=str(run.adapter_dir),
            output_dir=str(tmp_path / "ev"),
            data={"source": str(data), "skip": 16},
            prompts={"prompt_set": str(prompts)},
        ),
        progress=False,
    )
    assert len(ev.result.per_template) == 4 and 0 <= ev.worst <= ev.mean <= 1
    # The own prompt (the task's template) is scored by default, and the versions recorded.
    assert ev.own is not None and len(ev.own.per_template) == 1
    stored = json.loads(ev.results_file.read_text())
    assert stored["versions"]["flexpaft"] == flexpaft.__version__
    assert stored["base_model"] == str(
        tiny_model_dir
    )  # the adapter's own, found without model.name

    rep = flexpaft.report({"paft": ev.output_dir}, tmp_path / "report", bootstrap=0)
    assert rep.markdown.is_file() and rep.method("paft")["mean"] == pytest.approx(ev.mean)


def test_one_yaml_serves_train_and_eval(tmp_path, tiny_model_dir, files, capsys):
    data, prompts = files
    shared = tmp_path / "run.yaml"
    shared.write_text(
        "\n".join(
            [
                "method: paft",
                f"output_dir: {tmp_path / 'run'}",
                f"model: {{name: {tiny_model_dir}}}",
                f"data: {{task: boolq, source: {data}, limit: 16}}",
                f"prompts: {{prompt_set: {prompts}, own_rate: 0.5}}",
                "optim: {max_steps: 2, batch_size: 4, num_workers: 0}",
                "lora: {r: 4}",
            ]
        )
    )
    assert main(["-q", "train", "-c", str(shared)]) == 0
    # The same file for eval: its model, data and prompts are read, the training keys are left
    # to train; eval's own keys come from --set (a key no command knows still fails).
    code = main(
        ["-q", "eval", "-c", str(shared), "--adapter", str(tmp_path / "run" / "adapter")]
        + ["-o", str(tmp_path / "ev"), "--set", "data.skip=16", "--set", "data.limit=8"]
    )
    assert code == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res["config"]["prompts"]["prompt_set"] == str(prompts)
    assert len(res["per_template"]) == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text(shared.read_text() + "\nnot_a_key: 1\n")
    assert main(["-q", "eval", "-c", str(bad), "--adapter", str(tmp_path / "run" / "adapter")]) == 2
    assert "unknown config key not_a_key" in capsys.readouterr().err


def test_old_eval_keys_still_work_with_a_warning(caplog):
    cfg = flexpaft.EvalConfig.from_yaml(
        None, "prompt_set=p.jsonl", "reference_template=default", "max_templates=3"
    )
    assert cfg.prompts.prompt_set == "p.jsonl" and cfg.prompts.template == ""
    assert cfg.prompts.max_templates == 3 and cfg.max_templates == 3  # old read access too
    from flexpaft.settings.evaluate import upgrade_stored

    old = {"adapter": "", "prompt_set": "p", "reference_template": "", "max_templates": None}
    assert upgrade_stored({**old, "adversarial_set": ""})["prompts"]["own"] is False


def test_eval_refuses_another_base_before_loading_it(tmp_path, tiny_model_dir, files, monkeypatch):
    data, _ = files
    cfg = flexpaft.TrainConfig.from_yaml(
        None,
        output_dir=str(tmp_path / "lora"),
        model__name=str(tiny_model_dir),
        data__source=str(data),
        data__limit=8,
        optim={"max_steps": 1, "batch_size": 4, "num_workers": 0},
    )
    adapter = flexpaft.train(cfg, progress=False).adapter_dir
    other = tmp_path / "other"
    tok = build_tokenizer()
    build_model(len(tok), layers=2).save_pretrained(other, safe_serialization=True)
    tok.save_pretrained(other)

    import flexpaft.settings.common as common

    def no_load(*a, **k):
        raise AssertionError("the base model was loaded before the check")

    monkeypatch.setattr(common.ModelSettings, "load", no_load)
    with pytest.raises(FlexpaftError, match="leave model.name empty"):
        flexpaft.evaluate(
            flexpaft.EvalConfig.from_yaml(
                None,
                adapter=str(adapter),
                output_dir=str(tmp_path / "ev"),
                model__name=str(other),
                data={"source": str(data), "skip": 16},
            ),
            progress=False,
        )


def test_report_explains_only_the_columns_it_shows_and_says_what_made_it(tmp_path):
    from flexpaft.reporting.render import render_markdown
    from flexpaft.reporting.robustness import build_report

    def run(name: str, accs: list[list[int]], own: bool) -> dict:
        per = [
            {
                "id": f"t{i}",
                "text": f"T{i} {{passage}}",
                "accuracy": sum(c) / len(c),
                "n": len(c),
                "correct": c,
                "predictions": [0] * len(c),
            }  # fmt: skip
            for i, c in enumerate(accs)
        ]
        data = {"name": name, "task": "boolq", "format": "label_words", "mode": "first_token",
                "per_template": per, "seconds": 1.0, "gold": [0, 1, 0, 1]}  # fmt: skip
        if own:
            data["reference"] = {**data, "per_template": per[:1]}
        return data

    plain = build_report([("a", run("a", [[1, 0, 1, 1], [0, 0, 1, 1]], own=False))], n_boot=0)
    md = render_markdown(plain)
    assert "**Mean / Std**" in md and "**PDR**" not in md and "**Adv**" not in md
    with_own = build_report([("a", run("a", [[1, 0, 1, 1], [0, 0, 1, 1]], own=True))], n_boot=0)
    assert "**PDR**" in render_markdown(with_own)
    with_own["versions"] = [{"flexpaft": "0.1.0", "torch": "2.13.0"}]
    assert "Evaluated with flexpaft 0.1.0, torch 2.13.0." in render_markdown(with_own)
