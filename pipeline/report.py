"""The pipeline's report: ``results.json``, ``report.md`` and its figures, from the run's metrics.json files.

Rows: the baseline, every stage-1 variant, each task's teacher (the chosen mode, per seed),
``multitask_joint``, the semi-supervised competitor ``mean_teacher``, the plain teacher ensemble and the
distilled student. Numbers are test-split metrics (competition Dice, Dice over positive images, IoU), mean
and standard deviation over the runs (seeds, or seeds x folds: each run has a key, ``0`` or ``0/fold2``),
plus the same on each external test set (``external_<NAME>`` in metrics.json).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.utils.io import atomic_path, atomic_write_json
from common.utils.metrics import BLANK_POSITIVE_DICE, RunMetrics
from pipeline import compute, pretext_curves
from pipeline.paths import BUNDLES
from pipeline.per_image import most_different, paired, plot_scatter

METRICS = ("dice", "dice_positive", "iou", "dice_hmean")
TUNED_METRICS = ("dice", "dice_positive")  # the columns of the test with post-processing tuned on validation
EXTERNAL_METRICS = ("dice", "dice_positive")  # the columns of each external test set
# BLANK_POSITIVE_DICE: a model whose positive-only test Dice is below it finds (almost) no lesion: "blank". Its
# competition Dice then comes from the negative images alone, so the table says so next to its name.
BASELINE_TRAIN = BUNDLES / "baseline" / "configs" / "train.json"


def _metrics_of(model_dir: str | Path) -> RunMetrics:
    return RunMetrics.read(Path(model_dir) / "models" / "metrics.json")


def run_key(run: dict[str, Any]) -> str:
    """A run's key in the report: ``0`` (seed 0) or ``0/fold2``."""
    return str(run.get("key", run["seed"]))


def _external(m: RunMetrics, names: Sequence[str], ensemble: bool = False) -> dict[str, dict[str, Any]]:
    return {name: m.evaluation(f"external_{name}", ensemble) for name in names}


def student_row(name: str) -> str:
    """The report's row of a student run: ``student (distill)``, a variant ``student (distill, <arm>)``."""
    return "student (distill)" if name == "distill" else f"student (distill, {name.removeprefix('distill_')})"


