"""``fsbench install-extra NAME``: optional packages that a plain ``pip install`` cannot provide.

**learn2learn** (the ``maml``, ``anil`` and ``metasgd`` baselines, :mod:`fsbench.episodes.l2l`).
Its last release, 0.2.0, is an sdist whose Cython-generated C does not compile on Python 3.11, and
its declared dependencies (gym, gsutil, qpth, ...) pull an old NumPy. The recipe, run with the
current interpreter's pip:

1. ``pip download --no-deps --no-binary :all: learn2learn==0.2.0`` into a temporary folder;
2. Cython < 3 and wheel go into that folder (``pip install --target``), never into the
   environment; the shipped ``.c`` files are deleted and regenerated from the ``.pyx`` sources;
3. ``pip install --no-deps --no-build-isolation`` of the unpacked sources (Cython on
   ``PYTHONPATH``);
4. ``pip install --no-deps`` of what ``import learn2learn`` really imports besides torch,
   torchvision, NumPy, SciPy, Pillow and tqdm (which fsbench already has): ``gym`` (imported by
   ``learn2learn.gym`` at package import; gym 0.26.2 imports under NumPy 2), ``cloudpickle``
   (gym's) and ``requests`` with its own imports. Nothing else of learn2learn's declared list is
   imported by the package or its algorithms, so NumPy is left as it is;
5. ``import learn2learn`` in a fresh interpreter.

It does nothing when ``import learn2learn`` already works (CI calls it on every run).
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fsbench.datacmd import _safe_extract
from fsbench.errors import UserError

INSTALL_HINT = "fsbench install-extra learn2learn"


@dataclass(frozen=True)
class Extra:
    module: str  # what must import afterwards
    sdist: str  # pinned source distribution
    build_tools: tuple[str, ...]  # installed into a temporary --target folder only
    runtime: tuple[str, ...]  # installed with --no-deps
    pyx_dir: str  # folder (inside the sdist) whose .pyx files are re-cythonised


EXTRAS = {
    "learn2learn": Extra(
        module="learn2learn",
        sdist="learn2learn==0.2.0",
        build_tools=("cython<3", "wheel"),
        runtime=("gym==0.26.2", "cloudpickle", "requests", "urllib3", "idna",
                 "charset_normalizer", "certifi"),
        pyx_dir="learn2learn/data",
    ),
}


def require(module: str, who: str):
    """``import module``, or a one-line UserError naming ``fsbench install-extra module``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"{who} needs {module}, which does not import ({e}); install it with "
                        f"`fsbench install-extra {module}`") from None


def importable(module: str) -> bool:
    """Whether ``import module`` succeeds in a fresh interpreter (a broken build counts as no)."""
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return proc.returncode == 0


def _pip(args: list[str], step: str, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print(f"  $ pip {' '.join(args)}", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"install-extra: {step} failed (pip exit {proc.returncode}: {tail[0]}); "
                        f"rerun with network access to PyPI and a C compiler")


def _cythonize(src: Path, pyx_dir: str, env: dict) -> None:
    """Regenerate the C files of ``src/pyx_dir/*.pyx`` with the Cython in ``env``'s PYTHONPATH."""
    for c in src.rglob("*.c"):
        c.unlink()
    code = ("import glob, sys; from Cython.Build import cythonize; "
            "cythonize(glob.glob(sys.argv[1] + '/*.pyx'), "
            "compiler_directives={'language_level': 3, 'embedsignature': True})")
    print(f"  $ cythonize {pyx_dir}/*.pyx", flush=True)
    proc = subprocess.run([sys.executable, "-c", code, pyx_dir], cwd=src, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"install-extra: regenerating the C sources failed ({tail[0]})")


def install(name: str) -> bool:
    """Install extra ``name``; False when it already imports (nothing done)."""
    if name not in EXTRAS:
        raise UserError(f"install-extra: unknown extra {name!r}; valid: {', '.join(EXTRAS)}")
    extra = EXTRAS[name]
    if importable(extra.module):
        print(f"{name} already imports; nothing to do")
        return False
    print(f"installing {name} ({extra.sdist}, --no-deps) with {sys.executable}")
    with tempfile.TemporaryDirectory(prefix="fsbench-extra-") as tmp:
        tmp = Path(tmp)
        tools = tmp / "build-tools"
        _pip(["download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(tmp),
              extra.sdist], "downloading the sdist")
        _pip(["install", "-q", "--no-deps", "--target", str(tools), *extra.build_tools],
             "fetching the build tools")
        archive = next(tmp.glob("*.tar.gz"))
        with tarfile.open(archive) as tf:
            _safe_extract(tf, tmp / "src")
        src = next(p for p in (tmp / "src").iterdir() if (p / "setup.py").is_file())
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(tools), *filter(None, [os.environ.get("PYTHONPATH")])]))
        _cythonize(src, extra.pyx_dir, env)
        _pip(["install", "-q", "--no-deps", "--no-build-isolation", str(src)],
             f"building {name}", env=env)
        _pip(["install", "-q", "--no-deps", *extra.runtime], "installing the runtime imports")
    if not importable(extra.module):
        raise UserError(f"install-extra: {name} was installed but `import {extra.module}` fails; "
                        f"run `python -c 'import {extra.module}'` to see why")
    print(f"{name} installed")
    return True


def cmd_install_extra(args) -> int:
    install(args.name)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("install-extra",
                       help="install an optional package pip cannot (learn2learn on Python 3.11)")
    p.add_argument("name", choices=sorted(EXTRAS), help="the extra to install")
    p.set_defaults(func=cmd_install_extra)
