"""Auxiliary tasks: pretexts correct by construction, head shapes, learnability, the MONAI transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from common.data.demo import synthesize_case
from common.ssl import TASKS, create_task
from common.ssl.jigsaw import max_hamming_permutations
from common.ssl.transforms import RandPretextd
from common.training.networks import MultiTaskUNet

FIVE = ["contrastive", "genesis", "inpainting", "jigsaw", "rotation"]


def _images(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Distinct smooth random images in [0, 1] (no two alike, no symmetric ones)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry_has_the_five_tasks() -> None:
    assert set(FIVE) <= set(TASKS)
    with pytest.raises(KeyError, match="unknown auxiliary task 'nope'"):
        create_task("nope")


def test_rotation_label_is_the_rotation_applied() -> None:
    x = _images(32)
    p = create_task("rotation").pretext(x, _gen())
    assert set(p.target.tolist()) == {0, 1, 2, 3}
    for i, k in enumerate(p.target.tolist()):
        torch.testing.assert_close(p.input[i], torch.rot90(x[i], k, dims=(-2, -1)))


def test_jigsaw_permutations_fixed_seeded_and_well_separated() -> None:
    perms = max_hamming_permutations(9, 24, 0)
    assert perms.shape == (24, 9) and (np.sort(perms, 1) == np.arange(9)).all()
    np.testing.assert_array_equal(perms, max_hamming_permutations.__wrapped__(9, 24, 0))  # recomputed: same set
    assert (max_hamming_permutations(9, 24, 1) != perms).any()
    dist = (perms[:, None] != perms[None]).sum(-1)
    np.fill_diagonal(dist, 9)
    assert dist.min() >= 7  # every pair of puzzles differs in at least 7 of 9 tiles
    assert len({tuple(p) for p in perms}) == 24


@pytest.mark.parametrize("size", [33, 32])
def test_jigsaw_unpermuting_restores_the_image(size: int) -> None:
    task = create_task("jigsaw")
    x = _images(5, size)
    p = task.pretext(x, _gen())
    assert not torch.equal(p.input, x) or (p.target == 0).all()
    torch.testing.assert_close(task.unpermute(p.input, p.target), x, rtol=0, atol=0)
    t = size // 3
    first_tile = task.permutations[p.target[0]][0].item()  # output tile 0 shows this input tile
    r, c = divmod(first_tile, 3)
    torch.testing.assert_close(p.input[0, :, :t, :t], x[0, :, r * t : (r + 1) * t, c * t : (c + 1) * t])


@pytest.mark.parametrize("name", ["inpainting", "genesis"])
def test_restoration_targets_are_the_original_and_the_region_is_known(name: str) -> None:
    x = _images(6)
    p = create_task(name).pretext(x, _gen())
    assert torch.equal(p.target, x)
    mask = p.mask.expand_as(x)
    assert mask.any()
    torch.testing.assert_close(p.input[~mask], x[~mask], rtol=0, atol=0)  # untouched outside the region
    assert not torch.allclose(p.input[mask], x[mask])


def test_contrastive_views_come_from_the_same_image() -> None:
    """Image i has horizontal stripes of 2**(i+1) cycles: both of its views keep about that frequency
    (a crop only lowers it, by at most 1/sqrt(0.5)); flips and small rotations do not change it."""
    size, freqs = 64, [2, 4, 8, 16]
    rows = torch.arange(size, dtype=torch.float32)[:, None].expand(size, size)
    x = torch.stack([0.5 + 0.4 * torch.sin(2 * torch.pi * f * rows / size) for f in freqs])[:, None]
    p = create_task("contrastive").pretext(x, _gen())
    assert p.input.shape == (8, 1, size, size)
    profile = p.input[:, 0, :, size // 4 : 3 * size // 4].mean(-1)  # central columns, along the rows
    spectrum = torch.fft.rfft(profile - profile.mean(-1, keepdim=True)).abs()
    dominant = spectrum.argmax(-1)
    for i, f in enumerate(freqs):
        for view in (i, i + len(freqs)):  # view 1 and view 2 of image i
            assert 0.6 * f <= dominant[view] <= 1.1 * f, (f, dominant.tolist())


def _tiny_unet() -> UNet:
    return UNet(2, 1, 1, (8, 16, 32), (2, 2), num_res_units=1, norm="batch")


@pytest.mark.parametrize("name", FIVE)
def test_head_output_shapes(name: str) -> None:
    task = create_task(name)
    model = MultiTaskUNet(_tiny_unet(), {name: task})
    x = _images(4, 32)
    out = model(task.pretext(x, _gen()).input, task=name)
    expected = {
        "rotation": (4, 4),
        "jigsaw": (4, 24),
        "contrastive": (8, 128),
        "inpainting": (4, 1, 32, 32),
        "genesis": (4, 1, 32, 32),
    }[name]
    assert tuple(out.shape) == expected


def _chests(n: int, size: int) -> torch.Tensor:
    """Synthetic chest radiographs: unlike random blobs they have an up and a down, as real films do."""
    cases = [synthesize_case(size, np.random.default_rng([5, i]), positive=i % 3 == 0) for i in range(n)]
    return torch.stack([torch.from_numpy(c.image / 255.0).float()[None] for c in cases])


@pytest.mark.parametrize("name", FIVE)
def test_a_few_iterations_lower_the_aux_loss(name: str) -> None:
    torch.manual_seed(0)
    task = create_task(name)
    model = MultiTaskUNet(_tiny_unet(), {name: task}).train()
    # instance discrimination needs instances that differ: the synthetic chests are near clones of each
    # other (measured: NT-Xent does not fall on them in 60 steps), distinct random images do
    images = _images(8, 48, seed=3) if name == "contrastive" else _chests(8, 48)
    fixed = task.pretext(images, _gen(7))  # the same pretext batch measured before and after

    def evaluate() -> float:
        with torch.no_grad():  # batch statistics, as in training
            return float(task.loss(model(fixed.input, task=name), fixed))

    before = evaluate()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = _gen(11)
    for _ in range(60):
        p = task.pretext(images, generator)
        optimizer.zero_grad()
        task.loss(model(p.input, task=name), p).backward()
        optimizer.step()
    assert evaluate() < 0.9 * before


def test_multitask_wrapper_exposes_features_without_copying() -> None:
    unet = _tiny_unet().eval()
    model = MultiTaskUNet(unet, {"rotation": create_task("rotation"), "genesis": create_task("genesis")})
    assert model.seg_net is unet
    captured = {}
    bottom = model.seg_net.model[1].submodule[1].submodule  # the innermost block of this 3-level U-Net
    bottom.register_forward_hook(lambda m, i, o: captured.setdefault("bottleneck", o))
    model.seg_net.model[2].register_forward_pre_hook(lambda m, i: captured.setdefault("decoder", i[0]))
    x = _images(2, 32)
    with torch.no_grad():
        seg = model(x)
        torch.testing.assert_close(seg, unet(x))
        torch.testing.assert_close(model.bottleneck(x), captured["bottleneck"])
        torch.testing.assert_close(model.decoder_features(x), captured["decoder"])
    assert set(model.seg_net.state_dict()) == set(_tiny_unet().state_dict())  # exportable as the plain U-Net


def test_monai_pretext_transform_is_seeded() -> None:
    image = _images(1)[0]
    a = RandPretextd("rotation").set_random_state(5)({"image": image})
    b = RandPretextd("rotation").set_random_state(5)({"image": image})
    assert torch.equal(a["image_aux_input"], b["image_aux_input"]) and a["image_aux_target"] == b["image_aux_target"]
    torch.testing.assert_close(a["image_aux_input"], torch.rot90(image, int(a["image_aux_target"]), dims=(-2, -1)))
    views = RandPretextd("contrastive").set_random_state(5)({"image": image})["image_aux_input"]
    assert views.shape == (2, 1, 32, 32)


def test_window_pretexts_change_whole_cells_batch_wide() -> None:
    """Local shuffle and patch swaps work on non-overlapping grid cells of every image at once: each image keeps
    its pixel values (only moved), the swap's mask marks exactly the pixels that changed, odd sizes work."""
    from common.ssl.genesis import local_pixel_shuffle
    from common.ssl.grid import from_grid_cells, grid_cells
    from common.ssl.inpainting import swap_patches

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 37, 41, generator=g)
    cells, offset = grid_cells(x, 5, g)
    assert torch.equal(from_grid_cells(x, cells, 5, offset), x)  # the inverse
    shuffled = local_pixel_shuffle(x, g, 32, 4)
    swapped, mask = swap_patches(x, g, 4, 0.12)
    for out in (shuffled, swapped):
        for i in range(3):
            assert torch.equal(out[i].flatten().sort().values, x[i].flatten().sort().values)
            assert not torch.equal(out[i], x[i])
    assert torch.equal(mask, (swapped != x).any(1, keepdim=True))
    assert mask.sum() == 3 * 8 * round(0.12 * 37) ** 2  # 4 pairs = 8 whole cells per image
