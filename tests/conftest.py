import os
import sys

import pytest

from fsbench import repro

# Tests compare numbers, so they run in the reproducible CPU mode (fsbench.repro): its variables
# are read when torch loads, so they are set here, before any test module imports torch.
if "torch" in sys.modules:  # pragma: no cover - a plugin imported torch first
    raise RuntimeError("torch was imported before tests/conftest.py could pin the reproducible "
                       "CPU mode; run pytest with -p no:<plugin> for the plugin that imports it")
os.environ.update(repro.environment(repro.DEFAULT_THREADS))

# open_clip / huggingface_hub otherwise retry network look-ups for ~46 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session", autouse=True)
def _fsbench_cache(tmp_path_factory):
    """Keep a user's FSBENCH_CACHE (CI reuses one); otherwise one temporary cache per session."""
    if "FSBENCH_CACHE" not in os.environ:
        os.environ["FSBENCH_CACHE"] = str(tmp_path_factory.mktemp("fsbench-cache"))
    yield
