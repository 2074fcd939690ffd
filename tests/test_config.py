from pathlib import Path

import pytest

from fsbench import config
from fsbench.errors import UserError


def test_resolve_merges_defaults_dataset_method_and_overrides():
    cfg = config.resolve("ncm", "glyphs", overrides=["train.epochs=2", "classifier.scale=8.5"])
    assert cfg["train"]["epochs"] == 2 and cfg["classifier"]["scale"] == 8.5
    assert cfg["transforms"]["normalize"]["mean"] == [0.5]  # from datasets/glyphs.yaml
    assert cfg["seed"] == 0 and cfg["select_on_test"] is False  # from defaults.yaml
    assert cfg["method"] == "ncm" and cfg["dataset"] == "glyphs"
    assert config.config_hash(cfg) != config.config_hash(config.resolve("ncm", "glyphs"))


def test_unknown_set_key_names_the_key():
    with pytest.raises(UserError, match=r"train\.epoch.*unknown key 'epoch'.*epochs"):
        config.resolve("ncm", "glyphs", overrides=["train.epoch=3"])
    with pytest.raises(UserError, match="key=value"):
        config.resolve("ncm", "glyphs", overrides=["train.epochs"])


def test_user_preset_file(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("train:\n  epochs: 1\n")
    assert config.resolve("ncm", "glyphs", preset_file=str(p))["train"]["epochs"] == 1
    p.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="mine.yaml.*not valid YAML"):
        config.resolve("ncm", "glyphs", preset_file=str(p))
    p.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must be a mapping"):
        config.resolve("ncm", "glyphs", preset_file=str(p))
    with pytest.raises(UserError, match="not found"):
        config.resolve("ncm", "glyphs", preset_file=str(tmp_path / "missing.yaml"))


def _preset_pairs():
    root = Path(config.__file__).parent / "presets"
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "datasets"):
        for f in sorted(d.glob("*.yaml")):
            if f.stem != "default":
                yield d.name, f.stem


def test_every_packaged_preset_passes_its_method_blocks():
    """Each method's declared blocks (``config_blocks``, pydantic) accept every packaged preset
    of it, so a preset cannot carry a key or value its method would refuse."""
    from fsbench.configschema import validate_block
    from fsbench.registry import METHODS

    checked = 0
    for method, dataset in _preset_pairs():
        blocks = getattr(METHODS.get(method).obj, "config_blocks", {})
        cfg = config.resolve(method, dataset)
        for key, model in blocks.items():
            validate_block(model, cfg if key == "" else cfg.get(key), key)
            checked += 1
    assert checked >= 30, checked  # beclr, cpe_clip, dvla_rl, mamba_fscil, teen presets


@pytest.mark.parametrize("method,dataset,setting,word", [
    ("beclr", "synthetic", "dyce.topk=0", "dyce.topk"),
    ("beclr", "synthetic", "dyce.variant=papr", "dyce.variant"),
    ("beclr", "synthetic", "mask.ratio=1.5", "mask.ratio"),
    ("beclr", "synthetic", "loss.temp=0", "loss.temp"),
    ("beclr", "synthetic", "train.teacher_momentum=2.0", "train.teacher_momentum"),
    ("beclr", "synthetic", "proj_dim=0", "proj_dim"),
    ("cpe_clip", "glyphs", "regularization=freez", "regularization"),
    ("cpe_clip", "glyphs", "train.base.epochs=-1", "train.base.epochs"),
    ("cpe_clip", "glyphs", "prompts.vision_mode=sum", "prompts.vision_mode"),
    ("cpe_clip", "glyphs", "logit_scale=.nan", "logit_scale"),
    ("mamba_fscil", "glyphs", "neck.d_state=0", "neck.d_state"),
    ("mamba_fscil", "glyphs", "incremental.mixup_prob=1.5", "incremental.mixup_prob"),
    ("mamba_fscil", "glyphs", "incremental.lr=[0.1,-1]", "incremental.lr"),
    ("dvla_rl", "glyphs", "rla.alpha_fixed=2.0", "rla.alpha_fixed"),
    ("dvla_rl", "glyphs", "rla.policy=gauss", "rla.policy"),
    ("dvla_rl", "glyphs", "meta.way=1", "meta.way"),
    ("dvla_rl", "glyphs", "pretrain.label_smoothing=1.0", "pretrain.label_smoothing"),
])
def test_method_block_errors_are_one_line_before_any_run_folder(tmp_path, capsys, method,
                                                                dataset, setting, word):
    from fsbench.cli import main

    code = main(["run", "--method", method, "--dataset", dataset, "--set", setting, "--out",
                 str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and word in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and not any(tmp_path.iterdir())
