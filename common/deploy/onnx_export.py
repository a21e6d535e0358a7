"""``models/model.onnx`` from a bundle's ``models/model.pt``, checked against PyTorch on images.

``export_onnx(bundle)`` builds ``network_def`` of ``configs/inference.json`` with the weights of
``models/model.pt`` through MONAI's ``monai.bundle.onnx_export`` (the ONNX twin of the ``ckpt_export``
that makes ``model.ts``), input ``image`` and output ``pred`` with dynamic batch, height and width. It then
runs the bundle's own preprocessing and post-processing on images with the PyTorch network and with the
ONNX model in onnxruntime (``OnnxNetwork``, what ``configs/inference_onnx.json`` runs) and writes
``models/model.onnx`` only when the sigmoid probabilities agree within ``TOLERANCE`` and every
post-processed mask is identical; otherwise ``OnnxParityError`` (one line: the file and what differs) and
no model.onnx. The figures go to ``models/model.onnx.json`` (with the sha256 of both files) and
``summary_line``.

    python -m common.deploy.onnx_export <bundle folder> [--images <folder>]

writes both files into the bundle folder (this module is vendored into exported zips, so it works in an
unpacked bundle too); ``scripts/export_bundle.py --onnx`` puts them into the zip.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from common.deploy.onnx_runtime import OnnxNetwork, record_path
from common.deploy.zoo import export_args, load_weights
from common.utils.io import atomic_path, atomic_write_json, file_digest

# opset 17: the TorchScript-based exporter covers every op of this network (Conv, ConvTranspose, BatchNorm,
# PReLU, Concat) in it, onnxruntime 1.32 runs it, and so do much older onnxruntime releases (older servers).
OPSET = 17
# float32 convolutions in oneDNN (PyTorch) and MLAS (onnxruntime) sum in different orders: measured here
# the probabilities differ by about 1e-7. 1e-4 is far above that rounding noise yet far below any change
# that matters (a mask pixel can only flip where its probability is within the difference of the threshold,
# and the post-processed masks are compared exactly as well).
TOLERANCE = 1e-4
INPUT, OUTPUT = "image", "pred"  # the metadata's network_data_format keys
DYNAMIC_AXES = {name: {0: "batch", 2: "height", 3: "width"} for name in (INPUT, OUTPUT)}
MAX_IMAGES = 8


class OnnxParityError(ValueError):
    """The ONNX model's output differs from PyTorch's beyond the tolerance, or a mask differs."""


def bundle_parser(bundle: Path, **overrides: Any) -> Any:
    """``configs/inference.json`` (+ metadata) of ``bundle`` as a MONAI ``ConfigParser`` rooted there."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    for key, value in {"bundle_root": str(bundle), **overrides}.items():
        parser[key] = value
    return parser


def torch_network(bundle: Path) -> torch.nn.Module:
    """``network_def`` of the bundle's inference.json with ``models/model.pt`` loaded, in eval mode."""
    network = bundle_parser(bundle).get_parsed_content("network_def")
    network.load_state_dict(load_weights(bundle / "models" / "model.pt"))
    return network.eval()


