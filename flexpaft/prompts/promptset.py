"""A set of prompt templates: load/save (jsonl, yaml, txt, csv, xlsx), deduplicate, split.

The PAFT paper ships its prompt sets as xlsx with a literal two-character ``\\n`` where a newline
was meant; ``load`` turns those into real newlines so training and test see the same text.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flexpaft.errors import FlexpaftError, short_repr
from flexpaft.io import atomic_output, atomic_write_text
from flexpaft.optional import require
from flexpaft.prompts.template import Template
from flexpaft.tasks.spec import AnswerFormat, TaskSpec
from flexpaft.yaml_input import load_yaml

FORMATS = ("jsonl", "yaml", "txt", "csv", "xlsx")
_TEXT_KEYS = ("template", "prompt", "text")


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    ext = path.suffix.lower().lstrip(".")
    ext = {"yml": "yaml", "json": "jsonl"}.get(ext, ext)
    if ext not in FORMATS:
        raise FlexpaftError(f"{path}: unknown prompt-set format {ext!r} (use {', '.join(FORMATS)})")
    return ext


def _fix_newlines(text: str) -> str:
    # The official xlsx stores "\n" as two characters; a real template never means backslash-n.
    return text.replace("\\n", "\n")


def template_id(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


@dataclass
class PromptSet:
    templates: list[Template] = field(default_factory=list)
    name: str = ""

    def __len__(self) -> int:
        return len(self.templates)

    def __iter__(self):
        return iter(self.templates)

    def __getitem__(self, i: int) -> Template:
        return self.templates[i]

    @classmethod
    def from_texts(cls, texts: list[str], name: str = "") -> PromptSet:
        return cls([Template(t, template_id(t)) for t in texts], name)

    @property
    def texts(self) -> list[str]:
        return [t.text for t in self.templates]

    def digest(self) -> str:
        return hashlib.sha256("\x00".join(self.texts).encode()).hexdigest()

    # ---- io ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, fmt: str | None = None) -> PromptSet:
        path = Path(path)
        if path.is_dir():
            raise FlexpaftError(f"prompt set {path} is a directory, not a file")
        if not path.is_file():
            raise FlexpaftError(f"prompt set not found: {path}")
        fmt = _format_of(path, fmt)
        try:
            texts = _READERS[fmt](path)
        except FlexpaftError:
            raise
        except UnicodeDecodeError as e:
            raise FlexpaftError(f"prompt set {path} is not UTF-8 text (byte {e.start})") from None
        except Exception as e:  # a corrupt file of any format: one clear line
            line = (str(e).splitlines() or [type(e).__name__])[0]
            raise FlexpaftError(f"cannot read prompt set {path} as {fmt}: {line}") from None
        for n, t in enumerate(texts, 1):
            if t is not None and not isinstance(t, str):
                raise FlexpaftError(
                    f"{path}: entry {n} is not a template ({short_repr(t, 40)}; expected text, or an object "
                    f"with a {' / '.join(_TEXT_KEYS)} key)"
                )
        texts = [_fix_newlines(t) for t in texts if isinstance(t, str) and t.strip()]
        if not texts:
            # An empty or wrong-shaped file is a mistake; zero templates would "pass" silently.
            raise FlexpaftError(f"prompt set {path} holds no templates")
        return cls.from_texts(texts, name=path.stem)

    def save(self, path: str | Path, fmt: str | None = None) -> Path:
        path = Path(path)
        fmt = _format_of(path, fmt)
        if fmt == "xlsx":
            return _write_xlsx(path, self.texts)
        return atomic_write_text(path, _WRITERS[fmt](self.texts))

    # ---- set operations ------------------------------------------------------------------
    def deduplicate(self) -> PromptSet:
        """Drop exact repeats (after trimming whitespace), keeping first occurrences."""
        seen, kept = set(), []
        for t in self.templates:
            key = t.text.strip()
            if key and key not in seen:
                seen.add(key)
                kept.append(t)
        return PromptSet(kept, self.name)

    def validated(
        self, task: TaskSpec, fmt: AnswerFormat
    ) -> tuple[PromptSet, list[tuple[Template, list[str]]]]:
        """(usable templates, [(rejected template, reasons)]) for ``task`` in ``fmt``."""
        good, bad = [], []
        for t in self.templates:
            problems = t.problems(task, fmt)
            (bad.append((t, problems)) if problems else good.append(t))
        return PromptSet(good, self.name), bad

    def split(
        self, test_fraction: float = 1 / 9, seed: int = 0, min_test: int = 1
    ) -> tuple[PromptSet, PromptSet]:
        """Template-level random split into (train, test); the paper uses about 8:1."""
        if not 0 < test_fraction < 1:
            raise FlexpaftError(f"test fraction must be in (0, 1), got {test_fraction}")
        n = len(self.templates)
        n_test = max(min_test, round(n * test_fraction))
        if n_test < 1:
            # An empty test set would "pass" every evaluation on unseen templates.
            raise FlexpaftError(
                f"a test fraction of {test_fraction:g} of {n} templates with min_test={min_test} "
                "gives an empty test set: raise the fraction or set min_test to 1 or more"
            )
        if n < 2 or n_test >= n:
            raise FlexpaftError(
                f"prompt set of {n} templates is too small to split into train and a test set "
                f"of {n_test}"
            )
        order = list(range(n))
        random.Random(seed).shuffle(order)
        test_idx = set(order[:n_test])
        train = [t for i, t in enumerate(self.templates) if i not in test_idx]
        test = [t for i, t in enumerate(self.templates) if i in test_idx]
        return PromptSet(train, f"{self.name}.train"), PromptSet(test, f"{self.name}.test")


# ---- readers and writers -------------------------------------------------------------------
def _text_of(row: object) -> object:
    """The template text of one entry; anything else is returned as is, for the error."""
    if isinstance(row, dict):
        for k in _TEXT_KEYS:
            if isinstance(row.get(k), str):
                return row[k]
    return row


def _read_jsonl(path: Path) -> list[str]:
    raw = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and raw.lstrip().startswith("["):
        try:
            return [_text_of(r) for r in json.loads(raw)]
        except json.JSONDecodeError as e:
            raise FlexpaftError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    out = []
    for n, line in enumerate(raw.splitlines(), 1):
        if line.strip():
            try:
                out.append(_text_of(json.loads(line)))
            except json.JSONDecodeError as e:
                raise FlexpaftError(f"{path}:{n}: invalid JSON ({e.msg})") from None
    return out


def _read_yaml(path: Path) -> list[str]:
    data = load_yaml(path.read_text(encoding="utf-8"), path)
    if isinstance(data, dict):
        if "templates" not in data:
            raise FlexpaftError(f"{path}: expected a list of templates (or a 'templates:' list)")
        data = data["templates"]
    if not isinstance(data, list):
        raise FlexpaftError(f"{path}: expected a list of templates (or a 'templates:' list)")
    return [_text_of(r) for r in data]


def _read_txt(path: Path) -> list[str]:
    # One template per block; blocks are separated by a line holding only "---", so templates
    # may span lines. A file without separators holds one template per line.
    raw = path.read_text(encoding="utf-8")
    lines = raw.splitlines()
    if any(line.strip() == "---" for line in lines):
        blocks, cur = [], []
        for line in lines:
            if line.strip() == "---":
                blocks.append("\n".join(cur))
                cur = []
            else:
                cur.append(line)
        blocks.append("\n".join(cur))
        return [b.strip("\n") for b in blocks]
    return lines


def _header_column(first: list[object], rows: list[list[object]]) -> tuple[int | None, bool]:
    """(template column, whether the first row is a header). A header names the column
    (template, prompt or text); a first row of plain words above rows holding ``{slots}`` is a
    header too ("Prompts", "Templates"), not a template."""
    header = [str(h).strip().lower() if h is not None else "" for h in first]
    col = next((header.index(k) for k in _TEXT_KEYS if k in header), None)
    if col is not None:
        return col, True
    cell = first[0] if first else None
    looks_like_header = (
        isinstance(cell, str)
        and "{" not in cell
        and any(r and isinstance(r[0], str) and "{" in r[0] for r in rows[1:])
    )
    return None, looks_like_header


def _read_csv(path: Path) -> list[str]:
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    if not rows:
        return []
    col, has_header = _header_column(rows[0], rows)
    if col is not None:
        return [r[col] for r in rows[1:] if len(r) > col]
    body = rows[1:] if has_header else rows
    for n, r in enumerate(body, 2 if has_header else 1):
        if len(r) > 1:
            # Without a header naming the column, a template with an unquoted comma reads as
            # several cells; keeping the first would cut it there silently.
            raise FlexpaftError(
                f"{path}: row {n} has {len(r)} comma-separated cells and there is no "
                "'template' header: add a first line 'template' and quote templates that hold "
                "commas, or use the txt or jsonl format"
            )
    return [r[0] for r in body if r]


def _read_xlsx(path: Path) -> list[str]:
    openpyxl = require("openpyxl", "reading .xlsx prompt sets")

    # Not data_only: a cell holding "=..." is then its text, not the formula's cached value,
    # which a file written by openpyxl does not have (the cell read as empty and was dropped).
    wb = openpyxl.load_workbook(path, read_only=True, data_only=False)
    ws = wb.worksheets[0]
    rows = [list(r) for r in ws.iter_rows(values_only=True)]
    wb.close()
    if not rows:
        return []
    col, has_header = _header_column(rows[0], rows)
    body = rows[1:] if has_header else rows
    col = col or 0
    return [r[col] for r in body if len(r) > col and isinstance(r[col], str)]


def _write_jsonl(texts: list[str]) -> str:
    return "".join(json.dumps({"template": t}, ensure_ascii=False) + "\n" for t in texts)


def _write_yaml(texts: list[str]) -> str:
    return yaml.safe_dump({"templates": texts}, allow_unicode=True, sort_keys=False, width=1000)


def _write_txt(texts: list[str]) -> str:
    return "\n---\n".join(texts) + "\n"


def _write_csv(texts: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["template"])
    for t in texts:
        w.writerow([t])
    return buf.getvalue()


def _write_xlsx(path: Path, texts: list[str]) -> Path:
    openpyxl = require("openpyxl", "writing .xlsx prompt sets")

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["template"])
    for t in texts:
        ws.append([t])
        # openpyxl stores a string starting with "=" as a formula, which Excel evaluates and a
        # reader without cached values drops: keep every template a string.
        ws.cell(row=ws.max_row, column=1).data_type = "s"
    with atomic_output(path) as tmp:
        wb.save(tmp)
    return path


_READERS = {
    "jsonl": _read_jsonl,
    "yaml": _read_yaml,
    "txt": _read_txt,
    "csv": _read_csv,
    "xlsx": _read_xlsx,
}
_WRITERS = {"jsonl": _write_jsonl, "yaml": _write_yaml, "txt": _write_txt, "csv": _write_csv}
