"""The control of every joint result: a joint bundle with all lambda 0 trains exactly like the baseline.

Same seed, same data order, same augmentations, same batch-norm statistics: the final weights (every tensor
of the U-Net's state, buffers included) are bit-identical on the CPU, while the auxiliary pass still runs
(its unweighted loss is recorded). Each case takes one way the auxiliary stream could leak into the
segmentation training:

* defaults: the task heads' initialisation must not move torch's process-wide stream, from which the
  labelled DataLoader (built after them) seeds its augmentations;
* ``pos_sample_rate off``: the labelled loader then shuffles from torch's process-wide stream, which the
  auxiliary loader must not draw from (it has its own generator);
* dropout in the U-Net: the auxiliary pass's random layers must draw from the pretext stream.

Batch norm: the auxiliary pass must neither update the running statistics nor count its batches.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.conftest import copy_bundle, read_json, run_bundle

EPOCHS = 2
CASES = {
    "defaults": ("rotation_joint", []),
    "labelled_loader_shuffles": ("genesis_joint", ["--pos_sample_rate", "off"]),
    "dropout": ("contrastive_joint", ["--network_def#dropout", "0.2"]),
}


def _overrides(tiny_siim: Path, *extra: str) -> list[str]:
    return [
        "--dataset_dir", str(tiny_siim), "--image_size", "32", "--batch_size", "4", "--num_workers", "0",
        "--epochs", str(EPOCHS), "--labelled_fraction", "0.5", *extra,
    ]  # fmt: skip


def _train(name: str, root: Path, tiny_siim: Path, *extra: str) -> Path:
    bundle = copy_bundle(name, root / name)
    run_bundle(
        [bundle / "configs" / "train.json"], "--bundle_root", str(bundle), *_overrides(tiny_siim, *extra), cwd=root
    )
    return bundle


def _state(bundle: Path) -> dict[str, torch.Tensor]:
    return torch.load(bundle / "models" / f"checkpoint_epoch={EPOCHS}.pt", map_location="cpu", weights_only=True)[
        "model"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_joint_with_lambda_zero_is_the_baseline(case: str, tiny_siim: Path, tmp_path: Path) -> None:
    name, extra = CASES[case]
    task = name.removesuffix("_joint")
    baseline = _train("baseline", tmp_path / "baseline", tiny_siim, *extra)
    joint = _train(name, tmp_path / "joint", tiny_siim, *extra, "--aux_weights", f"{{'{task}': 0.0}}")

    ref, got = _state(baseline), _state(joint)
    assert set(ref) == set(got)
    differ = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert not differ, f"{len(differ)} of {len(ref)} tensors differ from the baseline's, e.g. {differ[:3]}"
    best = [torch.load(b / "models" / "model.pt", weights_only=True) for b in (baseline, joint)]
    assert all(torch.equal(best[0][k], best[1][k]) for k in best[0])

    ref_history = read_json(baseline / "models" / "metrics.json")["history"]
    history = read_json(joint / "models" / "metrics.json")["history"]
    assert len(history) == len(ref_history) == EPOCHS
    for ours, theirs in zip(history, ref_history, strict=True):
        assert {k: ours[k] for k in theirs} == theirs  # validation metrics and the training loss alike
        # the auxiliary pass ran (its unweighted loss was computed) and weighed nothing
        assert math.isfinite(ours[f"train_aux_loss_{task}"]) and ours[f"train_aux_loss_{task}"] > 0
        assert ours[f"train_aux_weight_{task}"] == 0.0 and ours["train_aux_loss"] == 0.0
