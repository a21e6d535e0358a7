"""The MONAI Label tests run only under their own pytest.ini (``make test-label`` in .venv-label).

They need monailabel, pydicom 2.4 and a separate environment, so the main suite (``make test``,
configured by pyproject.toml) must not collect them: this hook leaves them out of any pytest run
that is not configured by ``tests/label/pytest.ini``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

LABEL_INI = Path(__file__).resolve().parent / "pytest.ini"
REPO = LABEL_INI.parents[2]
if str(REPO) not in sys.path:  # `common`, `scripts` and `tests` import from the repository root
    sys.path.insert(0, str(REPO))


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Ignore this folder's test files unless pytest was started with ``-c tests/label/pytest.ini``."""
    if config.inipath is None or Path(config.inipath).resolve() != LABEL_INI:
        return collection_path.name.startswith("test_")
    return None
