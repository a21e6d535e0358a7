"""Numerical precision and memory layout of training and inference, on CPU and CUDA: one policy for every engine.

MONAI's engines (1.6.1) know one kind of mixed precision: ``torch.autocast("cuda")`` with a
``torch.cuda.amp.GradScaler``; on a CPU they would warn and run in fp32. ``Precision`` says what an engine does
instead, for any device:

* ``dtype``: the autocast dtype (``None``: fp32 throughout). bf16 on CPUs that compute it natively
  (``avx512_bf16`` or AMX) and on CUDA devices that support it, fp16 on older CUDA devices; fp16 gets a
  ``GradScaler`` (bf16 has fp32's range: no scaling). Parameters, optimiser state and losses stay fp32.
* ``channels_last``: the network's weights and the batches in NHWC memory layout (oneDNN's and cuDNN's
  fast convolution path).

``resolve_precision`` turns the bundle settings ``amp``, ``amp_dtype`` and ``channels_last`` (each ``"auto"``, or
a choice) into a ``Precision`` for a device; ``"auto"`` is what ``scripts/benchmark.py --only precision``
measured fastest without a loss of validation Dice (README, "Speed"). ``common.training.base`` applies it.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

AUTO = "auto"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
#: the CPU flags of native bf16 arithmetic (AVX-512 BF16, AMX): without them bf16 autocast is emulated and slower
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
#: the CPU flags that decide which oneDNN kernels run, so how float sums round: two CPUs that differ here can
#: give other numbers for the same seed, code, precision and threads (bf16 above all)
KERNEL_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def _cpuinfo() -> str:
    """Linux's ``/proc/cpuinfo`` ("" where it is not readable)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where that is not readable)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str | None:
    """The CPU's model name with its family, model and stepping numbers (``/proc/cpuinfo``: a virtual
    machine's name is often generic, the numbers still tell generations apart), else ``platform.processor()``;
    None when neither says."""
    fields: dict[str, str] = {}
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        if not key.strip():
            break  # the first processor's block ends
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or None
    numbers = [f"{k.removeprefix('cpu ')} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields]
    return f"{name} ({', '.join(numbers)})" if name and numbers else name


def processor(device_type: str = "cpu") -> dict[str, str | None]:
    """The processor that computes on ``device_type``: its name and the instruction sets its kernels use
    (on a CPU the ``KERNEL_CPU_FLAGS`` it has, space-separated; on CUDA the compute capability ``sm_90``)."""
    if device_type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return {"processor": torch.cuda.get_device_name(), "isa": f"sm_{major}{minor}"}
    flags = cpu_flags()
    return {"processor": cpu_model(), "isa": " ".join(f for f in KERNEL_CPU_FLAGS if f in flags)}


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (then bf16 autocast speeds training up instead of slowing it)."""
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


@dataclass(frozen=True)
class Precision:
    """How an engine computes on ``device_type``: autocast ``dtype`` (None: fp32) and the memory layout."""

    device_type: str = "cpu"
    dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def enabled(self) -> bool:
        """True under mixed precision."""
        return self.dtype is not None

    @property
    def name(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``, with ``+channels_last``: how benchmarks and metrics.json name it."""
        base = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        return base + ("+channels_last" if self.channels_last else "")

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` on this device with this dtype (a no-op context in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A ``GradScaler`` where fp16's range needs one (CUDA fp16), None otherwise."""
        if self.dtype is torch.float16 and self.device_type == "cuda":
            return torch.amp.GradScaler("cuda")
        return None

    def network(self, network: torch.nn.Module) -> torch.nn.Module:
        """``network`` with its weights in this memory layout (in place: an optimiser's parameters stay valid)."""
        if self.channels_last:
            network.to(memory_format=torch.channels_last)
        return network

    def batch(self, tensor: Any) -> Any:
        """A 4-D image batch in this memory layout (anything else unchanged)."""
        if self.channels_last and isinstance(tensor, torch.Tensor) and tensor.ndim == 4:
            return tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def describe(self) -> dict[str, Any]:
        """The settings as plain values (for metrics.json and benchmark tables)."""
        dtype = None if self.dtype is None else str(self.dtype).removeprefix("torch.")
        return {"device": self.device_type, "amp_dtype": dtype, "channels_last": self.channels_last, "name": self.name}


FP32 = Precision()


@contextlib.contextmanager
def autocast_off() -> Iterator[None]:
    """No autocast inside the block, on any device (data loading with ``num_workers`` 0 runs MONAI's
    transforms in the training process: inside the loss they would otherwise run under autocast)."""
    with contextlib.ExitStack() as stack:
        for device_type in ("cpu", "cuda"):
            if torch.is_autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


#: the choices of each precision setting (``"true"``/``"false"`` and the like are read as True/False)
CHOICES: dict[str, tuple[Any, ...]] = {
    "amp": (AUTO, True, False),
    "amp_dtype": (AUTO, *DTYPES),
    "channels_last": (AUTO, True, False),
}
_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


def precision_choice(name: str, value: Any) -> Any:
    """The setting ``name`` (a key of ``CHOICES``) normalised; a bad value raises ``SettingError`` naming it."""
    from common.utils.settings import SettingError

    if isinstance(value, str):
        value = _WORDS.get(value.strip().lower(), value.strip().lower())
    choices = CHOICES[name]
    if (isinstance(value, int) and not isinstance(value, bool)) or value not in choices:
        raise SettingError(name, value, f"must be one of {', '.join(map(str, choices))}")
    return value


def resolve_precision(
    device: str | torch.device, amp: Any = AUTO, amp_dtype: Any = AUTO, channels_last: Any = AUTO
) -> Precision:
    """The ``Precision`` of the bundle settings on ``device``.

    ``amp``: ``"auto"`` turns mixed precision on where it is fast (CUDA; CPUs with native bf16), True/False
    force it. ``amp_dtype``: ``"auto"`` is bf16 (on CUDA where supported, fp16 otherwise), or ``bfloat16`` /
    ``float16``. ``channels_last``: ``"auto"`` is on (measured faster in every precision on the CPUs and the
    U-Net benchmarked here), or True/False.
    """
    amp = precision_choice("amp", amp)
    amp_dtype = precision_choice("amp_dtype", amp_dtype)
    channels_last = precision_choice("channels_last", channels_last)
    device_type = torch.device(device).type
    if device_type not in ("cpu", "cuda"):
        return Precision(device_type, None, channels_last is True)
    if amp == AUTO:
        amp = device_type == "cuda" or cpu_has_native_bf16()
    dtype = None
    if amp:
        if amp_dtype == AUTO:
            bf16 = device_type == "cpu" or torch.cuda.is_bf16_supported()
            dtype = torch.bfloat16 if bf16 else torch.float16
        else:
            dtype = DTYPES[amp_dtype]
    layout = True if channels_last == AUTO else channels_last
    return Precision(device_type, dtype, bool(layout))
