import pytest

from flexpaft.errors import FlexpaftError
from flexpaft.settings.loading import load_config
from flexpaft.settings.schema import describe
from flexpaft.settings.train import TrainConfig


def test_defaults_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "method: paft\noptim:\n  lr: 2.0e-4\n  batch_size: 4\nlora:\n  target_modules: [q_proj]\n"
    )
    cfg = load_config(
        TrainConfig, f, ["optim.lr=3e-4", "lora.layers_to_transform=[1, 3]", "seed=7"]
    )
    assert cfg.method == "paft"
    assert cfg.optim.lr == pytest.approx(3e-4)  # --set wins over the file
    assert cfg.optim.batch_size == 4  # the file wins over the default
    assert cfg.optim.grad_accum == 1  # default kept
    assert cfg.lora.target_modules == ["q_proj"]
    assert cfg.lora.layers_to_transform == [1, 3]
    assert cfg.seed == 7


def test_comma_list_override():
    cfg = load_config(TrainConfig, None, ["lora.target_modules=q_proj,k_proj,v_proj"])
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["nope=1"], "unknown config key nope"),
        (["optim.nope=1"], "unknown config key optim.nope"),
        (["optim.lr=fast"], "optim.lr: expected a number"),
        (["optim.batch_size=2.5"], "optim.batch_size: expected an integer"),
        (["method=magic"], "unknown method 'magic'"),
        (["optim.batch_size=0"], "batch_size"),
        (["lr"], "--set expects key=value"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(FlexpaftError, match=message):
        load_config(TrainConfig, None, overrides)


def test_malformed_yaml_gives_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  lr: [1e-4\n")
    with pytest.raises(FlexpaftError, match=r"malformed YAML in .*bad.yaml at line \d+"):
        load_config(TrainConfig, f)


def test_missing_config_file(tmp_path):
    with pytest.raises(FlexpaftError, match="config file not found"):
        load_config(TrainConfig, tmp_path / "none.yaml")


def test_describe_lists_every_leaf_with_help():
    lines = "\n".join(describe(TrainConfig))
    for key in (
        "optim.lr",
        "lora.r",
        "prompts.k_steps",
        "flexora.alpha_lr",
        "model.trust_remote_code",
    ):
        assert key in lines
    assert "Peak learning rate" in lines


def test_shipped_example_configs_load():
    from pathlib import Path

    from flexpaft.evaluation.run import EvalConfig
    from flexpaft.workflows.study import StudyConfig

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        if path.name.startswith("study"):
            load_config(StudyConfig, path)
        else:
            load_config(EvalConfig if path.name.startswith("eval") else TrainConfig, path)
