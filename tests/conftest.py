import os

import pytest

# open_clip / huggingface_hub otherwise retry network look-ups for ~46 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session", autouse=True)
def _fsbench_cache(tmp_path_factory):
    """Keep a user's FSBENCH_CACHE (CI reuses one); otherwise one temporary cache per session."""
    if "FSBENCH_CACHE" not in os.environ:
        os.environ["FSBENCH_CACHE"] = str(tmp_path_factory.mktemp("fsbench-cache"))
    yield
