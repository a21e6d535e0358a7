"""Checking a bundle's own settings once, before anything reads data or loads a model.

The bundle CLI (python-fire) passes ``--epochs abc`` through as the string 'abc' and ``--epochs 0`` as 0;
left alone, such a value fails deep inside MONAI (a long traceback ending in "Failed to evaluate
ConfigExpression"), sometimes only after the data was loaded. The configs call ``check_settings`` with
their options by name as their first expression: every bad value is reported on one line,
``error: --<option> <value>: <what is allowed>`` (a model file: ``<path>: unreadable or corrupt
checkpoint (...)``), and the bundle stops with ``SystemExit`` (which MONAI's config evaluation does not
wrap, so Python prints the message as the last line, without a traceback).

``train.json`` and ``evaluate.json`` check in ``initialize`` (MONAI Label runs ``train.json`` without
``initialize``, with its own data, so it never sees the dataset checks); ``inference.json`` checks as
the first expression of ``run`` (tools that only parse it, like MONAI Label, never run it).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.distill.teachers import COMBINE_RULES
from common.utils.checkpoints import CheckpointError, load_checkpoint

#: the U-Net halves the image four times (strides 2, 2, 2, 2): the size must divide by 2**4
SIZE_MULTIPLE = 16
TRUE_WORDS = ("true", "yes", "1")
FALSE_WORDS = ("false", "no", "0")


class SettingError(ValueError):
    """One bad setting; the message is ``--<option> <value>: <what is allowed>``."""

    def __init__(self, name: str, value: Any, allowed: str) -> None:
        super().__init__(f"--{name} {value!r}: {allowed}")


def whole_number(name: str, value: Any, minimum: int = 0, maximum: int | None = None, *, multiple_of: int = 1) -> int:
    """``value`` when it is an int in [minimum, maximum] and a multiple of ``multiple_of``.

    Only an int passes: the config uses the value as given, and the CLI turns ``--epochs 5`` into 5 but
    ``--epochs 5.0`` into a float and ``--epochs abc`` into a string.
    """
    allowed = (
        f"must be a whole number in [{minimum}, {maximum}]"
        if maximum is not None
        else f"must be a whole number >= {minimum}"
    )
    allowed += f" and a multiple of {multiple_of}" if multiple_of > 1 else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingError(name, value, allowed)
    if value < minimum or (maximum is not None and value > maximum) or value % multiple_of:
        raise SettingError(name, value, allowed)
    return value


def real_number(
    name: str, value: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False
) -> float:
    """``value`` when it is a finite int or float in [low, high] (``low_open``: (low, high])."""
    if low is not None and high is not None:
        allowed = f"must be a number in {'(' if low_open else '['}{low:g}, {high:g}]"
    elif low is not None:
        allowed = f"must be a number {'>' if low_open else '>='} {low:g}"
    else:
        allowed = "must be a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SettingError(name, value, allowed)
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        raise SettingError(name, value, allowed)
    return float(value)


def flag(name: str, value: Any, *, false_strings: bool = True) -> bool:
    """A boolean option: True/False, or (``false_strings``) the strings 'true'/'false' the CLI passes through.

    Without ``false_strings`` the config reads the value by its truth (``$not @resume``), so a string
    'false' would count as true: it is refused with the spelling that works.
    """
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS and false_strings:
        return False
    if word in FALSE_WORDS:
        raise SettingError(
            name, value, "write False (capitalised): the bundle CLI passes 'false' as a string, which reads as true"
        )
    raise SettingError(name, value, "must be True or False")


def existing_folder(name: str, value: Any, what: str = "folder") -> Path:
    """``value`` as the path of an existing folder."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise SettingError(name, value, f"must be the path of a {what}")
    if not Path(value).is_dir():
        raise SettingError(name, str(value), f"no such {what}")
    return Path(value)


def writable_folder(name: str, value: Any) -> Path:
    """``value`` as a folder that exists (created here if need be) and takes a new file."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise SettingError(name, value, "must be the path of a folder")
    folder = Path(value)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_check_"):
            pass
    except OSError as e:
        reason = e.strerror or str(e)
        raise SettingError(name, str(value), f"cannot create or write the folder ({type(e).__name__}: {reason})") from e
    return folder


def one_of(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` when it is one of ``choices``."""
    if value not in choices:
        raise SettingError(name, value, f"must be one of {', '.join(choices)}")
    return value


