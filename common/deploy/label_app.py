"""Serving a trained bundle with MONAI Label 0.8.5 in one command (``scripts/serve_label.py``, ``make serve``).

``plan_serving`` checks everything before anything is written: the bundle (``configs/inference.json`` and a
``models/model.pt`` that loads with ``weights_only=True``), the images folder (readable, writable: MONAI
Label keeps ``labels/`` and ``datastore_v2.json`` in it, and at least one image directly in it), the MONAI
Label environment and its stock ``monaibundle`` sample app, and a free port. ``deploy`` then builds
``<apps_dir>/<bundle>/``: ``app/`` (the sample app copied from the installed package, as
``monailabel apps --download`` does: nothing is downloaded), ``app/model/<bundle>`` (the bundle with this
``common`` package vendored into it), ``sessions/`` and ``tmp/``. Each deployment replaces the previous
one of the same bundle (a model retrained through ``/train`` lives in the deployed copy: copy it out first).
``run_server`` runs the server in the foreground, says when it answers, and stops it on Ctrl-C or SIGTERM,
escalating to SIGTERM and SIGKILL when it does not stop (busy, or started with SIGINT ignored, as a
background job of a non-interactive shell is).

The deployed app is the stock app with one change (``MAIN_PY``): an unknown model name or an image id that
is not in the datastore is answered with HTTP 404 naming it (the stock app answers both with HTTP 500
``Internal Server Error``; for the id, it hands the bundle an empty path, which fails with ``.: file not
found`` in the server log only), a failed inference with HTTP 500 whose detail names the id and the reason,
and a mask is returned as PNG unless the input is a ``.dcm`` file (MONAI Label would write JPEG masks for
JPEG inputs). Nothing here imports monailabel: the checks run in either environment.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from common.data.imaging import IMAGE_SUFFIXES
from common.deploy.zoo import PACKAGE
from common.utils.checkpoints import checkpoint_problem

SAMPLE_APP = "monaibundle"
MARKER = ".serve_label"  # marks a folder deploy() made, so that it may replace it
# MONAI Label lists only the images directly in the folder whose names match these (case-sensitive) patterns
PATTERNS = tuple(f"*{s}" for s in IMAGE_SUFFIXES) + tuple(f"*{s.upper()}" for s in IMAGE_SUFFIXES)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_BUNDLE_IGNORE = shutil.ignore_patterns("cache", "logs", "eval", "checkpoint_*.pt", "backup-*", "__pycache__")

MAIN_PY = '''"""MONAI Label's stock monaibundle app (stock_main.py, unchanged), written by common/deploy/label_app.py.

