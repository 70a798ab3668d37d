"""benchmarks/prompt_length.py: accuracy against prompt length, on fabricated results.json files."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from conftest import boolq_rows, write_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import prompt_length  # noqa: E402

LENGTHS = {"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0}


def test_analysis_by_hand():
    accs = {
        "x": {"a": 0.60, "b": 0.70, "c": 0.80, "d": 0.90},  # mean .75; within 1 pt: c, d
        "y": {"a": 0.80, "b": 0.79, "c": 0.60, "d": 0.61},  # mean .70; within 1 pt: a, b
        "z": {"a": 0.74, "b": 0.76, "c": 0.75, "d": 0.75},  # mean .75; a is exactly 1 pt below
    }
    res = prompt_length.analyze(LENGTHS, accs, default_length=40.0)
    x, y, z = (res["models"][k] for k in "xyz")
    assert x["mean"] == pytest.approx(0.75) and x["shortest_within"]["template"] == "c"
    assert x["correlation_with_length"] == pytest.approx(1.0)
    assert x["shortest_within"]["speedup_vs_default"] == pytest.approx(40 / 30)
    assert x["shortest_within"]["tokens_saved_per_example"] == pytest.approx(10.0)
    assert y["shortest_within"]["template"] == "a"
    # dx = -15, -5, 5, 15; dy = .1, .09, -.1, -.09: sxy = -3.8, sxx = 500, syy = .0362.
    assert y["correlation_with_length"] == pytest.approx(-3.8 / math.sqrt(500 * 0.0362))
    assert y["shortest_within"]["speedup_vs_default"] == pytest.approx(4.0)
    assert z["shortest_within"]["template"] == "a"
    assert [t["id"] for t in res["templates"]] == ["a", "b", "c", "d"]
    # Accuracy that does not vary has no correlation, not a division by zero.
    flat = prompt_length.analyze(LENGTHS, {"f": dict.fromkeys(LENGTHS, 0.5)}, None)
    assert flat["models"]["f"]["correlation_with_length"] is None
    assert "speedup_vs_default" not in flat["models"]["f"]["shortest_within"]
    md = prompt_length.render_markdown(res)
    assert "| x | 75.0 | +1.00 | c | 30.0 | 80.0 | 10.0 | 1.33x |" in md
    assert "proxy, not a timing" in md


TEXTS = {
    "short": "{question}?",
    "mid": "Q: {question}?\nA:",
    "long": "{passage}\nQuestion: {question}?\nAnswer yes or no, after reading carefully:",
}


def _results(tmp_path: Path, model_dir: Path, name: str, accs: dict[str, float]) -> Path:
    from flexpaft.io import sha256_json
    from flexpaft.settings.common import DataSettings

    data = write_jsonl(tmp_path / "b.jsonl", boolq_rows(6))
    settings = {"task": "boolq", "source": str(data)}
    _, _, examples = DataSettings(**settings).load()
    per = [
        {"id": tid, "text": text, "accuracy": accs[tid], "n": 6, "correct": [1] * 6}
        | {"predictions": [0] * 6}
        for tid, text in TEXTS.items()
    ]
    out = tmp_path / name
    out.mkdir()
    body = {
        "name": name,
        "config": {"data": settings, "model": {"name": str(model_dir), "chat_template": "none"}},
        "data_digest": sha256_json([[e.fields, e.options, e.gold] for e in examples]),
        "task": "boolq",
        "format": "label_words",
        "mode": "first_token",
        "per_template": per,
        "seconds": 1.0,
    }
    (out / "results.json").write_text(json.dumps(body))
    return out


def test_script_end_to_end_on_fabricated_results(tmp_path, tiny_model_dir):
    from flexpaft.models import load_tokenizer
    from flexpaft.prompts import Template
    from flexpaft.render import encode_prompt, render
    from flexpaft.settings.common import DataSettings

    lora = _results(tmp_path, tiny_model_dir, "lora", {"short": 0.5, "mid": 0.6, "long": 0.9})
    paft = _results(tmp_path, tiny_model_dir, "paft", {"short": 0.82, "mid": 0.80, "long": 0.81})
    out = tmp_path / "pl"
    code = prompt_length.main([f"lora={lora}", f"paft={paft}", "--out", str(out)])
    assert code == 0
    res = json.loads(out.with_suffix(".json").read_text())
    # Lengths as the evaluator renders and tokenizes them, averaged over the 6 examples.
    tok = load_tokenizer(str(tiny_model_dir))
    task, fmt, examples = DataSettings(task="boolq", source=str(tmp_path / "b.jsonl")).load()

    def mean_len(text: str) -> float:
        t = Template(text, "x")
        return sum(len(encode_prompt(tok, render(task, t, e, fmt).prompt)) for e in examples) / 6

    by_id = {t["id"]: t for t in res["templates"]}
    for tid, text in TEXTS.items():
        assert by_id[tid]["length"] == pytest.approx(mean_len(text))
    assert [t["id"] for t in res["templates"]] == ["short", "mid", "long"]
    assert res["default_length"] == pytest.approx(mean_len(task.templates["label_words"]))
    # paft: mean .81, every template within 1 point -> the shortest; lora: only "long".
    assert res["models"]["paft"]["shortest_within"]["template"] == "short"
    assert res["models"]["lora"]["shortest_within"]["template"] == "long"
    speed = res["models"]["paft"]["shortest_within"]["speedup_vs_default"]
    assert speed == pytest.approx(res["default_length"] / mean_len(TEXTS["short"]))
    assert "| paft |" in out.with_suffix(".md").read_text()


def test_script_refuses_runs_on_other_templates(tmp_path, tiny_model_dir, capsys):
    lora = _results(tmp_path, tiny_model_dir, "lora", {"short": 0.5, "mid": 0.6, "long": 0.9})
    other = tmp_path / "other"
    other.mkdir()
    body = json.loads((lora / "results.json").read_text())
    body["per_template"] = body["per_template"][:2]
    (other / "results.json").write_text(json.dumps(body))
    assert prompt_length.main([f"lora={lora}", f"x={other}", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "flexpaft: error: x was evaluated on other templates than lora"


def test_add_timing_by_hand():
    result = {
        "models": {
            "lora": {"shortest_within": {"template": "long"}},
            "paft": {"shortest_within": {"template": "short"}},
        }
    }
    timing = {
        "default": {"seconds": 4.0, "examples_per_s": 50.0},
        "short": {"seconds": 2.5, "examples_per_s": 80.0},
        "long": {"seconds": 5.0, "examples_per_s": 40.0},
    }
    prompt_length.add_timing(result, timing, "paft")
    assert result["models"]["paft"]["shortest_within"]["measured_speedup_vs_default"] == 1.6
    assert result["models"]["lora"]["shortest_within"]["measured_speedup_vs_default"] == 0.8
    assert result["timing"]["run"] == "paft"


def test_script_times_the_short_templates_with_the_last_runs_model(tmp_path, tiny_model_dir):
    lora = _results(tmp_path, tiny_model_dir, "lora", {"short": 0.5, "mid": 0.6, "long": 0.9})
    paft = _results(tmp_path, tiny_model_dir, "paft", {"short": 0.82, "mid": 0.80, "long": 0.81})
    out = tmp_path / "pl"
    code = prompt_length.main([f"lora={lora}", f"paft={paft}", "--out", str(out), "--time", "1"])
    assert code == 0
    res = json.loads(out.with_suffix(".json").read_text())
    timed = res["timing"]["templates"]
    # The default prompt and each model's shortest template within 1 point: short and long.
    assert set(timed) == {"default", "short", "long"} and res["timing"]["run"] == "paft"
    for t in timed.values():
        assert t["seconds"] > 0 and t["examples_per_s"] == pytest.approx(6 / t["seconds"])
    s = res["models"]["paft"]["shortest_within"]
    assert s["measured_speedup_vs_default"] == pytest.approx(
        timed["default"]["seconds"] / timed["short"]["seconds"]
    )
    assert "Measured with paft's model" in out.with_suffix(".md").read_text()
