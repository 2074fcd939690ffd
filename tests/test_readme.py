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
    cmd = next(b for b in blocks if "fsbench run --method teen --dataset glyphs" in b)  # the first
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


def test_readme_method_keys_table_is_generated_from_the_learners_blocks():
    from fsbench.configschema import markdown_method_table

    text = README.read_text()
    start = text.index("<!-- generated from the learners' config_blocks")
    block = text[text.index("\n", start) + 1:text.index("<!-- end of generated method table -->")]
    assert block.strip() == markdown_method_table().strip()


def _readme_files() -> dict[str, str]:
    """The files of "Write your own method": code blocks after ``<!-- file: NAME -->``."""
    return dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", README.read_text(),
                           flags=re.S))


def test_write_your_own_method_example_runs_and_resumes(tmp_path, monkeypatch, capsys):
    """The README's plug-in, extracted as written, run with its README command (on the tiny
    ``synthetic`` dataset, one epoch), and resumed mid-run to the same numbers."""
    import json

    from fsbench import api

    files = _readme_files()
    assert set(files) == {"proto_aug.py", "proto_aug.yaml"}
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    (cmd,) = [ln for ln in README.read_text().splitlines()
              if ln.strip() == "fsbench run --method proto_aug.py:ProtoAug --dataset glyphs"]
    argv = shlex.split(cmd)[1:]
    argv[argv.index("glyphs")] = "synthetic"
    monkeypatch.chdir(tmp_path)
    fast = ["--set", "train.epochs=1", "--no-progress", "--out", "full"]
    assert main(argv + fast) == 0
    full = json.loads(next((tmp_path / "full").glob("*/result.json")).read_text())
    assert full["method"] == "ProtoAug" and full["config"]["aug"] == {"copies": 4, "noise": 0.1}
    assert full["metrics"]["sessions"][0]["acc"] > 30  # 10 base classes: chance 10%
    part = api.run("proto_aug.py:ProtoAug", "synthetic", overrides={"train.epochs": 1},
                   out_dir="part", progress=False, stop_after=2)
    assert main(["run", "--resume", part["run_dir"], "--no-progress"]) == 0
    resumed = json.loads((Path(part["run_dir"]) / "result.json").read_text())
    strip = [{k: v for k, v in s.items() if k != "seconds"} for s in full["metrics"]["sessions"]]
    assert [{k: v for k, v in s.items() if k != "seconds"}
            for s in resumed["metrics"]["sessions"]] == strip
