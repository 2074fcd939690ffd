"""Lazy registries: built-in names come from a static scan of the registration calls, so listing
and name checks import no heavy module; the scan must agree with what importing registers."""
from __future__ import annotations

import subprocess
import sys

from fsbench.registry import DATASETS, METHODS, builtin_index, load_builtins


def test_static_index_equals_the_imported_registrations():
    load_builtins()
    index = builtin_index()
    for kind, reg in (("method", METHODS), ("dataset", DATASETS)):
        loaded = {e.name: (e.obj.__module__ if kind == "method" else None, e.task, e.summary)
                  for e in reg.entries()}
        scanned = {n: (m if kind == "method" else None, t, s)
                   for n, (m, t, s) in index[kind].items()}
        assert scanned == {n: v for n, v in loaded.items() if n in scanned}
        assert set(scanned) == set(loaded), set(loaded) ^ set(scanned)


def test_list_help_and_name_errors_import_no_torch():
    code = ("import sys\n"
            "from fsbench.cli import main\n"
            "for argv in (['list'], ['run', '--method', 'nosuch', '--dataset', 'glyphs'],\n"
            "             ['run', '--method', 'ncm', '--dataset', 'nosuch']):\n"
            "    rc = main(argv)\n"
            "    assert rc == (0 if argv == ['list'] else 2), (argv, rc)\n"
            "heavy = [m for m in ('torch', 'numpy', 'torchvision') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "unknown method 'nosuch'" in proc.stderr and "unknown dataset 'nosuch'" in proc.stderr
    assert "teen" in proc.stdout and "glyphs" in proc.stdout


def test_list_into_a_closed_pipe_is_quiet():
    proc = subprocess.run(f"{sys.executable} -m fsbench.cli list | head -1", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "methods:" and "Traceback" not in proc.stderr, proc.stderr
