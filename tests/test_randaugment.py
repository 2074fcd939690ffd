"""BECLR's RandAugment is timm's ``rand-n2-m10-mstd0.5`` (the official code's), not torchvision's
weaker always-on RandAugment: the op set and probabilities are checked, and the fsbench transform
equals timm's applied to the same PIL image with the same random state."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from fsbench import config
from fsbench.transforms import build


def test_op_set_and_probabilities_are_the_official_ones():
    (step,) = build([{"name": "timm_rand_augment"}], None, 3).steps
    ra = step.timm
    names = {op.name for op in ra.ops}
    assert ra.num_layers == 2 and len(ra.ops) == 15 and {"Invert", "SolarizeAdd"} <= names
    assert all(op.prob == 0.5 and op.magnitude == 10 and op.magnitude_std == 0.5 for op in ra.ops)
    assert ra.ops[0].hparams["img_mean"] == (124, 116, 104)


@pytest.mark.parametrize("channels", [3, 1])
def test_equals_timm_on_the_same_image_and_seed(channels):
    from timm.data.auto_augment import rand_augment_transform

    rng = np.random.default_rng(0)
    (step,) = build([{"name": "timm_rand_augment"}], None, channels).steps
    fill = (124, 116, 104) if channels == 3 else 124
    ref = rand_augment_transform("rand-n2-m10-mstd0.5",
                                 {"translate_const": 100, "img_mean": fill})
    changed = 0
    for i in range(20):
        img = rng.integers(0, 256, (32, 32, channels), dtype=np.uint8)
        pil = Image.fromarray(img[..., 0] if channels == 1 else img)
        random.seed(i)
        np.random.seed(i)  # timm draws the ops with numpy, probabilities with random
        want = np.asarray(ref(pil))
        random.seed(i)
        np.random.seed(i)
        got = step(torch.from_numpy(img).permute(2, 0, 1)).permute(1, 2, 0).numpy()
        assert np.array_equal(got.reshape(want.shape), want)
        changed += not np.array_equal(want.reshape(img.shape), img)
    assert changed >= 10  # each of the 2 ops fires with p = 0.5: most images change


def test_beclr_standard_presets_use_it():
    for ds in ("miniimagenet", "tieredimagenet", "cifarfs", "fc100"):
        cfg = config.resolve("beclr", ds)
        names = [t["name"] for t in cfg["transforms"]["train"]]
        assert "timm_rand_augment" in names and "rand_augment" not in names, ds


def test_bad_config_string_is_a_user_error():
    from fsbench.errors import UserError
    with pytest.raises(UserError, match="timm_rand_augment"):
        build([{"name": "timm_rand_augment", "config": "nonsense-x"}], None, 3)