Changes: an unknown model or image id is answered with HTTP 404 naming it, a failed inference with HTTP 500
naming the id and the reason (traceback in the server log), and masks of inputs other than .dcm come back as PNG.
"""

import logging
import os

import stock_main
from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp

logger = logging.getLogger(__name__)


class ServeApp(stock_main.MyApp, MONAILabelApp):  # MONAI Label loads a class naming MONAILabelApp as a base
    def infer(self, request, datastore=None):
        model, image = request.get("model"), request.get("image")
        if model not in self._infers:
            raise HTTPException(404, f"no model {model!r} here: this server serves {', '.join(sorted(self._infers))}")
        if not isinstance(image, str) or os.path.exists(image):  # an uploaded file or a session's image
            return super().infer(request, datastore)
        store = datastore or self.datastore()
        uri = store.get_image_uri(image)
        if not uri:
            known = sorted(store.list_images())
            raise HTTPException(
                404,
                f"image id {image!r} is not in the datastore {self.studies} ({len(known)} images): the id is "
                f"the file name without extension, e.g. {', '.join(known[:3])}",
            )
        if not uri.endswith((".png", ".dcm")):
            request = {**request, "result_extension": request.get("result_extension") or ".png"}
        try:
            return super().infer(request, datastore)
        except HTTPException:
            raise
        except Exception as e:
            logger.exception(f"inference on image id {image!r} failed")
            reason = " ".join(str(e).split())[:500]
            raise HTTPException(500, f"inference on image id {image!r} failed: {type(e).__name__}: {reason}") from e
'''


class ServeError(ValueError):
    """A check that failed; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Plan:
    """Everything ``deploy`` writes and the server command, decided before anything is written."""

    name: str  # the bundle folder's name: the model name in MONAI Label's URLs
    source: Path  # the trained bundle
    sample_app: Path  # the installed monaibundle sample app
    root: Path  # <apps_dir>/<name>: app/, sessions/, tmp/
    images: Path
    image_ids: dict[str, str]  # id -> file name, as MONAI Label's local datastore names them
    label_python: Path
    host: str
    port: int
    skip_trainers: bool

    @property
    def app(self) -> Path:
        return self.root / "app"

    @property
    def bundle(self) -> Path:
        return self.app / "model" / self.name

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        """``python -m monailabel.main start_server`` (not the ``monailabel`` script, which adds the folder two
        levels above its bin/ to PYTHONPATH) with the offline settings."""
        conf = {"models": self.name, "zoo_source": "local", "sam2": "false"}
        conf["skip_trainers"] = str(self.skip_trainers).lower()
        cmd = [str(self.label_python), "-m", "monailabel.main", "start_server", "--app", str(self.app)]
        cmd += ["--studies", str(self.images)]
        for key, value in conf.items():  # zoo_source local and sam2 false: nothing is downloaded
            cmd += ["--conf", key, value]
        return [*cmd, "--host", self.host, "--port", str(self.port)]

    def env_overrides(self) -> dict[str, str]:
        """The settings the server needs besides the command line."""
        return {
            "MONAI_LABEL_SESSION_PATH": str(self.root / "sessions"),
            "MONAI_LABEL_DATASTORE_FILE_EXT": json.dumps(list(PATTERNS)),  # the default list has no *.dcm
            "TMPDIR": str(self.root / "tmp"),  # its log config and result files go to tempfile
        }

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` without PYTHONPATH (the server imports ``common`` from the deployed bundle only) plus the
        overrides."""
        return {**{k: v for k, v in base.items() if k != "PYTHONPATH"}, **self.env_overrides()}

    def example_request(self) -> str:
        """A curl command for the first image: its mask comes back as PNG, or as DICOM for a .dcm input."""
        image_id = sorted(self.image_ids)[0]
        ext = ".dcm" if self.image_ids[image_id].endswith(".dcm") else ".png"
        query = f"image={quote(image_id, safe='')}&output=image"
        return f'curl -X POST "{self.url}/infer/{self.name}?{query}" -o {shlex.quote(image_id + "_seg" + ext)}'

    def shell_command(self) -> str:
        """The server command with its environment, as one shell line."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env_overrides().items())
        return f"env -u PYTHONPATH {env} {shlex.join(self.command())}"


def resolve_bundle(spec: str, bundles_dir: Path) -> Path:
    """A bundle given by name (a folder of ``bundles_dir``) or by path."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve()
    if _NAME.match(spec) and (bundles_dir / spec).is_dir():
        return (bundles_dir / spec).resolve()
    known = sorted(p.name for p in bundles_dir.iterdir() if (p / "configs").is_dir()) if bundles_dir.is_dir() else []
    raise ServeError(f"unknown bundle {spec!r}: neither a folder nor one of {', '.join(known) or 'no bundles'}")


def check_bundle(bundle: Path) -> str:
    """The model name (the folder name) of a bundle MONAI Label can serve: inference config, loadable weights."""
    if not _NAME.match(bundle.name):
        raise ServeError(f"{bundle}: the folder name is the model name, use letters, digits, '_', '.', '-'")
    if not (bundle / "configs" / "inference.json").is_file():
        raise ServeError(f"{bundle} is not a bundle: configs/inference.json is missing")
    model = bundle / "models" / "model.pt"
    if not model.is_file():
        raise ServeError(f"{model} is missing: train the bundle first (or `make demo`, which installs models)")
    problem = checkpoint_problem(model)
    if problem:
        raise ServeError(problem)
    return bundle.name


def image_id(file_name: str) -> str:
    """The id MONAI Label 0.8.5's local datastore gives a file: its name without the matched extension
    (``LocalDatastore._to_id``: every occurrence of the extension is removed)."""
    ext = ""
    for pattern in PATTERNS:
        if file_name.endswith(pattern[1:]) and len(pattern) - 1 > len(ext):
            ext = pattern[1:]
    return file_name.replace(ext, "") if ext else file_name


def served_images(images: Path) -> dict[str, str]:
    """Image id -> file name of the images MONAI Label will list in ``images`` (sorted by id)."""
    if not images.is_dir():
        raise ServeError(f"images folder {images} does not exist")
    if not os.access(images, os.R_OK | os.W_OK | os.X_OK):
        raise ServeError(f"images folder {images} must be writable: MONAI Label keeps labels/ and its datastore in it")
    ids: dict[str, str] = {}
    for f in sorted(images.iterdir()):
        if f.is_file() and any(f.name.endswith(p[1:]) for p in PATTERNS):
            other = ids.setdefault(image_id(f.name), f.name)
            if other != f.name:
                raise ServeError(f"{other} and {f.name} in {images} get the same image id {image_id(f.name)!r}")
    if not ids:
        suffixes = ", ".join(IMAGE_SUFFIXES)
        raise ServeError(f"no images in {images} (MONAI Label reads only files directly in it ending in {suffixes})")
    return dict(sorted(ids.items()))


def find_sample_app(label_python: Path) -> Path:
    """The installed ``monaibundle`` sample app of the environment ``label_python`` belongs to (the folders
    ``monailabel apps`` searches, for an environment without a ``--prefix``)."""
    if not label_python.is_file():
        raise ServeError(f"{label_python} not found: run `make label-venv` (MONAI Label has its own environment)")
    prefix = label_python.absolute().parent.parent  # the venv: never resolve its python symlink
    roots = [prefix / "monailabel", prefix / "local" / "monailabel", Path.home() / ".local" / "monailabel"]
    roots += sorted(prefix.glob("lib/python3*/site-packages"))
    for root in roots:
        app = root / "sample-apps" / SAMPLE_APP
        if (app / "main.py").is_file():
            return app
    raise ServeError(f"MONAI Label's {SAMPLE_APP} sample app is not in {prefix}: run `make label-venv` again")


def check_port(host: str, port: int) -> None:
    """Refuse a port some other process listens on (a server already running, say)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            reason = "in use (a server already running?)" if e.errno == errno.EADDRINUSE else e.strerror
            raise ServeError(f"port {port} on {host}: {reason}; pick another with --port / PORT=") from e


def plan_serving(
    bundle: Path,
    images: Path,
    apps_dir: Path,
    label_python: Path,
    port: int = 8000,
    host: str = "127.0.0.1",
    skip_trainers: bool = False,
) -> Plan:
    """Every check, in the order a user fixes them; nothing is written."""
    name = check_bundle(bundle)
    images = images.expanduser().resolve()
    ids = served_images(images)
    sample_app = find_sample_app(label_python)
    root = apps_dir.expanduser().resolve() / name
    if root.exists() and not (root / MARKER).is_file():
        raise ServeError(f"{root} exists and was not made by serve_label: pick another apps folder")
    check_port(host, port)
    label_python = label_python.absolute()
    return Plan(name, bundle, sample_app, root, images, ids, label_python, host, port, skip_trainers)


def deploy(plan: Plan) -> Path:
    """Write ``plan.root`` afresh (replacing an earlier deployment of the bundle); return the app folder."""
    if plan.root.exists():
        shutil.rmtree(plan.root)
    plan.root.mkdir(parents=True)
    (plan.root / MARKER).write_text(f"made by scripts/serve_label.py from {plan.source}\n")
    shutil.copytree(plan.sample_app, plan.app, ignore=shutil.ignore_patterns("logs", "model", "__pycache__"))
    (plan.app / "main.py").rename(plan.app / "stock_main.py")
    (plan.app / "main.py").write_text(MAIN_PY)
    shutil.copytree(plan.source, plan.bundle, ignore=_BUNDLE_IGNORE)  # creates model/
    if not (plan.bundle / "common").is_dir():  # an unpacked zoo zip ships its own
        shutil.copytree(PACKAGE, plan.bundle / "common", ignore=shutil.ignore_patterns("__pycache__"))
    for sub in ("sessions", "tmp"):
        (plan.root / sub).mkdir()
    return plan.app


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/info/", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_server(proc: subprocess.Popen, wait_s: float = 10.0) -> int:
    """SIGINT, then SIGTERM, then SIGKILL, ``wait_s`` apart, until the server has exited; return its status."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # another Ctrl-C must not cut the escalation short
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def run_server(plan: Plan, announce: Callable[[str], None] = print) -> int:
    """Run the server (in ``plan.root``, this process group) until it exits or Ctrl-C / SIGTERM stops it;
    ``announce`` a line once ``/info/`` answers. Return the server's exit status (130 when stopped)."""
    signal.signal(signal.SIGTERM, _interrupt)
    proc = subprocess.Popen(plan.command(), cwd=plan.root, env=plan.env(dict(os.environ)))
    try:
        while proc.poll() is None:
            if _answers(plan.url):
                announce(f"ready: {plan.url}/infer/{plan.name}  (Ctrl-C stops the server)")
                break
            time.sleep(1)
        return proc.wait()
    except KeyboardInterrupt:
        stop_server(proc)
        return 130
