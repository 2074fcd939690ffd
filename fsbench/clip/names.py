"""Human-readable class names for text encoders, from what each dataset already stores.

The datasets keep their native names in ``ImageDataset.class_names``; :func:`readable_class_name`
turns each into words:

* CIFAR-100 (``meta`` fine names): ``aquarium_fish`` -> ``aquarium fish``;
* CUB-200 (``classes.txt``): ``001.Black_footed_Albatross`` -> ``black footed albatross``;
* miniImageNet (wnids): ``n01532829`` -> ``house finch`` (first WordNet lemma, the table
  ``miniimagenet_names.json`` shipped beside this module);
* glyphs (Unicode names): ``LATIN SMALL LETTER A WITH GRAVE`` -> ``latin small letter a with
  grave`` (:func:`unicode_caption`).

Names are not labels: a learner may read them for every class of a session (the FSCIL runner
hands them over in ``session.data.class_names``, in class-position order) without seeing any test
image's label.
"""
from __future__ import annotations

import functools
import json
import re
import unicodedata
from pathlib import Path

_WNID = re.compile(r"^n\d{8}$")
_CUB = re.compile(r"^\d{3}\.(.+)$")


def unicode_caption(char_or_codepoint) -> str:
    """The lower-cased Unicode name of a character, code point or (upper-case) Unicode name:
    ``"à"``, ``0xE0`` and ``"LATIN SMALL LETTER A WITH GRAVE"`` all give
    ``"latin small letter a with grave"``."""
    c = char_or_codepoint
    if isinstance(c, int):
        c = chr(c)
    if not isinstance(c, str) or not c:
        raise ValueError(f"unicode_caption: expected a character, code point or name, got {c!r}")
    if len(c) == 1:
        name = unicodedata.name(c, None)
        if name is None:
            raise ValueError(f"unicode_caption: U+{ord(c):04X} has no Unicode name")
        return name.lower()
    try:
        unicodedata.lookup(c)
    except KeyError:
        raise ValueError(f"unicode_caption: {c!r} is not a Unicode character name") from None
    return c.lower()


@functools.lru_cache(maxsize=1)
def miniimagenet_names() -> dict:
    return json.loads(Path(__file__).with_name("miniimagenet_names.json").read_text())["names"]


def readable_class_name(raw: str) -> str:
    """Words for a dataset's native class name (see the module docstring)."""
    raw = str(raw)
    if _WNID.match(raw):
        return miniimagenet_names().get(raw, raw)
    m = _CUB.match(raw)
    if m:
        return m.group(1).replace("_", " ").lower()
    if raw.isupper() and " " in raw:
        try:
            return unicode_caption(raw)
        except ValueError:
            pass
    return raw.replace("_", " ")


def class_names(bench_or_data) -> list[str] | dict[str, list[str]]:
    """Readable names of a benchmark's classes.

    * an ``ImageDataset`` (e.g. ``session.data`` or an FSL split): one name per label;
    * an FSCIL benchmark: one name per class *position* (the order sessions use);
    * an FSL benchmark: ``{"train": [...], "val": [...], "test": [...]}`` per label of each split.
    """
    from fsbench.episodes.base import FSCILBenchmark, FSLBenchmark

    if isinstance(bench_or_data, FSCILBenchmark):
        native = bench_or_data.train.class_names
        return [readable_class_name(native[c]) for c in bench_or_data.protocol.class_order]
    if isinstance(bench_or_data, FSLBenchmark):
        return {k: [readable_class_name(n) for n in ds.class_names]
                for k, ds in (("train", bench_or_data.train), ("val", bench_or_data.val),
                              ("test", bench_or_data.test)) if ds is not None}
    return [readable_class_name(n) for n in bench_or_data.class_names]
