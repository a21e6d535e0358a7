"""Mixed precision and channels-last (``common.training.precision``, ``common.training.base``): the settings
resolve per device, every engine (baseline, joint, pre-training, distillation, Mean Teacher) runs its forward
pass under the same autocast and memory layout through the bundles' own configs, fp32 is MONAI's
SupervisedTrainer step for step, and bad settings stop with one line naming the option."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.engines import SupervisedTrainer
from monai.networks.nets import UNet

from common.training import precision as precision_module
from common.training.base import Evaluator, Trainer, float32
from common.training.precision import FP32, Precision, autocast_off, resolve_precision
from common.utils.settings import SettingError
from pipeline.benchmark import _selection_of_random_teachers
from tests.conftest import REPO, copy_bundle, try_bundle

pytestmark = pytest.mark.filterwarnings("ignore:.*parsing config_file.*:UserWarning")


def test_auto_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("cpu") == Precision("cpu", torch.bfloat16, True)
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("cpu") == Precision("cpu", None, True)  # emulated bf16 would be slower than fp32
    assert resolve_precision("cpu", amp=True) == Precision("cpu", torch.bfloat16, True)  # forced
    assert resolve_precision("cpu", "false", "auto", "False") == FP32  # the CLI's strings
    assert resolve_precision("cpu", True, "float16", False) == Precision("cpu", torch.float16, False)


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
stepping\t: 8
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile

processor\t: 1
model name\t: another core
flags\t\t: fpu
"""


def test_the_processor_names_its_generation_and_kernel_instruction_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """What metrics.json records beside precision and threads: two CPU generations' bf16 runs differ."""
    monkeypatch.setattr(precision_module, "_cpuinfo", lambda: CPUINFO)
    assert precision_module.processor("cpu") == {
        "processor": "Intel(R) Xeon(R) Platinum 8480+ (family 6, model 143, stepping 8)",  # the first core's
        "isa": "avx2 avx512f avx512_bf16 amx_tile amx_bf16",  # only the kernel-deciding flags, in a fixed order
    }
    assert precision_module.cpu_has_native_bf16()
    monkeypatch.setattr(precision_module, "_cpuinfo", lambda: "")  # not Linux: what the platform says
    monkeypatch.setattr(precision_module.platform, "processor", lambda: "arm")
    assert precision_module.processor("cpu") == {"processor": "arm", "isa": ""}
    assert not precision_module.cpu_has_native_bf16()


def test_only_cuda_fp16_scales_gradients() -> None:
    assert Precision("cpu", torch.bfloat16).grad_scaler() is None
    assert Precision("cpu", torch.float16).grad_scaler() is None
    assert FP32.grad_scaler() is None
    if torch.cuda.is_available():
        assert Precision("cuda", torch.float16).grad_scaler() is not None
        assert Precision("cuda", torch.bfloat16).grad_scaler() is None


@pytest.mark.parametrize(
    ("name", "value"), [("amp", "maybe"), ("amp", 2), ("amp_dtype", "float64"), ("channels_last", "nhwc")]
)
def test_bad_settings_name_the_option(name: str, value: Any) -> None:
    with pytest.raises(SettingError, match=f"^--{name} "):
        resolve_precision("cpu", **{name: value})


