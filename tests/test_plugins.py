"""Methods, datasets and backbones from outside the package (fsbench/plugins.py): ``--method
FILE.py:CLASS`` and ``MODULE:CLASS``, presets next to the module, entry points, resume, errors."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fsbench import api, plugins
from fsbench.cli import main

# A training-free FSCIL learner: class means of a fixed random projection of the pixels.
PLAIN_LEARNER = textwrap.dedent('''
    """Nearest class mean on a random projection (a plug-in for the tests)."""
    import torch
    import torch.nn.functional as F

    from fsbench.learner import FSCILLearner


    class Means(FSCILLearner):
        """nearest class mean on a random projection"""
        frozen_after_base = True

        def __init__(self, config, info):
            super().__init__(config, info)
            dim = int(config["means"]["dim"])
            self.proj = torch.nn.Linear(info.channels * info.image_size ** 2, dim)
            self.protos = torch.zeros(info.num_classes, dim)  # a plain tensor attribute
            self.num_seen = 0

        def embed(self, x):
            return self.proj(x.flatten(1))

        def predict_features(self, f):
            return F.normalize(f, dim=-1) @ F.normalize(self.protos, dim=-1).T

        def _means(self, feats, session):
            labels = torch.from_numpy(session.data.labels)
            for c in session.new_classes:
                self.protos[int(c)] = feats[labels == int(c)].mean(0)
            self.num_seen = session.num_seen

        def fit_base(self, session, ctx):
            self.eval()
            self._means(ctx.extract(self.embed, session.data), session)

        def learn_session(self, session, ctx):
            self._means(session.features, session)
''')
# The same learner saving its state by hand (before checkpoints saved plain attributes).
LEARNER = PLAIN_LEARNER + textwrap.indent(textwrap.dedent('''
        def extra_state(self):
            return {"protos": self.protos, "num_seen": self.num_seen}

        def load_extra_state(self, state):
            self.protos, self.num_seen = state["protos"], state["num_seen"]
'''), "    ")
PRESET = "means:\n  dim: 32\n"


def write_plugin(folder: Path, name: str = "means_method") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(LEARNER)
    (folder / f"{name}.yaml").write_text(PRESET)
    return path


def _sessions(result):
    return [{k: v for k, v in s.items() if k != "seconds"} for s in result["metrics"]["sessions"]]


def test_method_from_a_file_runs_records_its_path_and_resumes_from_the_cli(tmp_path, capsys):
    path = write_plugin(tmp_path / "mine")
    spec = f"{path}:Means"
    full = api.run(spec, "synthetic", out_dir=tmp_path / "a", progress=False)
    assert full["method"] == "Means" and full["status"] == "complete"
    assert full["method_import"] == f"{path.resolve()}:Means"
    assert full["config"]["means"] == {"dim": 32}  # the preset next to the module
    assert full["metrics"]["sessions"][0]["acc"] > 30  # 10-way base session, chance 10%
    part = api.run(spec, "synthetic", out_dir=tmp_path / "b", progress=False, stop_after=2)
    run_json = json.loads((Path(part["run_dir"]) / "run.json").read_text())
    assert run_json["method_import"] == full["method_import"]
    assert main(["run", "--resume", part["run_dir"], "--no-progress"]) == 0
    resumed = json.loads((Path(part["run_dir"]) / "result.json").read_text())
    assert resumed["status"] == "complete" and _sessions(resumed) == _sessions(full)


def test_method_from_a_module_and_set_validation(tmp_path, monkeypatch, capsys):
    write_plugin(tmp_path / "pkg" / "sub", "learners")
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "learners.synthetic.yaml").write_text("means:\n  dim: 8\n")
    monkeypatch.chdir(tmp_path)  # `fsbench run` finds modules of the current folder
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    argv = ["run", "--method", "pkg.sub.learners:Means", "--dataset", "synthetic"]
    assert main(argv + ["--set", "means.dim=4", "--print-config"]) == 0
    assert "means:\n  dim: 4\n" in capsys.readouterr().out  # the dataset-specific file, then --set
    assert main(argv + ["--set", "means.dimm=4"]) == 2
    assert "unknown key 'dimm'; did you mean means.dim?" in capsys.readouterr().err
    assert main(argv + ["--set", "means.dim=four"]) == 2
    assert "expected an integer" in capsys.readouterr().err
    assert not Path("runs").exists()


BAD_FILE = "import torch\nfrom fsbench.learner import FSCILLearner\nclass NotOne:\n    pass\n"


@pytest.mark.parametrize("method,needle", [
    ("nosuch.py:Means", "file nosuch.py not found"),
    ("nosuch_module_xyz:Means", "no module named 'nosuch_module_xyz'"),
    ("{plugin}:Missing", "defines no 'Missing'"),
    ("{bad}:NotOne", "'NotOne' is not a learner; subclass"),
    ("{bad}:FSCILLearner", "FSCILLearner does not implement fit_base and learn_session and "
                           "predict or predict_features"),
    ("{broken}:Means", "importing {broken} failed (ModuleNotFoundError: No module named"),
    ("{plugin}:", "expected MODULE:CLASS or FILE.py:CLASS"),
])
def test_bad_import_paths_are_one_line(tmp_path, monkeypatch, capsys, method, needle):
    monkeypatch.chdir(tmp_path)
    names = {"plugin": str(write_plugin(tmp_path)), "bad": str(tmp_path / "bad.py"),
             "broken": str(tmp_path / "broken.py")}
    (tmp_path / "bad.py").write_text(BAD_FILE)
    (tmp_path / "broken.py").write_text("import not_installed_anywhere_xyz\n")
    rc = main(["run", "--method", method.format(**names), "--dataset", "synthetic",
               "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 2 and needle.format(**names) in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def _fake_distribution(root: Path) -> Path:
    """An installed distribution (just its metadata) whose entry points name a method, a
    dataset and a backbone of the module ``fsbench_fake_plugin``."""
    site = root / "site"
    info = site / "fsbench_fake_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fsbench-fake-plugin\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[fsbench.methods]\nfakemeans = fsbench_fake_plugin:Means\n\n"
        "[fsbench.datasets]\nfakesynth = fsbench_fake_plugin:build\n\n"
        "[fsbench.backbones]\nfakenet = fsbench_fake_plugin:fakenet\n")
    (site / "fsbench_fake_plugin.py").write_text(LEARNER + textwrap.dedent('''
        from fsbench.registry import register_dataset

        IMPORTED = True


        @register_dataset("fakesynth", task="fscil", summary="synthetic, from a plug-in")
        def build(root, task, options):
            from fsbench.episodes.synthetic import build_synthetic
            return build_synthetic(root, task, options)


        def fakenet(in_channels, hidden=8):
            """a one-layer backbone"""
            net = torch.nn.Sequential(torch.nn.Conv2d(in_channels, hidden, 3),
                                      torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
            net.out_dim = hidden
            return net
    '''))
    (site / "fsbench_fake_plugin.yaml").write_text(PRESET)
    return site


def test_entry_points_are_listed_without_importing_and_loaded_on_use(tmp_path):
    site = _fake_distribution(tmp_path)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(site)!r})
        from fsbench.cli import main
        assert main(['list']) == 0
        assert 'torch' not in sys.modules and 'fsbench_fake_plugin' not in sys.modules
        rc = main(['run', '--method', 'fakemeans', '--dataset', 'fakesynth', '--no-progress',
                   '--out', {str(tmp_path / 'runs')!r}])
        assert rc == 0, rc
        rc = main(['run', '--method', 'ncm', '--dataset', 'fakesynth', '--no-progress',
                   '--set', 'train.epochs=1', '--set', 'backbone.name=fakenet',
                   '--out', {str(tmp_path / 'runs')!r}])
        assert rc == 0, rc
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fakemeans" in proc.stdout and "fakesynth" in proc.stdout and "fakenet" in proc.stdout
    results = sorted((tmp_path / "runs").glob("*/result.json"))
    methods = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in results}
    assert set(methods) == {"fakemeans", "ncm"}
    assert methods["ncm"]["config"]["backbone"]["name"] == "fakenet"
    assert methods["fakemeans"]["config"]["means"] == {"dim": 32}


def test_import_path_detection():
    assert plugins.is_import_path("pkg.mod:Cls") and plugins.is_import_path("a/b.py:C")
    assert not plugins.is_import_path("teen")
