"""Zoo conventions beyond the metadata schema: every bundle declares the apps it supports (MONAI Label) and
passes the zoo's property check for them (``ci/verify_properties.py``: MONAI's infer workflow properties),
and every bundle evaluates under ``torchrun`` with ``multi_gpu_evaluate.json`` (metrics gathered over the
ranks: the same numbers as one process)."""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import create_workflow
from monai.bundle.properties import InferProperties, MetaProperties

from tests.conftest import REPO, copy_bundle, read_json, run_bundle, run_torchrun, tiny_train_overrides

BUNDLES = sorted(p.parent.parent for p in (REPO / "bundles").glob("*/configs/inference.json"))


@pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning")  # our own configs: trusted
@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_supported_apps_and_their_properties(bundle: Path, tiny_siim: Path) -> None:
    metadata = read_json(bundle / "configs" / "metadata.json")
    assert metadata["supported_apps"] == {"monailabel": "0.8.5"}
    assert (bundle / "configs" / "multi_gpu_evaluate.json").is_file()
    workflow = create_workflow(
        workflow_type="infer",
        config_file=str(bundle / "configs" / "inference.json"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        bundle_root=str(bundle),
        input_dir=str(tiny_siim / "dicom-images-train"),  # the default, the demo data, is absent on a clean clone
    )
    workflow.properties = {**MetaProperties, **InferProperties}
    assert workflow.check_properties() == []


def test_multi_gpu_evaluate_gathers_the_ranks(tiny_siim: Path, tmp_path: Path) -> None:
    """Two gloo ranks, each a shard of the test split: the metrics of all the images, written once."""
    bundle = copy_bundle("baseline", tmp_path / "baseline")
    configs = bundle / "configs"
    tiny = tiny_train_overrides(tiny_siim, bundle, epochs=1)
    run_bundle([configs / "train.json"], *tiny, cwd=tmp_path)
    evaluate = [configs / "train.json", configs / "evaluate.json"]
    run_bundle(evaluate, *tiny, "--eval_name", "one", cwd=tmp_path)
    run_torchrun([*evaluate, configs / "multi_gpu_evaluate.json"], *tiny, "--eval_name", "two", cwd=tmp_path)
    metrics = read_json(bundle / "models" / "metrics.json")
    one, two = metrics["one"], metrics["two"]
    assert two["n_images"] == one["n_images"] > 1
    for key in ("dice", "dice_positive", "iou", "dice_hmean"):
        if one[key] is None:
            assert two[key] is None
        else:
            assert two[key] == pytest.approx(one[key], abs=1e-5), key
    saved = (bundle / "eval" / "two" / "dice_raw.csv").read_text().splitlines()
    assert len(saved) == one["n_images"] + 1  # every image once, header included
