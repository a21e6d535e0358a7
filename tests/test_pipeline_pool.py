"""The protocol with an unlabelled pool, k-fold splits and an external test set: pool-only pre-training
computed once per seed and reused by another labelled size; external columns in the report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data.demo import make_demo_siim
from scripts.run_pipeline import main as run_pipeline


def _pool(folder: Path, n: int = 6) -> Path:
    """``n`` unlabelled synthetic chest-like images (PNG), none a copy of the labelled ones."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(n):
        Image.fromarray((rng.random((96, 96)) * 255).astype(np.uint8)).save(folder / f"u{i}.png")
    return folder


def _external(folder: Path) -> Path:
    """An image/mask folder (the other external layout) of 6 synthetic images."""
    siim = make_demo_siim(folder / "siim", n_images=6, size=64, seed=11)
    from common.data.datalist import scan_dataset
    from common.data.rle import decode_rle

    (folder / "ext" / "images").mkdir(parents=True)
    (folder / "ext" / "masks").mkdir()
    for item in scan_dataset(siim).items:
        from common.data.imaging import read_image

        image, _ = read_image(siim / item["image"])
        mask = np.zeros(image.shape, dtype=np.uint8)
        for rle in item["rle"]:
            mask |= decode_rle(rle, *image.shape)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / "ext" / "images" / f"{item['id']}.png")
        Image.fromarray(mask * 255).save(folder / "ext" / "masks" / f"{item['id']}.png")
    return folder / "ext"


def _args(dataset: Path, out: Path, store: Path, pool: Path, *extra: str) -> list[str]:
    return [
        "--dataset-dir", str(dataset), "--out", str(out), "--pretrain-store", str(store), "--scale", "demo",
        "--tasks", "rotation", "--skip", "multitask_joint", "rotation_joint", "mean_teacher", "--jobs", "1",
        "--unlabelled-dir", str(pool),
        "--set", "epochs=1", "pretrain_epochs=1", "val_interval=1", "num_workers=0", "output_prior=off",
        "image_size=32", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_pool_pretraining_is_reused_across_labelled_sizes_and_folds(
    tiny_siim: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pool, store = _pool(tmp_path / "archive"), tmp_path / "store"
    external = _external(tmp_path / "external")
    first = tmp_path / "few"
    args = _args(tiny_siim, first, store, pool, "--labelled-count", "4", "--folds", "2")
    with pytest.raises(SystemExit, match="--only-folds 2: not a fold of --folds 2"):
        run_pipeline([*args, "--only-folds", "2"])
    # a study fold by fold: fold 0 in one sitting (its report says so), then the rest
    assert run_pipeline([*args, "--external-test", f"site={external}", "--only-folds", "0"]) == 0
    log = capsys.readouterr().out
    pretrained = store / "seed0" / "rotation_pretrain" / "models" / "pretrained.pt"
    assert pretrained.is_file()
    assert "[seed 0 fold 0]   rotation_pretrain: trained" in log and "fold 1" not in log  # the store's, once
    assert set(json.loads((first / "results.json").read_text())["test_ids"]) == {"0/fold0"}
    assert "so far only fold(s) 0 of the 2" in (first / "report.md").read_text()
    assert run_pipeline([*args, "--external-test", f"site={external}"]) == 0
    log = capsys.readouterr().out
    assert "[seed 0 fold 0]   baseline: current" in log
    assert "[seed 0 fold 1]   rotation_pretrain: reused" in log  # the second fold reuses it
    stamp = os.stat(pretrained).st_mtime_ns
    phase = json.loads((pretrained.parent / "metrics.json").read_text())["pretraining"]
    assert phase["status"] == "complete" and phase["epochs"] == 1
    pool_list = json.loads((store / "seed0" / "pool.json").read_text())
    assert [Path(it["image"]).name for it in pool_list["training_unlabelled"]] == [f"u{i}.png" for i in range(6)]
    assert pool_list["training_labelled"] == [] and pool_list["test"] == []

    for fold in (0, 1):  # the fine-tuning started from the stored weights, without pre-training itself
        finetune = json.loads(
            (first / "seed0" / f"fold{fold}" / "rotation_pretrain" / "models" / "metrics.json").read_text()
        )
        assert "pretraining" not in finetune and finetune["training"]["status"] == "complete"
        assert finetune["training"]["pool"]["used"] == 6  # metrics.json counts the pool
    results = json.loads((first / "results.json").read_text())
    assert set(results["test_ids"]) == {"0/fold0", "0/fold1"}
    tested = [i for ids in results["test_ids"].values() for i in ids]
    assert sorted(tested) == sorted(set(tested)) and len(tested) == 24  # every image tested once
    for row in ("baseline", "teacher ensemble", "student (distill)"):
        assert results["summary"][row]["external_site_dice"]["n"] == 2
    assert results["compute"]["baseline"]["train"]["runs"] == 2
    assert results["compute"]["rotation_pretrain"]["pretrain"]["runs"] == 1  # once per seed
    # a summary of fold 1 alone (as a later sitting publishes it): its own runs' cost and its seed's
    # pre-training, not fold 0's, though the folder's log holds both
    assert run_pipeline([*args, "--external-test", f"site={external}", "--only-folds", "1", "--no-retrain"]) == 0
    capsys.readouterr()
    alone = json.loads((first / "results.json").read_text())
    assert {r["run"] for r in alone["compute_runs"]} == {"0", "0/fold1"}
    assert alone["compute"]["baseline"]["train"]["runs"] == 1
    assert alone["compute"]["rotation_pretrain"]["pretrain"]["runs"] == 1
    assert run_pipeline([*args, "--external-test", f"site={external}", "--no-retrain"]) == 0  # both folds again
    capsys.readouterr()
    report = (first / "report.md").read_text()
    assert "site dice (positive)" in report and "Unlabelled pool" in report and "4 labelled training images" in report

    second = tmp_path / "more"  # another labelled size, same store: nothing pre-trains again
    assert run_pipeline(_args(tiny_siim, second, store, pool, "--labelled-fraction", "0.5")) == 0
    log = capsys.readouterr().out
    assert "[seed 0]   rotation_pretrain: reused" in log
    assert os.stat(pretrained).st_mtime_ns == stamp
    assert not any("-pretrain.log" in p.name for p in (second / "logs").iterdir())