def data_source(dataset_dir: Any, datalist_file: Any = "") -> None:
    """A datalist file that exists (its paths resolve against ``dataset_dir`` when given, else the folder it
    records), or else a ``dataset_dir`` folder that exists."""
    if datalist_file:
        if not isinstance(datalist_file, (str, os.PathLike)) or not Path(datalist_file).is_file():
            raise SettingError("datalist_file", str(datalist_file), "no such file")
        if dataset_dir:
            existing_folder("dataset_dir", dataset_dir)
    else:
        existing_folder("dataset_dir", dataset_dir, "folder (run `make demo-data` or pass --dataset_dir)")


def image_input(name: str, value: Any) -> None:
    """An image file, or a folder holding at least one image (what inference segments)."""
    from common.data.imaging import list_images

    if not isinstance(value, (str, os.PathLike)) or not Path(value).exists():
        raise SettingError(name, str(value), "no such file or folder")
    try:
        list_images(value)
    except FileNotFoundError:
        raise SettingError(name, str(value), "holds no DICOM/PNG/JPEG/NIfTI image") from None


def optional_rate(name: str, value: Any) -> float | None:
    """Off (``null``, or "off"/"none"/"null": ``common.data.sampling.OFF``) or a share in [0, 1]."""
    from common.data.sampling import OFF, rate_setting

    try:
        rate = rate_setting(value)
    except (TypeError, ValueError):
        raise SettingError(name, value, f"must be a number in [0, 1] or one of {', '.join(OFF)}") from None
    return None if rate is None else real_number(name, rate, 0, 1)


def _checkpoint_metric(name: str, value: Any) -> str:
    from common.training.metrics import CHECKPOINT_METRICS

    return one_of(name, value, CHECKPOINT_METRICS)


#: the segmentation losses of the configs' ``losses`` section (a test checks they agree)
LOSS_NAMES = ("dicefocal", "combo", "weighted_bce")


def _split(name: str, value: Any) -> str:
    from common.data.datalist import SPLIT_KEYS

    return one_of(name, value, SPLIT_KEYS)


