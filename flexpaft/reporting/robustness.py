"""Robustness numbers for several eval runs side by side over the same unseen templates.

Every metric comes from ``flexpaft.evaluation.metrics`` so a report and ``flexpaft eval`` can never
disagree on a definition; this module only loads runs, checks they are comparable, and collects.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flexpaft.errors import FlexpaftError
from flexpaft.evaluation import metrics
from flexpaft.evaluation.results import EvalResult, check_template_result
from flexpaft.reporting import intervals

DEFAULT_THRESHOLDS = (0.8, 0.85, 0.9)


def resolve_results_path(path: str | Path) -> Path:
    """An eval output directory (holding results.json) or a results.json file."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise FlexpaftError(f"no eval results at {path} (expected a results.json or its directory)")
    return p


def parse_run_arg(arg: str) -> tuple[str | None, str]:
    """``NAME=PATH`` or ``PATH``; a path that itself contains '=' still works if it exists."""
    if "=" in arg and not Path(arg).exists():
        name, _, path = arg.partition("=")
        if not name or not path:
            raise FlexpaftError(f"bad run argument {arg!r} (use PATH or NAME=PATH)")
        return name, path
    return None, arg


def load_run(arg: str) -> tuple[str, dict[str, Any], str]:
    """(label, results dict, source path) for one RUN argument of ``flexpaft report``."""
    name, path = parse_run_arg(arg)
    file = resolve_results_path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FlexpaftError(f"cannot read {file}: {e}") from None
    if not isinstance(data, dict):
        raise FlexpaftError(f"{file} is not a flexpaft eval results file (not a JSON object)")
    return name or str(data.get("name") or file.parent.name), data, str(file)


def _eval_result(data: dict[str, Any], where: str) -> EvalResult:
    keys = ("task", "format", "mode", "per_template", "seconds")
    missing = [k for k in keys if k not in data]
    if missing:
        raise FlexpaftError(f"{where} is not a flexpaft eval result (missing {', '.join(missing)})")
    if not isinstance(data["per_template"], list):
        raise FlexpaftError(f"{where} is damaged: per_template is not a list")
    for i, entry in enumerate(data["per_template"], 1):
        if problem := check_template_result(entry):
            raise FlexpaftError(f"{where} is damaged: template {i}: {problem}")
    fields = {k: data[k] for k in (*keys, "summary") if k in data}
    try:
        res = EvalResult.from_dict(fields)
    except TypeError as e:
        raise FlexpaftError(f"{where} has a malformed per_template entry: {e}") from None
    if not res.per_template:
        raise FlexpaftError(f"{where} has no templates")
    lengths = {len(t.correct) for t in res.per_template}
    if len(lengths) != 1:
        # Every template is scored on the same examples; anything else is a corrupted file.
        raise FlexpaftError(f"{where}: templates were scored on different numbers of examples")
    return res