def collect(seeds: Sequence[dict[str, Any]], external: Sequence[str] = ()) -> dict[str, dict[str, dict[str, Any]]]:
    """Per row, per run key: validation, test and external-test metrics, learning curve, source folder."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}

    def put(
        row: str,
        key: str,
        val: dict | None,
        test: dict | None,
        history: list | None,
        src: str,
        ext: dict,
        tuned: dict | None = None,
    ) -> None:
        rows.setdefault(row, {})[key] = {
            "val": val or {}, "test": test or {}, "history": history or [], "dir": src, "external": ext,
            "test_tuned": tuned or {},
        }  # fmt: skip

    for run in seeds:
        seed = run_key(run)
        for name, folder in run["models"].items():
            m = _metrics_of(folder)
            row = student_row(name) if name.startswith("distill") else name
            tuned = {**m.evaluation("test_tuned"), "setting": m.section("postprocessing")}
            put(row, seed, m.validation, m.evaluation("test"), m.history, folder, _external(m, external), tuned)
            if name == "distill":
                ext = _external(m, external, ensemble=True)
                put("teacher ensemble", seed, None, m.evaluation("test", ensemble=True), None, folder, ext)
            elif name.startswith("distill_") and m.evaluation("test", ensemble=True):  # an arm's own ensemble
                arm = name.removeprefix("distill_")
                put(f"teacher ensemble ({arm})", seed, None, m.evaluation("test", ensemble=True), None, folder, {})
        for teacher in run["teachers"]:
            source = rows.get(teacher["bundle"], {}).get(seed)
            if source:
                rows.setdefault(f"teacher {teacher['task']}", {})[seed] = {**source, "mode": teacher["mode"]}
    return in_report_order(rows)


def is_teacher_row(row: str) -> bool:
    """Whether a report row is one selected teacher (``teacher <task>``), not an ensemble of them."""
    return row.startswith("teacher ") and not row.startswith("teacher ensemble")


def in_report_order(rows: dict[str, Any]) -> dict[str, Any]:
    """``rows`` in the report's order: baseline, the stage-1 variants, the teachers, multitask_joint,
    mean_teacher, the ensemble (then the student arms' own ensembles), the student and its variants."""
    order = ["baseline"]
    order += sorted(r for r in rows if r.endswith(("_joint", "_pretrain")) and r != "multitask_joint")
    order += sorted(r for r in rows if is_teacher_row(r))
    order += ["multitask_joint", "mean_teacher", "teacher ensemble"]
    order += sorted(r for r in rows if r.startswith("teacher ensemble ("))
    order += ["student (distill)"]
    order += sorted(r for r in rows if r.startswith("student (distill, "))
    return {r: rows[r] for r in order if r in rows}


def stats(values: list[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (rounded) and count of the values that are not None."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 4), "std": round(std, 4), "n": len(values)}


def summarise(rows: dict[str, dict[str, dict[str, Any]]], external: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Mean/std over the runs of every test, validation and external-test metric, per row."""
    out = {}
    for row, per_seed in rows.items():
        entry = {f"test_{k}": stats([s["test"].get(k) for s in per_seed.values()]) for k in METRICS}
        entry.update({f"val_{k}": stats([s["val"].get(k) for s in per_seed.values()]) for k in METRICS})
        tuned = [s.get("test_tuned") or {} for s in per_seed.values()]
        entry.update({f"test_tuned_{k}": stats([t.get(k) for t in tuned]) for k in TUNED_METRICS})
        for name in external:
            runs = [s.get("external", {}).get(name, {}) for s in per_seed.values()]
            entry.update({f"external_{name}_{k}": stats([r.get(k) for r in runs]) for k in EXTERNAL_METRICS})
        modes = [s.get("mode") for s in per_seed.values() if s.get("mode")]
        if modes:
            entry["chosen_modes"] = modes
        positive = {seed: s["test"].get("dice_positive") for seed, s in per_seed.items()}
        entry["blank_seeds"] = sorted(seed for seed, v in positive.items() if v is not None and v < BLANK_POSITIVE_DICE)
        out[row] = entry
    return out


def arithmetic_line(arithmetic: dict[str, list] | None) -> str:
    """``trained in fp32+channels_last, 1 torch thread(s) on <processor> (<isa>)``, or that the models did
    not record it (the processor is left out where they trained before it was recorded)."""
    if not arithmetic:
        return "precision and threads not recorded"
    precision = " / ".join(arithmetic["precision"]) or "?"
    threads = " / ".join(str(t) for t in arithmetic["torch_threads"]) or "?"
    line = f"trained in {precision}, {threads} torch thread(s)"
    if arithmetic.get("processor"):
        isa = " / ".join(arithmetic.get("isa") or [])
        line += f" on {' / '.join(arithmetic['processor'])}" + (f" ({isa})" if isa else "")
    return line


def _fmt(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.3f}" if stat["n"] < 2 else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def results_table(summary: dict[str, dict[str, Any]], external: Sequence[str] = ()) -> str:
    """The markdown results table (test metrics; validation Dice and the checkpoint metric ``dice_hmean``;
    then Dice and positive-only Dice on each external test set)."""
    extra = "".join(f" {name} dice | {name} dice (positive) |" for name in external)
    lines = [
        "| model | test dice | test dice (positive) | tuned: test dice | tuned: test dice (positive) | test IoU "
        "| val dice | val dice_hmean |" + extra,
        "|---|---|---|---|---|---|---|---|" + "---|" * (2 * len(external)),
    ]
    for row, s in summary.items():
        name = row
        if s.get("chosen_modes"):
            name += f" ({', '.join(sorted(set(s['chosen_modes'])))})"
        if s.get("blank_seeds"):
            name += f" **blank** ({len(s['blank_seeds'])}/{s['test_dice_positive']['n']} runs)"
        lines.append(
            f"| {name} | {_fmt(s['test_dice'])} | {_fmt(s['test_dice_positive'])} | "
            f"{_fmt(s['test_tuned_dice'])} | {_fmt(s['test_tuned_dice_positive'])} | {_fmt(s['test_iou'])} | "
            f"{_fmt(s['val_dice'])} | {_fmt(s['val_dice_hmean'])} |"
            + "".join(f" {_fmt(s[f'external_{n}_{k}'])} |" for n in external for k in EXTERNAL_METRICS)
        )
    return "\n".join(lines)


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def plot_test_dice(summary: dict[str, dict[str, Any]], path: Path) -> None:
    """Horizontal bars of mean test Dice per model with the standard deviation over seeds."""
    import matplotlib.pyplot as plt

    names = [r for r, s in summary.items() if s["test_dice"]["mean"] is not None]
    means = [summary[r]["test_dice"]["mean"] for r in names]
    stds = [summary[r]["test_dice"]["std"] for r in names]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    colours = ["tab:gray" if r == "baseline" else "tab:green" if r.startswith("student") else "tab:blue" for r in names]
    ax.barh(range(len(names)), means, xerr=stds, color=colours, capsize=3)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("test Dice (competition rule), mean ± std over seeds")
    ax.set_xlim(0, 1)
    _save(fig, path)
    plt.close(fig)


def plot_curves(rows: dict[str, dict[int, dict[str, Any]]], path: Path) -> None:
    """Validation Dice per epoch of every trained model (first seed)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for row, per_seed in rows.items():
        if row.startswith("teacher"):
            continue
        history = next(iter(per_seed.values()))["history"]
        if history:
            ax.plot([h["epoch"] for h in history], [h.get("dice") for h in history], label=row, lw=1.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation Dice")
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)
    plt.close(fig)


def predict_masks(model_files: dict[str, Any], images: list[str], image_size: int) -> tuple[np.ndarray, dict]:
    """Images (N, H, W) at the training resolution and each model's post-processed masks on them.

    ``model_files``: name -> a ``model.pt`` path or ``("ensemble", teachers.json)``. The network,
    preprocessing and post-processing come from the baseline bundle's config.
    """
    import torch
    from monai.bundle import ConfigParser

    from common.distill.teachers import load_ensemble
    from common.utils.checkpoints import load_checkpoint

    parser = ConfigParser()
    parser.read_config(str(BASELINE_TRAIN))
    parser["image_size"] = image_size
    load = parser.get_parsed_content("load_transforms")
    post = parser.get_parsed_content("postprocessing")
    batch = []
    for path in images:
        item = {"image": path}
        for t in load:
            item = t(item)
        batch.append(item["image"])
    x = torch.stack([torch.as_tensor(b) for b in batch])
    masks = {}
    for name, source in model_files.items():
        network_def = ConfigParser(parser.get()).get_parsed_content("network_def")
        if isinstance(source, tuple):
            net = load_ensemble(source[1], network_def, "cpu", 1.0)
        else:
            network_def.load_state_dict(load_checkpoint(source))
            net = network_def
        net.eval()
        with torch.no_grad():
            logits = net(x)
        masks[name] = np.stack([np.asarray(post({"pred": p})["pred"])[0] for p in logits])
    return x[:, 0].numpy(), masks


def plot_overlays(images: np.ndarray, truth: np.ndarray, masks: dict[str, np.ndarray], path: Path) -> None:
    """Grid: one test image per row; columns truth and each model, prediction in colour over the image."""
    import matplotlib.pyplot as plt

    cols = ["truth", *masks]
    fig, axes = plt.subplots(len(images), len(cols), figsize=(1.8 * len(cols), 1.8 * len(images)), squeeze=False)
    for i, image in enumerate(images):
        for j, col in enumerate(cols):
            mask = truth[i] if col == "truth" else masks[col][i]
            ax = axes[i][j]
            ax.imshow(image, cmap="gray")
            ax.imshow(np.ma.masked_where(mask < 0.5, mask), cmap="autumn", alpha=0.5, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col, fontsize=8)
    _save(fig, path)
    plt.close(fig)


def training_image_size(run: dict[str, Any], settings: dict[str, Any]) -> int:
    """The resolution the run's models were trained at: their metrics.json (``model.image_size``), else the
    run's ``image_size`` override, else the baseline config's default."""
    for name in ("distill", "baseline"):
        if name in run["models"] and (size := _metrics_of(run["models"][name]).image_size):
            return size
    size = settings.get("overrides", {}).get("image_size")
    return int(size if size is not None else json.loads(BASELINE_TRAIN.read_text())["image_size"])


def per_image_run(run: dict[str, Any]) -> dict[str, Any]:
    """What ``pipeline.per_image`` reads of a run: its key, model folders and which test images are positive."""
    from common.data.datalist import load_datalist

    datalist = Path(run["dir"]) / "datalist.json"
    test = load_datalist(datalist)["test"] if datalist.is_file() else []
    return {"key": run_key(run), "models": run["models"], "positive": {it["image"]: it.get("positive") for it in test}}


def _overlay_figure(out: Path, run: dict[str, Any], image_size: int, n: int = 4) -> bool:
    """The overlay grid of the first run's ``n`` test images where the student's and the baseline's Dice differ
    most (``pipeline.per_image``; without their per-image scores: positives first)."""
    from common.data.datalist import load_datalist
    from common.data.transforms import LoadMaskd, LoadXrayd

    models = run["models"]
    if "distill" not in models or "baseline" not in models:
        return False  # no student this run (no usable teacher) or no baseline
    student = Path(models["distill"]) / "models" / "model.pt"
    baseline = Path(models["baseline"]) / "models" / "model.pt"
    teachers_file = Path(run["dir"]) / "teachers.json"
    if not (student.is_file() and baseline.is_file() and teachers_file.is_file()):
        return False
    test = load_datalist(Path(run["dir"]) / "datalist.json")["test"]
    chosen = most_different(paired([per_image_run(run)], "baseline", "distill"), n)
    if chosen:
        test = sorted((it for it in test if it["image"] in chosen), key=lambda it: chosen.index(it["image"]))
    else:
        test = sorted(test, key=lambda it: not it.get("positive", True))[:n]
    images, masks = predict_masks(
        {"baseline": baseline, "teacher ensemble": ("ensemble", teachers_file), "student": student},
        [it["image"] for it in test],
        image_size,
    )
    from monai.transforms import Resize

    truth = []
    for it in test:
        d = LoadMaskd()(LoadXrayd()(it))
        truth.append(np.asarray(Resize((image_size, image_size), mode="nearest")(d["label"]))[0])
    plot_overlays(images, np.stack(truth), masks, out / "overlays.png")
    return True


def refused_lines(seeds: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines naming the stage-1 variants teacher selection refused as blank, per run (none: []), and
    the runs left without a student because every candidate was refused."""
    lines = [
        f"- run {run_key(r)}: `{x['bundle']}` refused as a teacher: {x['reason']}"
        for r in seeds
        for x in r.get("refused") or []
    ]
    lines += [
        f"- run {run_key(r)}: **no student**: no usable teacher, so the student (and the teacher ensemble) "
        "could not be trained; its rows lack this run"
        for r in seeds
        if not r.get("teachers")
    ]
    return ["Refused teacher candidates (blank on validation):", "", *lines, ""] if lines else []


def data_lines(seeds: Sequence[dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    """What the runs trained on: the labelled subset, the split (k-fold or not), the unlabelled pool."""
    count = settings.get("labelled_count")
    labelled = (
        f"{count} labelled training images"
        if count
        else f"{settings['labelled_fraction']:.0%} of the training images labelled"
    )
    folds = settings.get("folds")
    split = (
        f"stratified {folds}-fold split (each image tested once per seed; test ids per run in results.json)"
        if folds
        else "one stratified 70/15/15 split per seed"
    )
    if folds and settings.get("only_folds"):
        done = ", ".join(str(f) for f in settings["only_folds"])
        split += f" (so far only fold(s) {done} of the {folds}: not every image is tested yet)"
    lines = [f"Dataset `{settings['dataset_dir']}`: {labelled}, {split}."]
    pool = next((r["pool"] for r in seeds if r.get("pool")), None)
    if pool:
        dirs = ", ".join(f"`{d}`" for d in settings.get("unlabelled_dirs", []))
        lines.append(
            f"Unlabelled pool {dirs}: {pool['used']} images "
            f"used of {pool['found']} found ({pool['dropped']} dropped as copies of labelled or pool images, "
            f"{pool['skipped']} unreadable skipped); the `*_pretrain` variants pre-trained on it alone, once per seed."
        )
    return lines


#: what a model's ``arithmetic`` record holds (metrics.json, ``common.training.handlers.arithmetic``)
ARITHMETIC_KEYS = ("precision", "torch_threads", "processor", "isa")


def collect_arithmetic(recorded: Iterable[dict[str, Any] | None]) -> dict[str, list] | None:
    """The distinct precisions, torch thread counts, processors and instruction sets among models'
    ``arithmetic`` records (each a metrics.json's, or None where a model trained before it was recorded; a
    key no model recorded is left out); None when none recorded any."""
    found: dict[str, set] = {key: set() for key in ARITHMETIC_KEYS}
    for record in recorded:
        for key, values in found.items():
            if (record or {}).get(key) is not None:
                values.add(record[key])
    return {k: sorted(v) for k, v in found.items() if v} or None


def arithmetic_of(seeds: Sequence[dict[str, Any]]) -> dict[str, list] | None:
    """The precisions and torch thread counts the run's models trained in (``arithmetic`` in each
    metrics.json); None when no model recorded them (trained before they were recorded)."""
    return collect_arithmetic(
        _metrics_of(folder).section("training").get("arithmetic") for run in seeds for folder in run["models"].values()
    )


def write_report(out: Path, seeds: Sequence[dict[str, Any]], settings: dict[str, Any]) -> str:
    """Write results.json, report.md and the figures under ``out``; return the results table."""
    import matplotlib

    matplotlib.use("Agg")
    settings = {**settings, "arithmetic": arithmetic_of(seeds)}
    external = list(settings.get("external") or {})
    rows = collect(seeds, external)
    summary = summarise(rows, external)
    table = results_table(summary, external)
    plot_test_dice(summary, out / "test_dice.png")
    plot_curves(rows, out / "curves.png")
    has_overlays = _overlay_figure(out, seeds[0], training_image_size(seeds[0], settings))
    pairs = paired([per_image_run(r) for r in seeds], "baseline", "distill")
    has_scatter = plot_scatter(pairs, "baseline", "student (distill)", out / "per_image.png")
    keys = [run_key(r) for r in seeds]
    per_seed = {
        key: {row: {k: v for k, v in per[key].items() if k != "history"} for row, per in rows.items() if key in per}
        for key in keys
    }
    results = {
        "settings": settings,
        "summary": summary,
        "per_seed": per_seed,
        "selection": {run_key(r): {t["task"]: t["mode"] for t in r["teachers"]} for r in seeds},
        "refused": {run_key(r): r.get("refused") or [] for r in seeds},
    }
    if settings.get("folds"):
        results["test_ids"] = {run_key(r): r.get("test_ids", []) for r in seeds}
    records, unreadable = compute.read(out / "logs")
    # the folder's log holds every sitting's commands: the summary keeps its own runs' (and their seeds')
    results["compute_runs"] = compute.of_runs(compute.per_run(records), keys)
    results["compute"] = compute.summarise_runs(results["compute_runs"])
    atomic_write_json(out / "results.json", results)
    ext = f"; then Dice and positive-only Dice on the external test set(s) {', '.join(external)}" if external else ""
    lines = [
        "# Two-stage multi-task SSL: results",
        "",
        *data_lines(seeds, settings),
        f"Runs {', '.join(keys)} (seed, or seed/fold; split and training seeded alike), scale `{settings['scale']}` "
        f"(overrides {json.dumps(settings['overrides'])}); wall time {settings['wall_time_s']:.0f} s; "
        f"{arithmetic_line(settings['arithmetic'])}.",
        "Test-split metrics: Dice with the SIIM-ACR rule (empty truth and empty prediction score 1), Dice over",
        f"images with a positive truth, IoU; mean ± std over the runs{ext}. Teachers: each task's better mode on",
        "the validation score `dice_hmean` (the mode chosen per run in brackets); a variant blank on validation is",
        "never a teacher (listed below the table); `mean_teacher` is a semi-supervised competitor, not a teacher.",
        f"**blank**: positive-only test Dice below {BLANK_POSITIVE_DICE} (in that many runs): the model finds no",
        "lesion; its Dice comes from the negatives. `tuned`: the same test images with each model's post-processing",
        "(threshold, minimum area, lower threshold, flip TTA) chosen on its validation split by one grid for every",
        "model (`configs/tune.json`); the other columns use the defaults (0.5, the bundle's minimum area, no TTA).",
        "",
        table,
        "",
        *refused_lines(seeds),
        "![test Dice per model](test_dice.png)",
        "",
        "Validation Dice during training (first run):",
        "",
        "![learning curves](curves.png)",
        "",
    ]
    pretext = pretext_curves.pretraining_curves(out / "logs")
    if pretext:
        pretext_curves.plot_curves(pretext, out / "pretext_curves.png")
        changes = {name: pretext_curves.plateau(curve) for name, curve in pretext.items()}
        said = ", ".join(f"{n} {c:+.0%}" for n, c in changes.items() if c is not None) or "too few epochs to say"
        lines += [
            "Pool pre-training, pretext loss per epoch (mean of the last 5 epochs against the 5 before: "
            f"{said}; a curve that still falls wants more epochs):",
            "",
            "![pretext loss per epoch](pretext_curves.png)",
            "",
        ]
    if has_scatter:
        lines += [
            f"Per test image, student against baseline (every run: {len(pairs)} images; the competition Dice of each):",
            "",
            "![per-image Dice, student vs baseline](per_image.png)",
            "",
        ]
    if has_overlays:
        lines += [
            "The first run's test images where student and baseline differ most, prediction in colour:",
            "",
            "![predictions](overlays.png)",
            "",
        ]
    if results["compute"]:
        lines += [
            "Compute per run, CPU minutes (wall minutes in brackets), mean over the runs recorded in "
            f"`logs/{compute.COMPUTE_FILE}`{f' ({unreadable} unreadable lines skipped)' if unreadable else ''}; "
            "a resumed run counts all its segments:",
            "",
            compute.compute_table(results["compute"]),
            "",
        ]
    lines += ["Machine-readable: `results.json`. Per-bundle logs: `logs/`.", ""]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines))
    return table
