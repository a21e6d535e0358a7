"""Shared fixtures: tiny generated data, the real data folder (skipped when absent), bundle runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.data.demo import make_demo_siim

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BASELINE = REPO / "bundles" / "baseline"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (it ships beside the repository, not in it)")
    return path


@pytest.fixture(scope="session")
def tiny_siim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthetic images of 128x128 in the SIIM-ACR layout (generated, never committed)."""
    return make_demo_siim(tmp_path_factory.mktemp("tiny_siim"), n_images=24, size=128, seed=3)


@pytest.fixture(scope="session")
def tiny_multidomain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic multi-domain demo set at 64 px and its datalist.json (what HSSL bundles read)."""
    from pipeline.multidomain import write_demo_multidomain

    out = tmp_path_factory.mktemp("tiny_multidomain")
    write_demo_multidomain(out, seed=0)
    return out / "datalist.json"


def try_bundle(configs: list[Path], *overrides: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` as a subprocess, whatever its exit status."""
    config_arg = str(configs[0]) if len(configs) == 1 else repr([str(c) for c in configs])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_arg, *overrides]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_bundle(configs: list[Path], *overrides: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` as a subprocess; fail the test with its output on error."""
    proc = try_bundle(configs, *overrides, cwd=cwd, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(
            f"bundle run failed ({proc.returncode}): {' '.join(proc.args)}\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


#: one-epoch models of the mechanics tests start from PyTorch's output initialisation: from the output prior
#: they predict empty masks, which the blank-teacher rule rightly refuses and DICOM SEG has nothing to encode;
#: what those tests check (selection, resume, retraining, writing) needs models that mark something
MECHANICS_PRIOR = ("--output_prior", "off")


def tiny_train_overrides(dataset_dir: Path, bundle_root: Path, epochs: int = 1) -> list[str]:
    """CLI overrides that make a bundle train in seconds on the tiny data, outputs in ``bundle_root``."""
    return [
        "--bundle_root",
        str(bundle_root),
        "--dataset_dir",
        str(dataset_dir),
        "--image_size",
        "64",
        "--batch_size",
        "4",
        "--num_workers",
        "0",
        "--epochs",
        str(epochs),
        *MECHANICS_PRIOR,
    ]


def copy_bundle(name: str, dest: Path) -> Path:
    """A clean copy of ``bundles/<name>`` (no cache, logs, outputs or trained models) at ``dest``."""
    import shutil

    # models/ may hold what `make demo` installed (and backups of it): never copied
    shutil.copytree(REPO / "bundles" / name, dest, ignore=shutil.ignore_patterns("cache", "logs", "eval", "models"))
    (dest / "models").mkdir()
    return dest


def read_json(path: Path) -> dict:
    """Parse a JSON file."""
    return json.loads(Path(path).read_text())


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for torchrun's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A rank aborting in C++ teardown after its work and ``destroy_process_group`` (a joinable std::thread destroyed
# at exit; seen once in CI on the mean teacher's two gloo ranks, never in 10 local repeats; upstream:
# pytorch/pytorch#179291, gloo shutdown is not yet graceful). Such a run is repeated once; any other failure,
# or the same one twice, fails the test.
GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def run_torchrun(configs: list[Path], *overrides: str, cwd: Path, nproc: int = 2) -> None:
    """``torchrun --nproc_per_node=N -m monai.bundle run`` (gloo on CPU); fail the test with its output on error
    (a run lost to the gloo teardown abort is repeated once: ``GLOO_TEARDOWN_ABORT``)."""
    config_arg = repr([str(c) for c in configs])
    for attempt in (1, 2):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "--master_port", str(free_port()), "-m", "monai.bundle", "run", "--config_file", config_arg, *overrides,
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0 or GLOO_TEARDOWN_ABORT not in proc.stderr:
            break
        print(f"torchrun attempt {attempt}: a rank aborted in gloo teardown ({GLOO_TEARDOWN_ABORT!r})")
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