def test_bundle_stops_on_a_bad_precision_setting(tiny_siim: Path, tmp_path: Path) -> None:
    bundle = copy_bundle("baseline", tmp_path / "baseline")
    proc = try_bundle(
        [bundle / "configs" / "train.json"],
        *("--bundle_root", str(bundle), "--dataset_dir", str(tiny_siim), "--amp_dtype", "float64"),
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert last.startswith("error: --amp_dtype 'float64': must be one of auto, bfloat16, float16")


def test_autocast_off_lifts_autocast_on_every_device() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with autocast_off():
            assert not torch.is_autocast_enabled("cpu")
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")


def test_float32_converts_nested_outputs() -> None:
    out = float32({"a": torch.ones(1, dtype=torch.bfloat16), "b": (torch.ones(1, dtype=torch.float16), 3)})
    assert out["a"].dtype == torch.float32 and out["b"][0].dtype == torch.float32 and out["b"][1] == 3
    long = torch.ones(1, dtype=torch.long)
    assert float32(long) is long


def _tiny_unet() -> torch.nn.Module:
    return UNet(2, 1, 1, channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="batch")


def _batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    images = torch.rand((n * 2, 1, 32, 32), generator=g)
    labels = (images > 0.7).float()  # learnable in a few steps
    return [{"image": images[i : i + 2], "label": labels[i : i + 2]} for i in range(0, n * 2, 2)]


def _trained(cls: type, epochs: int = 2, **kwargs: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    net = _tiny_unet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    loss = torch.nn.BCEWithLogitsLoss()
    trainer = cls(device="cpu", max_epochs=epochs, train_data_loader=_batches(), network=net, optimizer=optimizer,
                  loss_function=loss, **kwargs)  # fmt: skip
    trainer.run()
    return net


def test_fp32_is_monai_supervised_trainer_step_for_step() -> None:
    """Same seed, data, network: our Trainer in fp32 and MONAI's SupervisedTrainer end with identical weights."""
    ours, monai = _trained(Trainer, precision=FP32), _trained(SupervisedTrainer)
    for (name, a), b in zip(ours.state_dict().items(), monai.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_gradient_accumulation_as_monai_does_it() -> None:
    ours = _trained(Trainer, precision=FP32, accumulation_steps=2)
    monai = _trained(SupervisedTrainer, accumulation_steps=2)
    for a, b in zip(ours.state_dict().values(), monai.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_bf16_trains_close_to_fp32_and_keeps_fp32_weights() -> None:
    bf16 = _trained(Trainer, epochs=10, precision=Precision("cpu", torch.bfloat16, True))
    fp32 = _trained(Trainer, epochs=10, precision=FP32)
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    conv = next(m for m in bf16.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert any(not torch.equal(a, b) for a, b in zip(bf16.parameters(), fp32.parameters(), strict=True))
    batch = _batches()[0]
    with torch.no_grad():
        losses = [torch.nn.functional.binary_cross_entropy_with_logits(n.eval()(batch["image"]), batch["label"])
                  for n in (bf16, fp32, _tiny_unet().eval())]  # fmt: skip
    # both learnt (far below the untrained network's loss) and to within a few percent of each other
    assert losses[0] < 0.8 * losses[2] and abs(losses[0] - losses[1]) < 0.05 * losses[1]


def test_evaluator_hands_fp32_predictions_to_postprocessing() -> None:
    seen = []
    net = _tiny_unet()
    evaluator = Evaluator(device="cpu", val_data_loader=_batches(1), network=net,
                          precision=Precision("cpu", torch.bfloat16, True),
                          postprocessing=lambda d: seen.append(d["pred"].dtype) or d)  # fmt: skip
    evaluator.run()
    assert seen and all(dtype == torch.float32 for dtype in seen)


class ForwardProbe:
    """Records, for every forward pass of a network, whether CPU autocast was on and the input's layout."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.calls: list[tuple[bool, bool]] = []
        network.register_forward_pre_hook(self)

    def __call__(self, module: torch.nn.Module, args: tuple) -> None:
        x = args[0]
        self.calls.append((torch.is_autocast_enabled("cpu"), x.is_contiguous(memory_format=torch.channels_last)))


#: bundle -> (config files, trainer id): one of each engine
ENGINES = {
    "baseline": (["train.json"], "train#trainer"),
    "rotation_joint": (["train.json"], "train#trainer"),
    "genesis_pretrain": (["train.json"], "pretrain#trainer"),
    "distill": (["train.json"], "train#trainer"),
    "mean_teacher": (["train.json"], "train#trainer"),
}


@pytest.mark.parametrize("bundle", list(ENGINES))
def test_every_engine_runs_under_the_bundle_precision(bundle: str, tiny_siim: Path, tmp_path: Path) -> None:
    configs, trainer_id = ENGINES[bundle]
    root = copy_bundle(bundle, tmp_path / bundle)
    overrides: dict[str, Any] = {"dataset_dir": str(tiny_siim), "image_size": 32, "batch_size": 4,
                                 "num_workers": 0, "epochs": 1, "pretrain_epochs": 1,
                                 "amp": True, "amp_dtype": "bfloat16", "channels_last": True}  # fmt: skip
    cfg = json.loads((REPO / "bundles" / bundle / "configs" / "train.json").read_text())
    overrides = {k: v for k, v in overrides.items() if k in cfg}
    if "teachers_file" in cfg:
        # online: the teachers run in the step, under the same autocast (the cache is filled by the run steps)
        overrides.update(teachers_file=str(_selection_of_random_teachers(tmp_path, 2)), soft_targets="online")
    workflow = ConfigWorkflow([str(root / "configs" / c) for c in configs], workflow_type="train",
                              bundle_root=str(root), **overrides)  # fmt: skip
    workflow.initialize()
    for i, step in enumerate(workflow.parser["run"]):  # the student's set-up steps (teachers), not its training
        if "teachers" in step or "soft_targets" in step:
            workflow.parser.get_parsed_content(f"run#{i}")
    trainer = workflow.parser.get_parsed_content(trainer_id)
    assert trainer.precision == Precision("cpu", torch.bfloat16, True)
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert evaluator.precision == trainer.precision or trainer_id.startswith("pretrain")
    network = getattr(trainer.network, "module", trainer.network)
    probe = ForwardProbe(network)
    trainer.run()
    assert probe.calls and all(autocast and layout for autocast, layout in probe.calls)
    losses = [v for k, v in trainer.state.metrics.items() if "loss" in k]
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)
