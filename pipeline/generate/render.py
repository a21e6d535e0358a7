"""Every generated file, by bundle and path, and writing or checking them under a bundles folder."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.generate.configs import copied, joint_train, metadata, multi_gpu
from pipeline.generate.distill import DISTILL, distill_metadata, distill_multi_gpu, distill_train, evaluate_ensemble
from pipeline.generate.formatting import format_json
from pipeline.generate.mean_teacher import (
    MEAN_TEACHER,
    mean_teacher_evaluate,
    mean_teacher_metadata,
    mean_teacher_multi_gpu,
    mean_teacher_train,
)
from pipeline.generate.pretrain import pretrain_only, pretrain_train, with_pretraining
from pipeline.generate.readme import distill_readme, mean_teacher_readme, readme
from pipeline.generate.sources import BASELINE, GENERATOR, baseline_text, load_baseline
from pipeline.generate.variants import Variant, variants

COPIED_CONFIGS = ("evaluate.json", "inference.json", "inference_onnx.json", "tune.json", "multi_gpu_evaluate.json")


def _copied_files() -> dict[str, str]:
    """The baseline files every generated bundle carries unchanged (configs with a note naming the source)."""
    files = {f"configs/{name}": format_json(copied(load_baseline(name), name)) for name in COPIED_CONFIGS}
    files["configs/logging.conf"] = (
        f"# Copied from bundles/baseline/configs/logging.conf by {GENERATOR}; edit the baseline, not this file.\n"
        + baseline_text("configs/logging.conf")
    )
    files["LICENSE"] = baseline_text("LICENSE")
    files["models/.gitkeep"] = ""
    return files


def render(variant: Variant) -> dict[str, str]:
    """Every file of a stage-1 bundle, by path relative to the bundle folder."""
    if variant.mode == "joint":
        train, gpu = joint_train(variant), multi_gpu(variant)
    else:
        train, gpu = pretrain_train(variant), multi_gpu(variant, with_pretraining)
    files = {
        "configs/train.json": format_json(train),
        "configs/multi_gpu_train.json": format_json(gpu),
        "configs/metadata.json": format_json(metadata(variant)),
        "docs/README.md": readme(variant),
    }
    if variant.mode == "pretrain":
        files["configs/pretrain.json"] = format_json(pretrain_only(train, variant))
    return {**files, **_copied_files()}


def render_distill() -> dict[str, str]:
    """Every file of the distillation bundle."""
    files = {
        "configs/train.json": format_json(distill_train()),
        "configs/evaluate_ensemble.json": format_json(evaluate_ensemble()),
        "configs/multi_gpu_train.json": format_json(distill_multi_gpu()),
        "configs/metadata.json": format_json(distill_metadata()),
        "docs/README.md": distill_readme(),
    }
    return {**files, **_copied_files()}


def render_mean_teacher() -> dict[str, str]:
    """Every file of the Mean Teacher bundle (its evaluate.json is its own: see ``mean_teacher_evaluate``)."""
    return {
        **_copied_files(),
        "configs/train.json": format_json(mean_teacher_train()),
        "configs/evaluate.json": format_json(mean_teacher_evaluate()),
        "configs/multi_gpu_train.json": format_json(mean_teacher_multi_gpu()),
        "configs/metadata.json": format_json(mean_teacher_metadata()),
        "docs/README.md": mean_teacher_readme(),
    }


def bundle_files() -> dict[str, dict[str, str]]:
    """Every generated bundle: name -> {path in the bundle: text}."""
    bundles = {v.name: render(v) for v in variants()}
    bundles[DISTILL] = render_distill()
    bundles[MEAN_TEACHER] = render_mean_teacher()
    return bundles


def formatted_baseline() -> dict[str, str]:
    """The baseline's JSON configs in the generator's format (same content): path in the bundle -> text."""
    return {
        f"configs/{path.name}": format_json(json.loads(path.read_text()))
        for path in sorted((BASELINE / "configs").glob("*.json"))
    }


def render_all(bundles_root: Path, check: bool = False) -> list[str]:
    """Write every generated bundle under ``bundles_root`` (with ``check``: write nothing). Returns the
    files, relative to ``bundles_root``, that were out of date (and are now written unless ``check``).

    The hand-written baseline's JSON configs count too, when ``bundles_root`` holds the baseline: they
    must be in the same format (a write reformats them, their content unchanged).
    """
    bundles_root = Path(bundles_root)
    outputs = bundle_files()
    if (bundles_root / "baseline").resolve() == BASELINE.resolve():
        outputs["baseline"] = formatted_baseline()
    stale = []
    for name, files in outputs.items():
        for rel, text in files.items():
            path = bundles_root / name / rel
            if path.is_file() and path.read_text() == text:
                continue
            stale.append(f"{name}/{rel}")
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    return stale
