"""fsbench.clip: class names, the OpenAI-weights loader (local files only), text encoding and the
offline glyphs CLIP (trained on a small synthetic set here; on real glyphs in test_cpe_clip.py)."""
import numpy as np
import pytest
import torch

from fsbench.clip import (ClipBundle, class_names, encode_texts, glyphs_clip, load_openai_clip,
                          readable_class_name, unicode_caption)
from fsbench.clip.glyphs import MODEL_NAME, untrained_bundle
from fsbench.episodes.base import ArrayDataset
from fsbench.errors import UserError


def test_unicode_caption_forms():
    want = "latin small letter a with grave"
    assert unicode_caption("à") == want
    assert unicode_caption(0xE0) == want
    assert unicode_caption("LATIN SMALL LETTER A WITH GRAVE") == want
    assert unicode_caption("Ω") == "greek capital letter omega"
    for bad in ("not a letter name", "", 0xE000):
        with pytest.raises(ValueError):
            unicode_caption(bad)


def test_readable_class_names_per_dataset():
    assert readable_class_name("aquarium_fish") == "aquarium fish"  # CIFAR-100 meta
    assert readable_class_name("001.Black_footed_Albatross") == "black footed albatross"  # CUB
    assert readable_class_name("n01532829") == "house finch"  # miniImageNet wnid table
    assert readable_class_name("n13133613") == "ear"
    assert readable_class_name("GREEK SMALL LETTER ALPHA") == "greek small letter alpha"
    ds = ArrayDataset(np.zeros((2, 4, 4), np.uint8), [0, 1], ["n02099601", "CYRILLIC CAPITAL "
                                                                           "LETTER ZHE"])
    assert class_names(ds) == ["golden retriever", "cyrillic capital letter zhe"]


def test_miniimagenet_table_covers_every_wnid():
    from fsbench.clip.names import miniimagenet_names
    from fsbench.episodes.miniimagenet import wnids
    table = miniimagenet_names()
    assert sorted(table) == sorted(wnids()) and len(table) == 100
    assert all(v and not v.startswith("n0") for v in table.values())


def test_openai_loader_needs_a_local_file(tmp_path):
    with pytest.raises(UserError, match=r"ViT-B-16\.pt.*clip\.weights"):
        load_openai_clip("ViT-B-16", None)
    with pytest.raises(UserError, match="does not exist.*ViT-B-16.pt"):
        load_openai_clip("ViT-B-16", str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable CLIP checkpoint"):
        load_openai_clip("ViT-B-16", str(bad))
    with pytest.raises(UserError, match="not an open_clip model"):
        load_openai_clip("ViT-Q-99", str(bad))


def test_openai_loader_reads_a_state_dict_and_freezes(tmp_path):
    """A checkpoint in OpenAI/open_clip key layout (the tiny glyphs architecture stands in for
    ViT-B-16 so the test stays small) loads strictly, frozen, in eval mode."""
    src = untrained_bundle().model
    path = tmp_path / "tiny.pt"
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, path)
    b = load_openai_clip(MODEL_NAME, str(path))
    assert isinstance(b, ClipBundle) and b.provenance == f"openai:{path}"
    assert not b.model.training
    assert not any(p.requires_grad for p in b.model.parameters())
    for (k, v), (k2, v2) in zip(src.state_dict().items(), b.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    other = tmp_path / "other.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, other)
    with pytest.raises(UserError, match="does not match"):
        load_openai_clip(MODEL_NAME, str(other))


def test_encode_texts_is_normalised_and_matches_open_clip():
    b = untrained_bundle()
    texts = ["latin small letter a", "greek capital letter omega", "x."]
    f = encode_texts(b, texts, batch=2)
    assert f.shape == (3, b.model.text_projection.shape[1])
    assert torch.allclose(f.norm(dim=-1), torch.ones(3), atol=1e-5)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(b.model.encode_text(b.tokenizer(texts)), dim=-1)
    assert torch.allclose(f, ref, atol=1e-5)


def _toy(n_per=24, seed=0):
    """4 classes of distinct stroke patterns (bars / a cross / a box) with jitter."""
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for c in range(4):
        for _ in range(n_per):
            im = np.zeros((32, 32), np.uint8)
            o = rng.integers(-3, 4, 2) + 16
            if c == 0:
                im[o[0] - 10:o[0] + 10, o[1] - 2:o[1] + 2] = 255
            elif c == 1:
                im[o[0] - 2:o[0] + 2, o[1] - 10:o[1] + 10] = 255
            elif c == 2:
                im[o[0] - 10:o[0] + 10, o[1] - 2:o[1] + 2] = 255
                im[o[0] - 2:o[0] + 2, o[1] - 10:o[1] + 10] = 255
            else:
                im[o[0] - 9:o[0] + 9, o[1] - 9:o[1] + 9] = 255
                im[o[0] - 6:o[0] + 6, o[1] - 6:o[1] + 6] = 0
            imgs.append(im)
            labels.append(c)
    return np.stack(imgs), np.array(labels)


def test_glyphs_clip_trains_caches_and_keeps_the_rng(tmp_path, capsys):
    imgs, labels = _toy()
    caps = ["vertical bar", "horizontal bar", "plus sign", "white square"]
    state = torch.get_rng_state()
    b = glyphs_clip(imgs, caps, labels, seed=3, cache_dir=tmp_path, train={"steps": 20})
    assert torch.equal(torch.get_rng_state(), state)  # a cache hit and a fresh model agree
    err = capsys.readouterr().err
    assert "zero-shot accuracy" in err and "4 training classes" in err
    assert b.provenance.startswith("glyphs-clip:") and len(b.provenance) == len("glyphs-clip:") + 12
    assert not any(p.requires_grad for p in b.model.parameters())
    files = list(tmp_path.glob("glyphs-clip-*.pt"))
    assert len(files) == 1
    again = glyphs_clip(imgs, caps, labels, seed=3, cache_dir=tmp_path, train={"steps": 20})
    assert "from cache" in capsys.readouterr().err
    for v, w in zip(b.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(v, w)
    # another seed is another model (another cache entry)
    glyphs_clip(imgs, caps, labels, seed=4, cache_dir=tmp_path, train={"steps": 2})
    assert len(list(tmp_path.glob("glyphs-clip-*.pt"))) == 2
    # an ImageDataset works too, and a corrupt cache file is retrained, not fatal
    files[0].write_bytes(b"garbage")
    ds = ArrayDataset(imgs, labels, caps)
    glyphs_clip(ds, caps, seed=3, cache_dir=tmp_path, train={"steps": 20})
    assert "unreadable" in capsys.readouterr().err