def write_onnx(bundle: Path, target: Path) -> Path:
    """``target`` from ``network_def`` + ``models/model.pt`` by MONAI's ``onnx_export`` (no check)."""
    from monai.bundle import onnx_export

    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    # MONAI's onnx_export wraps convert_to_onnx; use_trace with dynamo=False picks torch's TorchScript-based
    # exporter, because the dynamo exporter (torch 2.13's default) needs onnxscript, not a dependency here.
    # That exporter announces its deprecation: known, so not repeated to the user.
    converter = {
        "input_names": [INPUT],
        "output_names": [OUTPUT],
        "opset_version": OPSET,
        "dynamic_axes": DYNAMIC_AXES,
        "dynamo": False,
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*legacy TorchScript-based ONNX export", DeprecationWarning)
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        onnx_export(filepath=str(target), converter_kwargs=converter, **export_args(bundle, meta))
    return target


def demo_images(folder: Path, n: int = 4) -> Path:
    """``n`` seeded synthetic chest X-ray DICOMs (the demo generator's) in ``folder``; returns their folder."""
    from common.data.demo import make_demo_siim

    return make_demo_siim(folder, n_images=n, size=256, seed=0) / "dicom-images-train"


def _probabilities_and_mask(
    parser: Any, network: torch.nn.Module, image: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One image through the bundle's ``inferer`` and ``network``: the sigmoid probabilities and the mask
    after the bundle's ``postprocessing``."""
    logits = parser.get_parsed_content("inferer")(image[None], network)[0]
    return torch.sigmoid(logits), parser.get_parsed_content("postprocessing")({"image": image, "pred": logits})["pred"]


def parity(bundle: Path, onnx_file: Path, images: Path, max_images: int = MAX_IMAGES) -> dict[str, Any]:
    """PyTorch against onnxruntime on up to ``max_images`` images of ``images`` through the bundle's own
    preprocessing, inferer and post-processing (``inference.json``), plus one batch of two at another, non-square
    size (the dynamic axes); the figures as a dict."""
    from common.data.imaging import list_images

    parser = bundle_parser(bundle)
    pre = parser.get_parsed_content("preprocessing")
    network, onnx_net = torch_network(bundle), OnnxNetwork(onnx_file)
    items = list_images(images)[:max_images]
    diffs, same, nonempty, agree, pixels, inputs = [], 0, 0, 0, 0, []
    with torch.no_grad():
        for item in items:
            image = pre(dict(item))["image"]
            inputs.append(image.as_tensor())
            p_torch, m_torch = _probabilities_and_mask(parser, network, image)
            p_onnx, m_onnx = _probabilities_and_mask(parser, onnx_net, image)
            diffs.append(float((p_torch - p_onnx).abs().max()))
            same += bool(torch.equal(m_torch, m_onnx))
            nonempty += bool(m_torch.any())
            agree, pixels = agree + int((m_torch == m_onnx).sum()), pixels + m_torch.numel()
        size = inputs[0].shape[-1]
        other = torch.nn.functional.interpolate(torch.stack((inputs * 2)[:2]), size=(size + 32, size))
        other_diff = float((torch.sigmoid(network(other)) - torch.sigmoid(onnx_net(other))).abs().max())
    return {
        "images": [Path(i["image"]).name for i in items],
        "image_size": int(size),
        "max_abs_diff_probability": max(diffs),
        "masks_identical": same,
        "masks_compared": len(items),
        "masks_nonempty": nonempty,
        "mask_pixel_agreement": agree / pixels,
        "other_shape": {"shape": list(other.shape), "max_abs_diff_probability": other_diff},
    }


def check_parity(onnx_file: Path, figures: dict[str, Any], tolerance: float) -> None:
    """Raise ``OnnxParityError`` (one line naming ``onnx_file``) unless the figures are within tolerance."""
    worst = max(figures["max_abs_diff_probability"], figures["other_shape"]["max_abs_diff_probability"])
    problems = []
    if not worst <= tolerance:
        problems.append(f"max |p_torch - p_onnx| {worst:.2e} > tolerance {tolerance:g}")
    if figures["masks_identical"] != figures["masks_compared"]:
        problems.append(f"masks differ on {figures['masks_compared'] - figures['masks_identical']} image(s)")
    if problems:
        raise OnnxParityError(f"{onnx_file}: ONNX output differs from PyTorch: {'; '.join(problems)}")


def export_onnx(
    bundle: str | Path, images: str | Path | None = None, tolerance: float = TOLERANCE, max_images: int = MAX_IMAGES
) -> dict[str, Any]:
    """Write ``models/model.onnx`` and ``models/model.onnx.json`` into ``bundle`` when parity holds; return the
    record. ``images``: a folder (or file) of images for the check; default: four synthetic demo images."""
    import onnx
    import onnxruntime

    bundle = Path(bundle).resolve()
    target = bundle / "models" / "model.onnx"
    if not (bundle / "models" / "model.pt").is_file():
        raise FileNotFoundError(f"{bundle / 'models' / 'model.pt'} is missing: train the bundle before exporting it")
    with tempfile.TemporaryDirectory() as tmp, atomic_path(target) as staged:
        folder = Path(images) if images is not None else demo_images(Path(tmp))
        write_onnx(bundle, staged)
        figures = parity(bundle, staged, folder, max_images)
        figures["image_source"] = folder.name if images is not None else "synthetic demo images (common.data.demo)"
        figures["tolerance"] = tolerance
        check_parity(target, figures, tolerance)
        digest = file_digest(staged)
    record = {
        "onnx_file": target.name,
        "model_onnx_sha256": digest,
        "exported_from": "model.pt",
        "model_pt_sha256": file_digest(bundle / "models" / "model.pt"),
        "opset": OPSET,
        "input": INPUT,
        "output": OUTPUT,
        "dynamic_axes": DYNAMIC_AXES,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "parity": figures,
    }
    atomic_write_json(record_path(target), record)
    return record


def summary_line(record: dict[str, Any]) -> str:
    """The parity figures of a ``model.onnx.json`` record in one line."""
    p, other = record["parity"], record["parity"]["other_shape"]
    batch, _, height, width = other["shape"]
    masks = f"{p['masks_identical']}/{p['masks_compared']} ({p['masks_nonempty']} non-empty)"
    return (
        f"{record['onnx_file']}: opset {record['opset']}, {p['masks_compared']} image(s) at {p['image_size']} px "
        f"({p['image_source']}): max |p_torch - p_onnx| {p['max_abs_diff_probability']:.1e} (batch {batch} at "
        f"{height}x{width}: {other['max_abs_diff_probability']:.1e}; tolerance {p['tolerance']:g}), "
        f"masks identical {masks}, pixel agreement {p['mask_pixel_agreement']:.4%}"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m common.deploy.onnx_export <bundle>``: write models/model.onnx in place; print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, help="bundle folder (configs/inference.json, models/model.pt)")
    parser.add_argument("--images", type=Path, help="images for the parity check (default: 4 synthetic demo images)")
    args = parser.parse_args(argv)
    try:
        record = export_onnx(args.bundle, args.images)
    except (FileNotFoundError, ValueError) as e:  # a missing model.pt or images, a parity failure: one line
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    print(summary_line(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