def _num(x: float | None) -> float | None:
    """JSON has no NaN: undefined numbers (e.g. PDR against a 0% reference) become null."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _check_comparable(
    names: Sequence[str], results: Sequence[EvalResult], allow_mismatch: bool
) -> list[str]:
    """Problems that make runs incomparable; raise on the first unless ``allow_mismatch``."""
    first_name, first = names[0], results[0]
    first_ids = [t.id for t in first.per_template]
    problems: list[str] = []
    for name, res in zip(names[1:], results[1:]):
        ids = [t.id for t in res.per_template]
        if res.task != first.task:
            problems.append(f"{name} is on task {res.task!r}, {first_name} on {first.task!r}")
        if res.format != first.format:
            problems.append(
                f"{name} uses answer format {res.format!r}, {first_name} {first.format!r}"
            )
        if set(ids) != set(first_ids):
            only_here = sorted(set(ids) - set(first_ids))
            only_there = sorted(set(first_ids) - set(ids))
            example = (only_here or only_there)[0]  # sets differ, so one side is non-empty
            problems.append(
                f"{name} and {first_name} were evaluated on different templates "
                f"({len(only_here)} only in {name}, {len(only_there)} only in {first_name}, "
                f"e.g. {example})"
            )
        n, n0 = res.per_template[0].n, first.per_template[0].n
        if n != n0:
            problems.append(f"{name} has {n} examples per template, {first_name} {n0}")
    if problems and not allow_mismatch:
        raise FlexpaftError(f"runs are not comparable: {problems[0]} (use --allow-mismatch)")
    modes = {r.mode for r in results}
    if len(modes) > 1:
        # Not fatal: a base model may only be scorable by generation; the reader must know.
        problems.append(f"runs use different scoring modes ({', '.join(sorted(modes))})")
    return problems


def _check_same_data(runs: list[tuple[str, dict[str, Any]]], allow_mismatch: bool) -> list[str]:
    """Runs scored on different examples are not comparable, even with equal counts; results
    written before eval stored a ``data_digest`` are not checked."""
    (first_name, first), problems = runs[0], []
    for name, data in runs[1:]:
        a, b = first.get("data_digest"), data.get("data_digest")
        if a and b and a != b:
            problems.append(f"{name} and {first_name} were scored on different examples")
    if problems and not allow_mismatch:
        raise FlexpaftError(f"runs are not comparable: {problems[0]} (use --allow-mismatch)")
    return problems


def _reference(
    data: dict[str, Any], res: EvalResult, name: str, reference_template: str | None
) -> tuple[float | None, float | None, str | None]:
    """(reference accuracy, PDR, description); the run's own reference entry wins."""
    accs = res.accuracies
    if isinstance(data.get("reference"), dict):
        ref = _eval_result(data["reference"], f"{name}: reference")
        ref_acc = ref.per_template[0].accuracy
        # Appending the reference and excluding it gives the mean over all test templates.
        pdr = metrics.performance_drop_rate([*accs, ref_acc], len(accs))
        label = ref.per_template[0].id or "reference"
        return ref_acc, _num(pdr), f"reference entry ({label})"
    if reference_template:
        ids = [t.id for t in res.per_template]
        if reference_template not in ids:
            raise FlexpaftError(
                f"reference template {reference_template!r} is not among {name}'s test templates"
            )
        i = ids.index(reference_template)
        pdr = metrics.performance_drop_rate(accs, i)
        return accs[i], _num(pdr), f"test template {reference_template}"
    return None, None, None


def _adversarial(data: dict[str, Any], test_mean: float, name: str) -> dict[str, Any] | None:
    if not isinstance(data.get("adversarial"), dict):
        return None
    adv = _eval_result(data["adversarial"], f"{name}: adversarial")
    accs = adv.accuracies
    mean = float(np.mean(accs))
    return {
        "templates": len(accs),
        "mean": mean,
        "min": float(np.min(accs)),
        # Adversarial templates do not record their source template, so they cannot be paired
        # with test templates; the drop is between the two set means.
        "drop": test_mean - mean,
        "consistency": metrics.consistency(adv.correct_matrix()),
        "per_template": {t.id: t.accuracy for t in adv.per_template},
    }


def _generation(res: EvalResult) -> dict[str, Any] | None:
    """Generation cost per method; the point is output length, so tokens come first."""
    rows = [
        t
        for t in res.per_template
        if t.mean_generated_tokens is not None and t.seconds_per_example is not None
    ]
    if res.mode != "generate" or not rows:
        return None
    tokens = float(np.mean([t.mean_generated_tokens for t in rows]))
    seconds = float(np.mean([t.seconds_per_example for t in rows]))
    return {
        "answered": float(np.mean([t.answered for t in rows])),
        "generated_tokens_per_example": tokens,
        "seconds_per_example": seconds,
        # Every template has the same examples, so this ratio of means is total s / total tokens.
        "seconds_per_generated_token": seconds / tokens if tokens > 0 else None,
    }


def method_metrics(
    name: str,
    data: dict[str, Any],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    reference_template: str | None = None,
) -> dict[str, Any]:
    """Every number the report shows for one run."""
    res = _eval_result(data, name)
    correct = res.correct_matrix()
    out: dict[str, Any] = {"name": name, "mode": res.mode, "examples": int(correct.shape[1])}
    out.update(metrics.summarize(res.accuracies, thresholds))
    ref_acc, pdr, ref_desc = _reference(data, res, name, reference_template)
    out["reference_accuracy"] = ref_acc
    out["reference"] = ref_desc
    out["pdr"] = pdr
    # The wording tax: accuracy given up from the user's own prompt to unseen ones (> 0 = a tax).
    out["own_gap_mean"] = None if ref_acc is None else ref_acc - out["mean"]
    out["own_gap_worst"] = None if ref_acc is None else ref_acc - out["min"]
    out["prompt_sensitivity"] = metrics.prompt_sensitivity(correct)
    out["consistency"] = metrics.consistency(correct)
    out["adversarial"] = _adversarial(data, out["mean"], name)
    out["generation"] = _generation(res)
    out["per_template"] = {t.id: t.accuracy for t in res.per_template}
    return out


