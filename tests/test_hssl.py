"""The HSSL auxiliary task: NT-Xent by hand, the pretext, head shapes, labels, learnability."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNet

from common.data.aggregate import hssl_aux_data
from common.data.multidomain import GROUPS
from common.ssl import TASKS, create_task, create_tasks
from common.ssl.hssl import HSSLTask
from common.training.engines import AuxiliaryObjective, _labels
from common.training.networks import MultiTaskUNet


def _unet() -> UNet:
    return UNet(2, 1, 1, (8, 16, 32), (2, 2), num_res_units=1, norm="batch")


def _labels_of(domains: list[int], groups: list[int]) -> dict[str, torch.Tensor]:
    return {"domain_index": torch.tensor(domains), "group_index": torch.tensor(groups)}


def _nt_xent_by_hand(a: list[list[float]], b: list[list[float]], tau: float) -> float:
    """SimCLR's NT-Xent written out: cosine similarities, positives i <-> i + N, mean over the 2N anchors."""
    z = [*a, *b]
    n2 = len(z)

    def cos(u: list[float], v: list[float]) -> float:
        dot = sum(x * y for x, y in zip(u, v, strict=True))
        return dot / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v)))

    total = 0.0
    for i in range(n2):
        positive = (i + len(a)) % n2
        denominator = sum(math.exp(cos(z[i], z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(math.exp(cos(z[i], z[positive]) / tau) / denominator)
    return total / n2


def test_registered_as_the_sixth_task() -> None:
    assert "hssl" in TASKS and TASKS["hssl"].feature == "both"
    assert TASKS["hssl"].label_keys == ("domain_index", "group_index")


def test_nt_xent_term_matches_a_hand_computed_case() -> None:
    a = [[1.0, 0.0, 0.5], [0.2, 1.0, -0.3]]
    b = [[0.9, 0.1, 0.4], [-0.5, 0.8, 0.1]]
    task = create_task("hssl", n_domains=2, temperature=0.5)
    got = task.nt_xent(torch.tensor(a), torch.tensor(b)).item()
    assert got == pytest.approx(_nt_xent_by_hand(a, b, 0.5), rel=1e-5)


def test_pretext_two_views_painted_targets_clean_labels_paired() -> None:
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    task = create_task("hssl", n_domains=3)
    p = task.pretext(images, torch.Generator().manual_seed(1), labels=_labels_of([0, 2, 1], [0, 1, 4]))
    assert p.input.shape == (6, 1, 32, 32) and p.target.shape == (6, 1, 32, 32)
    assert p.mask.any() and not p.mask.all()
    outside = ~p.mask.expand_as(p.input)
    torch.testing.assert_close(p.input[outside], p.target[outside])  # only the painted box differs
    assert p.labels["domain"].tolist() == [0, 2, 1, 0, 2, 1]  # both views keep their image's labels
    assert p.labels["group"].tolist() == [0, 1, 4, 0, 1, 4]
    with pytest.raises(ValueError, match="domain_index and group_index"):
        task.pretext(images, torch.Generator())


def test_head_output_shapes() -> None:
    model = MultiTaskUNet(_unet(), create_tasks(["hssl"], {"hssl": {"n_domains": 4, "projection": 16}}))
    out = model(torch.rand(6, 1, 32, 32), task="hssl")
    assert out["projection"].shape == (6, 16)
    assert out["domain"].shape == (6, 4) and out["group"].shape == (6, 5)
    assert out["restored"].shape == (6, 1, 32, 32)


def test_term_weights_are_checked_and_used() -> None:
    with pytest.raises(KeyError, match="unknown hssl terms"):
        HSSLTask(n_domains=2, term_weights={"nope": 1.0})
    with pytest.raises(ValueError, match="at least one domain"):
        HSSLTask(n_domains=0)
    torch.manual_seed(0)
    model = MultiTaskUNet(_unet(), create_tasks(["hssl"], {"hssl": {"n_domains": 2}})).eval()
    images, labels = torch.rand(4, 1, 32, 32), _labels_of([0, 1, 0, 1], [0, 2, 0, 2])
    task = model.tasks["hssl"]
    pretext = task.pretext(images, torch.Generator().manual_seed(0), labels=labels)
    with torch.no_grad():
        prediction = model(pretext.input, task="hssl")
        total = task.loss(prediction, pretext)
    assert total.item() == pytest.approx(sum(v.item() for v in task.last_terms.values()), rel=1e-5)
    task.term_weights = {"contrastive": 0.0, "domain": 2.0, "group": 0.0, "dense": 0.0}
    with torch.no_grad():
        assert task.loss(prediction, pretext).item() == pytest.approx(2 * task.last_terms["domain"].item(), rel=1e-5)


def test_an_auxiliary_batch_without_labels_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="lacks \\['domain_index'\\]"):
        _labels({"image": torch.zeros(2, 1, 8, 8), "group_index": [0, 1]}, ("domain_index",), torch.device("cpu"))


def test_a_few_iterations_lower_the_hssl_loss_on_tiny_multi_domain_data() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    # three "domains" that look different: smooth blobs, fine noise, stripes
    smooth = torch.nn.functional.interpolate(torch.rand(4, 1, 4, 4, generator=g), size=(32, 32), mode="bicubic")
    noise = torch.rand(4, 1, 32, 32, generator=g)
    stripes = (torch.sin(torch.arange(32.0) * (0.5 + torch.rand(4, 1, 1, 1, generator=g))) + 1) / 2
    images = torch.cat([smooth.clamp(0, 1), noise, stripes.expand(4, 1, 32, 32)])
    labels = _labels_of([0] * 4 + [1] * 4 + [2] * 4, [0] * 4 + [1] * 4 + [2] * 4)
    model = MultiTaskUNet(_unet(), create_tasks(["hssl"], {"hssl": {"n_domains": 3}}))
    objective = AuxiliaryObjective(model, {"hssl": 1.0}, seed=0, freeze_bn_stats=False)
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)
    losses, terms = [], []
    for _ in range(30):
        objective._generator = None  # the same pretext every step: a fixed problem to fit
        total, per_task = objective(model, images, labels)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
        terms.append({k: v.item() for k, v in per_task.items()})
    assert losses[-1] < 0.5 * losses[0]
    assert terms[-1]["hssl/domain"] < 0.5 * terms[0]["hssl/domain"]
    assert terms[-1]["hssl/dense"] < terms[0]["hssl/dense"]


def test_aggregate_adds_the_target_images_and_indexes_the_domains_used(tiny_multidomain: Path) -> None:
    source = json.loads(tiny_multidomain.read_text())
    target = {
        "training_labelled": [{"id": "a", "image": "/x/a.dcm", "rle": ["-1"]}],
        "training_unlabelled": [{"id": "b", "image": "/x/b.dcm"}],
        "validation": [{"id": "c", "image": "/x/c.dcm"}],
    }
    full = hssl_aux_data(str(tiny_multidomain), target)
    assert full["domains"] == [*source["domains"], "target"]
    assert full["counts"]["domain"]["target"] == 2  # training images only, labelled and not; no masks
    targets = [i for i in full["items"] if i["domain"] == "target"]
    assert {i["image"] for i in targets} == {"/x/a.dcm", "/x/b.dcm"} and all("rle" not in i for i in targets)
    assert all(i["group_index"] == GROUPS.index(i["group"]) for i in full["items"])
    assert all(i["domain_index"] == full["domains"].index(i["domain"]) for i in full["items"])

    one = source["domains"][1]
    single = hssl_aux_data(str(tiny_multidomain), target, domains=[one])
    assert single["domains"] == [one, "target"]
    assert {i["domain_index"] for i in single["items"]} == {0, 1}  # contiguous classes for the subset
    alone = hssl_aux_data("", target)
    assert alone["domains"] == ["target"] and len(alone["items"]) == 2
    with pytest.raises(KeyError, match="not in"):
        hssl_aux_data(str(tiny_multidomain), target, domains=["nope"])
    with pytest.raises(FileNotFoundError, match=r"prepare_multidomain\.py"):
        hssl_aux_data(str(tiny_multidomain.parent / "missing.json"), target)
    with pytest.raises(ValueError, match="empty"):
        hssl_aux_data("", target, include_target=False)


def test_benchmark_pretext_timer_passes_labels_through() -> None:
    from pipeline.benchmark import timed_pretexts

    model = MultiTaskUNet(_unet(), create_tasks(["hssl", "rotation"], {"hssl": {"n_domains": 2}}))
    clock = {"pretext": 0.0}
    timed_pretexts(model, clock)
    objective = AuxiliaryObjective(model, {"hssl": 1.0, "rotation": 0.1}, seed=0)
    total, _ = objective(model, torch.rand(2, 1, 32, 32), _labels_of([0, 1], [0, 4]))
    assert torch.isfinite(total) and clock["pretext"] > 0