def _open_unit_interval(name: str, value: Any) -> float:
    """A finite number strictly between 0 and 1 (an EMA decay: 0 or 1 would not average)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:  # NaN fails too
        raise SettingError(name, value, "must be a number in (0, 1)")
    return float(value)


def _folders(name: str, value: Any) -> list[Path]:
    """Nothing (``""``), one folder or a list of folders, each existing (the unlabelled pool)."""
    from common.data.pool import pool_dirs

    if not (
        value == "" or isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    ):
        raise SettingError(name, value, "must be a folder or a list of folders")
    missing = [str(d) for d in pool_dirs(value) if not d.is_dir()]
    if missing:
        raise SettingError(name, value, f"folder not found: {', '.join(missing)}")
    return pool_dirs(value)


def _pool_size(name: str, value: Any) -> int | str:
    from common.data.pool import ALL

    return value if value == ALL else whole_number(name, value, 0)


def _samples_per_epoch(name: str, value: Any) -> int:
    """0 (one pass over the training items) or a number of draws per epoch."""
    return whole_number(name, value, 0)


def _precision_choice(name: str, value: Any) -> Any:
    """``amp``, ``amp_dtype``, ``channels_last``: ``auto`` or one of the choices (``common.training.precision``)."""
    from common.training.precision import precision_choice

    return precision_choice(name, value)


def _output_prior(name: str, value: Any) -> float | None:
    """Off (as ``pos_sample_rate``) or a probability strictly between 0 and 1 (its logit must be finite)."""
    from common.data.sampling import OFF, rate_setting

    try:
        rate = rate_setting(value)
    except (TypeError, ValueError):
        rate = float("nan")
    if rate is not None and not 0.0 < rate < 1.0:  # (NaN fails too)
        raise SettingError(name, value, f"must be a number in (0, 1) or one of {', '.join(OFF)}")
    return rate


def _labelled_share(name: str, value: Any) -> float | None:
    """``natural`` (the labelled items' natural share of the student's draws) or a share in (0, 1]."""
    from common.data.sampling import NATURAL, share_setting

    try:
        return share_setting(value)
    except (TypeError, ValueError):
        raise SettingError(name, value, f"must be {NATURAL} or a number in (0, 1]") from None


def _aux_images(name: str, value: Any) -> str:
    from common.data.pool import AUX_IMAGES

    return one_of(name, value, AUX_IMAGES)


def _aux_balancing(name: str, value: Any) -> str:
    from common.training.balancing import BALANCING

    return one_of(name, value, BALANCING)


#: option -> its check (name, value); ``dataset_dir`` with ``datalist_file`` is checked by ``data_source``
RULES: dict[str, Callable[[str, Any], Any]] = {
    "labelled_fraction": lambda n, v: real_number(n, v, 0, 1, low_open=True),
    "unlabelled_dir": _folders,
    "pool_size": _pool_size,
    "pool_skip_bad": lambda n, v: flag(n, v, false_strings=False),  # read by truth
    "aux_images": _aux_images,
    # joint bundles: how the segmentation and auxiliary losses are weighed (common.training.balancing)
    "aux_balancing": _aux_balancing,
    "gradnorm_ratio": lambda n, v: real_number(n, v, 0, low_open=True),
    "split_seed": lambda n, v: whole_number(n, v, 0),
    "seed": lambda n, v: whole_number(n, v, 0),
    "image_size": lambda n, v: whole_number(n, v, SIZE_MULTIPLE, multiple_of=SIZE_MULTIPLE),
    "min_pred_area_fraction": lambda n, v: real_number(n, v, 0, 1),
    # evaluation/inference post-processing (tuned on validation by configs/tune.json: common.training.tuning)
    "pred_threshold": lambda n, v: real_number(n, v, 0, 1),
    "pred_threshold_low": lambda n, v: real_number(n, v, 0, 1),
    "tta": lambda n, v: flag(n, v, false_strings=False),  # read by truth (FlipTTAInferer(enabled=...))
    "use_tuned": lambda n, v: flag(n, v, false_strings=False),
    "checkpoint_metric": _checkpoint_metric,
    "loss_name": lambda n, v: one_of(n, v, LOSS_NAMES),
    "pos_sample_rate": optional_rate,
    "pos_sample_rate_final": optional_rate,
    "samples_per_epoch": _samples_per_epoch,
    "output_prior": _output_prior,
    "labelled_share": _labelled_share,  # distill: the labelled images' share of the draws
    "teacher_top_k": lambda n, v: whole_number(n, v, 0),  # distill: only the k best teachers (0: all)
    "teacher_combine": lambda n, v: one_of(n, v, COMBINE_RULES),  # distill: the teachers' mean or maximum
    "batch_size": lambda n, v: whole_number(n, v, 1),
    "num_workers": lambda n, v: whole_number(n, v, 0),
    "learning_rate": lambda n, v: real_number(n, v, 0, low_open=True),
    "weight_decay": lambda n, v: real_number(n, v, 0),
    "epochs": lambda n, v: whole_number(n, v, 1),
    "val_interval": lambda n, v: whole_number(n, v, 1),
    "resume": lambda n, v: flag(n, v, false_strings=False),  # the configs read it by truth: `$not @resume`
    # speed (common.training.precision): mixed precision, memory layout, torch.compile (read by truth)
    "amp": _precision_choice,
    "amp_dtype": _precision_choice,
    "channels_last": _precision_choice,
    "compile": lambda n, v: flag(n, v, false_strings=False),
    "eval_split": _split,
    "input_dir": image_input,
    "output_dir": writable_folder,
    "mask_scale": lambda n, v: whole_number(n, v, 1, 255),
    "dicom_seg": flag,
    "strict": flag,
    "ckpt_file": lambda n, v: load_checkpoint(v),  # its own message: "<path>: unreadable or corrupt checkpoint"
    # mean_teacher
    "consistency_weight": lambda n, v: real_number(n, v, 0),
    "rampup_epochs": lambda n, v: real_number(n, v, 0),
    "ema_decay": _open_unit_interval,
    "consistency_noise": lambda n, v: real_number(n, v, 0),
    "evaluate_ema": lambda n, v: flag(n, v, false_strings=False),  # read by truth: `$@teacher if @evaluate_ema ...`
    "unlabelled_batch_size": lambda n, v: whole_number(n, v, 1),
}


def check_settings(**settings: Any) -> bool:
    """Check a bundle's settings by name (``RULES``); stop the bundle with one line naming every bad one.

    For the configs' first expression, before anything reads data or loads the model, e.g.
    ``"$common.utils.settings.check_settings(epochs=@epochs, learning_rate=@learning_rate)"``: prints
    ``error: --epochs 'abc': must be a whole number >= 1`` as the last line (``SystemExit``, which MONAI's
    config evaluation does not wrap) and exits 1. Returns True when every value is usable.
    """
    unknown = sorted(set(settings) - set(RULES) - {"dataset_dir", "datalist_file"})
    if unknown:
        raise TypeError(f"check_settings has no rule for {unknown}")
    checks: list[Callable[[], Any]] = []
    if "dataset_dir" in settings or "datalist_file" in settings:
        checks.append(lambda: data_source(settings.get("dataset_dir"), settings.get("datalist_file", "")))
    checks += [
        lambda name=name, value=value: RULES[name](name, value) for name, value in settings.items() if name in RULES
    ]
    problems = []
    for check in checks:
        try:
            check()
        except (SettingError, CheckpointError) as e:
            problems.append(str(e))
    if problems:
        raise SystemExit("error: " + "; ".join(problems))
    return True
