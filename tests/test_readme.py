"""README.md's quick start is what a fresh clone prints: its first command is run as written (in
the reproducible CPU mode it asks for) and its sample output must equal the printed table."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from fsbench.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def _quick_start() -> tuple[list[str], list[str]]:
    text = README.read_text()
    blocks = re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S)
    (cmd,) = [b for b in blocks if "fsbench run --method teen --dataset glyphs" in b]
    argv = shlex.split(cmd.split("&&")[-1].strip())
    assert argv[0] == "fsbench"
    sample = text.split("Sample output of the first command", 1)[1]
    sample = re.search(r"```\n(.*?)```", sample, flags=re.S).group(1)
    return argv[1:], [ln.rstrip() for ln in sample.strip().splitlines()]


def test_readme_sample_output_is_what_the_command_prints(tmp_path, capsys):
    argv, sample = _quick_start()
    assert "--reproducible" in argv  # the sample must not depend on the machine
    code = main(argv + ["--no-progress", "--out", str(tmp_path)])
    assert code == 0
    printed = [ln.rstrip() for ln in capsys.readouterr().out.strip().splitlines()]
    assert printed[-len(sample):] == sample, "\n".join(printed)


def test_readme_configuration_table_is_generated_from_the_schema():
    from fsbench.configschema import markdown_table

    text = README.read_text()
    start = text.index("<!-- generated from fsbench/configschema.py")
    block = text[text.index("\n", start) + 1:text.index("<!-- end of generated table -->")]
    assert block.strip() == markdown_table().strip()
