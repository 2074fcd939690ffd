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
