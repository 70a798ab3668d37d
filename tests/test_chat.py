"""Chat templates: one rendering for training, evaluation and generation; recorded and checked."""

import json
import shutil

import pytest
from conftest import boolq_rows, build_tokenizer, write_jsonl

from flexpaft.chat import chat_record, resolve_chat
from flexpaft.cli import main
from flexpaft.errors import FlexpaftError
from flexpaft.prompts import Template
from flexpaft.render import encode_for_training, render
from flexpaft.tasks import get_task
from flexpaft.tasks.spec import AnswerFormat, Example

CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _example():
    return Example(
        fields={"question": "is it red", "passage": "It is red."}, options=["yes", "no"], gold=0
    )


def test_render_wraps_the_prompt_as_the_user_turn_and_the_answer_as_the_assistant_turn(tmp_path):
    tok = build_tokenizer()
    task = get_task("boolq")
    tpl = Template("{passage}\nQuestion: {question}?\nAnswer:", "t")
    plain = render(task, tpl, _example(), AnswerFormat.LABEL_WORDS)
    assert plain.answers == [" yes", " no"]
    assert resolve_chat("auto", tok) is None  # the tiny tokenizer has no chat template
    assert resolve_chat("none", tok) is None
    (tmp_path / "chat.jinja").write_text(CHAT)
    chat = resolve_chat(str(tmp_path / "chat.jinja"), tok)
    wrapped = render(task, tpl, _example(), AnswerFormat.LABEL_WORDS, chat)
    assert wrapped.prompt == (
        "<|user|>\nIt is red.\nQuestion: is it red?\nAnswer:\n<|assistant|>\n"
    )
    assert wrapped.answers == ["yes", "no"] and wrapped.gold == 0
    # Training learns exactly the scored text: prompt tokens masked, answer + EOS learned.
    enc = encode_for_training(tok, wrapped, 512)
    answer = [i for i, lab in zip(enc.input_ids, enc.labels) if lab != -100]
    assert tok.decode(answer) == "yes<eos>"
    assert tok.decode(enc.input_ids).startswith("<|user|>\nIt is red.")
    tok.chat_template = CHAT
    assert resolve_chat("auto", tok).wrap("Q") == "<|user|>\nQ\n<|assistant|>\n"
    assert chat_record("auto", resolve_chat("auto", tok))["applied"] is True


def test_a_template_that_writes_bos_does_not_double_it():
    tok = build_tokenizer()
    tok.bos_token = "<eos>"  # a tokenizer whose template starts with a BOS it also adds itself
    tok.chat_template = "{{ bos_token }}" + CHAT
    chat = resolve_chat("auto", tok)
    assert chat.wrap("Q").startswith("<eos>")  # this tokenizer adds no BOS: kept as text

    class AddsBos:
        bos_token, bos_token_id, chat_template = "<eos>", tok.eos_token_id, tok.chat_template

        def __call__(self, text, add_special_tokens=True):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            return {"input_ids": ([self.bos_token_id] if add_special_tokens else []) + ids}

        def apply_chat_template(self, *a, **kw):
            return tok.apply_chat_template(*a, **kw)

    assert resolve_chat("auto", AddsBos()).wrap("Q") == "<|user|>\nQ\n<|assistant|>\n"


def test_missing_chat_template_file_is_a_clear_error():
    with pytest.raises(FlexpaftError, match="auto, none or a template file"):
        resolve_chat("nope.jinja", build_tokenizer())


def _sets(*pairs):
    return sum((["--set", s] for s in pairs), [])


def test_cli_records_the_chat_template_and_eval_warns_on_a_mismatch(
    tmp_path, tiny_model_dir, capsys, caplog
):
    model = tmp_path / "chat-model"
    shutil.copytree(tiny_model_dir, model)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg["chat_template"] = CHAT
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    data = write_jsonl(tmp_path / "boolq.jsonl", boolq_rows(24))
    common = [f"model.name={model}", f"data.source={data}", "chat_template=auto"]
    code = main(
        ["-q", "train", "-o", str(tmp_path / "run")]
        + _sets(*common, "data.limit=16", "optim.max_steps=1", "optim.batch_size=4")
    )
    err = capsys.readouterr().err
    assert code == 0, err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config"]["model"]["chat_template"] == "auto"
    assert manifest["chat_template"]["applied"] is True
    info = json.loads((tmp_path / "run" / "adapter" / "flexpaft_adapter.json").read_text())
    assert info["chat_template"] == manifest["chat_template"]

    adapter = str(tmp_path / "run" / "adapter")
    evaluate = ["-q", "eval", "--adapter", adapter] + _sets(*common, "data.skip=16")
    assert main(evaluate + ["-o", str(tmp_path / "ev1")]) == 0
    assert "trained with chat_template" not in caplog.text
    code = main(evaluate + ["-o", str(tmp_path / "ev2"), "--set", "model.chat_template=none"])
    err = caplog.text
    assert code == 0
    assert "trained with chat_template=auto (applied)" in err
    assert "evaluated with chat_template=none (raw prompts)" in err
    results = json.loads((tmp_path / "ev2" / "results.json").read_text())
    assert results["chat_template"] == {"setting": "none", "applied": False, "digest": ""}

    code = main(evaluate + ["-o", str(tmp_path / "ev3"), "--set", "model.chat_template=x.jinja"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "chat_template" in err
