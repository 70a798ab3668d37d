"""Study variants (a method under its own settings, one row each) and studies kept across an
upgrade that added settings."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import yaml
from test_study import _study_yaml

from flexpaft.cli import main
from flexpaft.errors import FlexpaftError
from flexpaft.settings.loading import load_config
from flexpaft.workflows.study import Study, StudyConfig, _same_config, _without_added_settings
from flexpaft.workflows.study.stored import finished_run


def _study(tmp_path, *overrides):
    cfg = load_config(StudyConfig, None, [f"output_dir={tmp_path}", "data.task=snips", *overrides])
    return Study(cfg, progress=False)


def test_a_variant_is_its_method_with_its_own_settings_last(tmp_path):
    st = _study(
        tmp_path,
        "methods=[lora, paft]",
        "train={prompts: {own_rate: 0.1}, optim: {lr: 0.001}}",
        "variants={paft_own: {method: paft, train: {prompts.own_rate: 0.25}}}",
    )
    assert st.labels() == ["lora", "paft", "paft_own"]
    cfg = st._train_config("paft_own", 1)
    assert cfg.method == "paft" and cfg.seed == 1
    assert cfg.prompts.own_rate == 0.25  # the variant's, after the study's 0.1
    assert cfg.optim.lr == 0.001  # the study's setting still applies
    assert cfg.output_dir.endswith("train/paft_own-s1")
    assert cfg.prompts.prompt_set.endswith("prompts/train.jsonl")  # paft draws from the set
    assert st._train_config("paft", 1).prompts.own_rate == 0.1
    ev = st._eval_config("unseen", "paft_own", 1)
    assert ev.name == "paft_own" and ev.adapter.endswith("train/paft_own-s1/adapter")


@pytest.mark.parametrize(
    "variants, message",
    [
        ("{paft: {method: paft}}", "variant name 'paft' is taken"),
        ("{random-d0: {method: lora}}", "variant name 'random-d0' is taken"),
        ("{'a b': {method: lora}}", "variant name 'a b': use letters"),
        ("{x: {method: top_half}}", "variant x: method 'top_half' is not one of"),
        ("{x: {method: lora, trian: {}}}", "variant x: unknown key 'trian'"),
        ("{x: {method: lora, train: 3}}", "variant x: train must be a mapping"),
        ("{x: lora}", "variants.x: expected a mapping"),
    ],
)
def test_bad_variants_are_refused_by_name(tmp_path, variants, message):
    with pytest.raises(FlexpaftError, match=message):
        _study(tmp_path, f"variants={variants}")


def test_a_variant_setting_its_method_refuses_is_caught_before_training(
    tmp_path, tiny_model_dir, capsys
):
    # consistency needs several templates: a lora variant with it fails in check(), not after
    # the other rows have trained.
    path = _study_yaml(
        tmp_path,
        tiny_model_dir,
        methods=["lora"],
        variants={"lora_c": {"method": "lora", "train": {"optim": {"consistency": 1.0}}}},
    )
    assert main(["-q", "study", "--config", str(path)]) == 2
    assert "optim.consistency needs several training templates" in capsys.readouterr().err
    assert not (tmp_path / "study" / "train").exists()


def test_a_study_trains_evaluates_and_reports_its_variants(tmp_path, tiny_model_dir):
    path = _study_yaml(
        tmp_path,
        tiny_model_dir,
        methods=["lora", "paft"],
        seeds=[0],
        prompts={"n": 12, "test": 3},
        variants={"paft_own": {"method": "paft", "train": {"prompts": {"own_rate": 0.5}}}},
    )
    assert main(["-q", "study", "--config", str(path)]) == 0
    root = tmp_path / "study"
    manifest = json.loads((root / "train/paft_own-s0/manifest.json").read_text())
    assert manifest["method"] == "paft" and manifest["config"]["prompts"]["own_rate"] == 0.5
    report = json.loads((root / "report/unseen/report.json").read_text())
    assert [m["name"] for m in report["methods"]] == ["lora", "paft", "paft_own"]

    # A second config on the same output_dir reuses the runs it shares and reports apart.
    adapter = root / "train/paft_own-s0/adapter/adapter_model.safetensors"
    stamp = adapter.stat().st_mtime_ns
    other = yaml.safe_load(path.read_text())
    other.update(methods=["lora"], report_dir=str(tmp_path / "own_report"))
    path.write_text(yaml.safe_dump(other))
    assert main(["-q", "study", "--config", str(path)]) == 0
    assert adapter.stat().st_mtime_ns == stamp
    report = json.loads((tmp_path / "own_report/unseen/report.json").read_text())
    assert [m["name"] for m in report["methods"]] == ["lora", "paft_own"]
    first = json.loads((root / "report/unseen/report.json").read_text())
    assert len(first["methods"]) == 3  # the first config's report is untouched


def test_settings_added_since_a_run_keep_it_when_at_their_default():
    defaults = {"a": 1, "new": 0.0, "sub": {"x": 1, "added": "train"}}
    stored = {"a": 2, "sub": {"x": 3}}
    # New keys at their defaults are dropped: the stored run is the same run.
    assert (
        _without_added_settings(
            {"a": 2, "new": 0.0, "sub": {"x": 3, "added": "train"}}, stored, defaults
        )
        == stored
    )
    # A new key set away from its default is a different run.
    changed = _without_added_settings(
        {"a": 2, "new": 0.5, "sub": {"x": 3, "added": "train"}}, stored, defaults
    )
    assert changed != stored and changed["new"] == 0.5
    assert (
        _without_added_settings({"a": 2, "sub": {"x": 3, "added": "all"}}, stored, defaults)
        != stored
    )
    # A changed old key is a different run too.
    assert _without_added_settings({"a": 1, "sub": {"x": 3}}, stored, defaults) != stored


def test_a_study_made_before_new_settings_is_kept(tmp_path, tiny_model_dir, monkeypatch):
    """Runs whose stored configs lack settings added later (at their earlier behaviour) are not
    redone."""
    import flexpaft.workflows.study.stored

    monkeypatch.setattr(
        flexpaft.workflows.study.stored,
        "EVAL_SETTINGS_ADDED",
        {"prompts": {"max_templates": None}},
    )
    path = _study_yaml(tmp_path, tiny_model_dir, methods=["lora", "flexora"], seeds=[0])
    # stage2_examples at the value runs had before the setting existed (the default since is all).
    flexora = {"val_examples": 4, "selection": "topk", "k": 2, "stage2_examples": "train"}
    text = path.read_text().replace(
        "num_workers: 0", "num_workers: 0\n  flexora: " + json.dumps(flexora)
    )
    path.write_text(text)
    assert main(["-q", "study", "--config", str(path)]) == 0
    root = tmp_path / "study"
    # As an older flexpaft wrote them: without settings that came later.
    for run in ("lora-s0", "flexora-s0"):
        mpath = root / "train" / run / "manifest.json"
        m = json.loads(mpath.read_text())
        del m["config"]["optim"]["consistency"], m["config"]["flexora"]["stage2_examples"]
        if run == "flexora-s0":
            from flexpaft.settings.train import config_dict_hash

            st = Study(load_config(StudyConfig, str(path), []), progress=False)
            request = asdict(st._train_config("flexora", 0))
            del request["optim"]["consistency"], request["flexora"]["stage2_examples"]
            m["request_hash"] = config_dict_hash(request)
        mpath.write_text(json.dumps(m))
    res = root / "eval/unseen/lora-s0/results.json"
    r = json.loads(res.read_text())
    del r["config"]["prompts"]["max_templates"]  # eval's prompts section holds it now
    res.write_text(json.dumps(r))
    stamps = {
        p: p.stat().st_mtime_ns
        for p in (res, root / "train/flexora-s0/adapter/adapter_model.safetensors")
    }
    assert main(["-q", "study", "--config", str(path)]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # The same setting away from the value runs had before it existed is a new run.
    st = Study(
        load_config(StudyConfig, str(path), ["train.flexora.stage2_examples=all"]), progress=False
    )
    assert finished_run(st._train_config("lora", 0)) is None

    def with_max(value):
        return {**r["config"], "prompts": {**r["config"]["prompts"], "max_templates": value}}

    assert not _same_config(res, with_max(3), {"prompts": {"max_templates": 0}})
    assert _same_config(res, with_max(None), {"prompts": {"max_templates": None}})
    # A missing setting that is not listed as added is a new run, whatever its value.
    assert not _same_config(res, with_max(None), {})