def parse_thresholds(values: Sequence[str | float]) -> tuple[float, ...]:
    """'0.6,0.7', '0.6 0.7' or percentages ('60,70'); each ends up in (0, 1]."""
    out: list[float] = []
    for v in values:
        for part in str(v).replace(",", " ").split():
            try:
                t = float(part.rstrip("%"))
            except ValueError:
                raise FlexpaftError(f"threshold {part!r} is not a number") from None
            t = t / 100 if t > 1 else t
            if not 0 < t <= 1:
                raise FlexpaftError(f"threshold {part!r} must lie in (0, 1] or (0, 100]%")
            out.append(t)
    if not out:
        raise FlexpaftError("no thresholds given")
    return tuple(sorted(set(out)))


def _seed_groups(runs: list[tuple[str, dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Runs that share a label are seeds of one method, in the order given."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for name, data in runs:
        groups.setdefault(name, []).append(data)
    return groups


def _mean_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from several seeds' rows: every number averaged, other fields from the first."""
    out = dict(rows[0])
    for key, value in rows[0].items():
        if isinstance(value, bool) or key == "examples":
            continue
        if isinstance(value, (int, float)):
            vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
            out[key] = float(np.mean(vals)) if vals else None
        elif isinstance(value, dict) and key in ("adversarial", "generation", "per_template"):
            subs = [r[key] for r in rows if isinstance(r.get(key), dict)]
            out[key] = _mean_of(subs) if len(subs) == len(rows) else value
    return out


def _aligned_correct(data: dict[str, Any], name: str, template_ids: list[str]) -> np.ndarray:
    res = _eval_result(data, name)
    by_id = {t.id: t.correct for t in res.per_template}
    return np.array([by_id[t] for t in template_ids], dtype=np.float64)


def _gold(groups: dict[str, list[dict[str, Any]]]) -> np.ndarray | None:
    """Gold answers per example, when every run recorded the same ones."""
    golds = [d.get("gold") for datas in groups.values() for d in datas]
    if not golds or any(g is None for g in golds) or any(g != golds[0] for g in golds):
        return None
    return np.asarray(golds[0])


def own_correct(
    data: dict[str, Any], name: str, reference_template: str | None
) -> np.ndarray | None:
    """Per-example correctness under the user's own prompt: the run's reference entry (eval's
    ``reference_template``), else the test template ``reference_template`` names; None without."""
    if isinstance(data.get("reference"), dict):
        ref = _eval_result(data["reference"], f"{name}: reference")
        return np.asarray(ref.per_template[0].correct, dtype=np.float64)
    if reference_template:
        res = _eval_result(data, name)
        by_id = {t.id: t.correct for t in res.per_template}
        if reference_template in by_id:
            return np.asarray(by_id[reference_template], dtype=np.float64)
    return None


def _own_matrices(
    groups: dict[str, list[dict[str, Any]]], reference_template: str | None, n_examples: int
) -> dict[str, np.ndarray]:
    """Own-prompt correctness per method, seeds averaged example by example; methods whose runs
    lack a reference (or score it on other examples) are left out."""
    out = {}
    for name, datas in groups.items():
        vecs = [own_correct(d, name, reference_template) for d in datas]
        if vecs and all(v is not None and v.shape == (n_examples,) for v in vecs):
            out[name] = np.mean(vecs, axis=0)
    return out


def add_intervals(
    report: dict[str, Any],
    groups: dict[str, list[dict[str, Any]]],
    n_boot: int = 2000,
    seed: int = 0,
    reference_template: str | None = None,
) -> None:
    """95% intervals per method, paired comparisons between methods, the majority-label rate,
    and the own-prompt numbers (accuracy, gaps, paired comparison) where runs have a reference.

    Several seeds of a method are averaged example by example before resampling, so the interval
    covers templates and examples; the spread between seeds is reported beside it.
    """
    tids = report["templates"]
    mats: dict[str, np.ndarray] = {}
    for name, datas in groups.items():
        per_seed = []
        for d in datas:
            res = _eval_result(d, name)
            if {t.id for t in res.per_template} != set(tids):
                return  # mismatched runs (--allow-mismatch): no paired resampling possible
            per_seed.append(_aligned_correct(d, name, tids))
        if len({m.shape for m in per_seed}) != 1:
            return
        mats[name] = np.mean(per_seed, axis=0)
    shapes = {m.shape for m in mats.values()}
    if len(shapes) != 1:
        return
    n_templates, n_examples = shapes.pop()
    rs = intervals.Resamples.draw(n_templates, n_examples, n_boot, seed)
    gold = _gold(groups)
    if gold is not None and len(gold) != n_examples:
        gold = None
    report["bootstrap"] = {"replicates": n_boot, "seed": seed, "level": intervals.LEVEL}
    report["majority_rate"] = None if gold is None else intervals.majority_share(gold)
    # The resampling loop once per method; every interval and comparison reuses it.
    stats = {name: intervals.replicate_stats(mat, rs) for name, mat in mats.items()}
    for m in report["methods"]:
        m["intervals"] = intervals.method_intervals(mats[m["name"]], rs, stats[m["name"]])
        m["vs_majority"] = (
            None
            if gold is None
            else intervals.versus_majority(mats[m["name"]], gold, rs, stats[m["name"]])
        )
    names = list(mats)
    report["comparisons"] = [
        {"a": a, "b": b, **intervals.compare(mats[a], mats[b], rs, stats[a], stats[b])}
        for i, b in enumerate(names)
        for a in names[i + 1 :]
    ]
    own = _own_matrices(groups, reference_template, n_examples)
    for m in report["methods"]:
        if m["name"] in own:
            m["own_prompt"] = intervals.own_prompt(
                own[m["name"]], mats[m["name"]], rs, stats[m["name"]]
            )
    owned = [n for n in names if n in own]
    report["own_comparisons"] = [
        {"a": a, "b": b, "diff": intervals.compare_own(own[a], own[b], rs)}
        for i, b in enumerate(owned)
        for a in owned[i + 1 :]
    ]


def build_report(
    runs: list[tuple[str, dict[str, Any]]],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    reference_template: str | None = None,
    allow_mismatch: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
    group_seeds: bool = False,
) -> dict[str, Any]:
    """All numbers for a side-by-side report of ``runs`` (label, results.json dict).

    With ``group_seeds``, runs that share a label are seeds of one method: its row averages
    them, and ``across_seeds`` gives mean and std over seeds of the mean, std and worst template.
    Without it a shared label is a mistake (two runs would be indistinguishable).
    """
    if not runs:
        raise FlexpaftError("no runs to report")
    names = [n for n, _ in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes and not group_seeds:
        raise FlexpaftError(
            f"two runs are labelled {dupes[0]!r}; label them with NAME=PATH, "
            "or pass --seeds if they are seeds of one method"
        )
    groups = _seed_groups(runs)
    results = [_eval_result(d, n) for n, d in runs]
    warnings = _check_same_data(runs, allow_mismatch)
    warnings += _check_comparable(names, results, allow_mismatch)
    thresholds = tuple(thresholds)
    methods = []
    for name, datas in groups.items():
        rows = [method_metrics(name, d, thresholds, reference_template) for d in datas]
        row = _mean_of(rows) if len(rows) > 1 else rows[0]
        row["seeds"] = len(rows)
        row["across_seeds"] = (
            {k: intervals.across_seeds([r[k] for r in rows]) for k in ("mean", "std", "min")}
            if len(rows) > 1
            else None
        )
        methods.append(row)
    first = results[0]
    # Template order of the first run, then any extra templates other runs have (mismatch only).
    template_ids = [t.id for t in first.per_template]
    for r in results[1:]:
        template_ids += [t.id for t in r.per_template if t.id not in template_ids]
    report = {
        "task": first.task,
        "format": first.format,
        "modes": sorted({r.mode for r in results}),
        "templates": template_ids,
        "examples": methods[0]["examples"],
        "thresholds": list(thresholds),
        "reference_template": reference_template,
        "warnings": warnings,
        "methods": methods,
        "majority_rate": None,
        "comparisons": [],
        "own_comparisons": [],
    }
    if n_boot > 0:
        add_intervals(report, groups, n_boot, seed, reference_template)
    return report
