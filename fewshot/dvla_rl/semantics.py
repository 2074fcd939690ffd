"""DVLA-RL Dual-level Semantic Construction (DSC, paper §3.1): attribute sources, progressive
top-k attribute selection, class descriptions and the per-class text features.

Attribute sources share one small interface (:class:`AttributeSource`):
``prompt_name(name)`` (the class as it reads in "A photo of a {CLASS}"), ``attributes(name)``
(the candidate set A) and ``description(name)`` (the high-level sentence D, or None).

* :class:`JsonAttributes` - a JSON file written offline, e.g. by a multimodal LLM as the paper
  does with Qwen2.5-VL-32B. Schema (``fsbench.dvla_rl.attributes/1``)::

      {"schema": "fsbench.dvla_rl.attributes/1",
       "classes": {"<class name as the dataset spells it>": {
           "name": "<optional display name for the prompt>",
           "attributes": ["<short noun phrase>", ...],      # >= 1 non-empty strings
           "description": "<optional one-sentence description>"}}}

  Prompt template for producing it (:data:`LLM_PROMPT`), one call per class with a few of its
  training images attached.
* :class:`GlyphAttributes` - for ``glyphs``: attributes read from the Unicode character name and
  properties (script, case, base letter, diacritics, decomposition), offline and exact.

:func:`progressive_topk` is the paper's selection: T0 = "A photo of a {CLASS}"; each round the
remaining attribute most similar (cosine, CLIP text space) to the current template is taken and
the template becomes "T, which has {attribute}". Choices where the paper is silent: the template
is extended cumulatively (round 2 reads "A photo of a X, which has a1, which has a2"); ties go to
the earlier candidate; duplicate candidates are dropped first; when a class has fewer than k
candidates all are kept (in selection order) and the token rows are padded by repeating the
description.
"""
from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from fsbench.errors import UserError

SCHEMA = "fsbench.dvla_rl.attributes/1"
TEMPLATE = "A photo of a {}"
EXTEND = "{}, which has {}"

LLM_PROMPT = """\
You see {n} images of the class "{name}". What are the key distinguishing attributes of the \
{name} in the given images? Answer with JSON only: {{"attributes": [10 to 20 short noun \
phrases, each one visual property, e.g. "a red crown"], "description": "one sentence that \
combines the most distinctive attributes"}}."""

Encoder = Callable[[Sequence[str]], torch.Tensor]  # texts -> (n, D), any scale


class AttributeSource:
    """Candidate attributes and an optional description per class name."""

    label = "attributes"

    def prompt_name(self, name: str) -> str:
        return name

    def attributes(self, name: str) -> list[str]:
        raise NotImplementedError

    def description(self, name: str) -> str | None:
        return None


class JsonAttributes(AttributeSource):
    """Per-class attributes and description from a JSON file (schema in the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.label = f"json:{self.path.name}"
        where = f"dsc.source: attributes file {self.path}"
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            raise UserError(f"{where} not found; write it offline (see the attribute JSON schema "
                            f"in the README) and pass its path with --set dsc.source=PATH") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{where}: cannot read ({e})") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON (line {e.lineno}: {e.msg})") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA \
                or not isinstance(data.get("classes"), dict) or not data["classes"]:
            raise UserError(f"{where}: expected {{\"schema\": \"{SCHEMA}\", \"classes\": "
                            f"{{name: {{\"attributes\": [...], \"description\": ...}}}}}}")
        self.classes = {}
        for name, entry in data["classes"].items():
            attrs = entry.get("attributes") if isinstance(entry, dict) else None
            if not isinstance(attrs, list) or not attrs or \
                    not all(isinstance(a, str) and a.strip() for a in attrs):
                raise UserError(f"{where}: class {name!r} needs \"attributes\": a non-empty list "
                                f"of non-empty strings")
            for key in ("description", "name"):
                if entry.get(key) is not None and not (isinstance(entry[key], str)
                                                       and entry[key].strip()):
                    raise UserError(f"{where}: class {name!r}: \"{key}\" must be a non-empty "
                                    f"string or absent")
            self.classes[name] = entry

    def _entry(self, name: str) -> dict:
        if name not in self.classes:
            raise UserError(f"attributes file {self.path}: no entry for class {name!r}; add it "
                            f"({len(self.classes)} classes are listed)")
        return self.classes[name]

    def prompt_name(self, name: str) -> str:
        return self._entry(name).get("name") or name

    def attributes(self, name: str) -> list[str]:
        return [a.strip() for a in self._entry(name)["attributes"]]

    def description(self, name: str) -> str | None:
        return self._entry(name).get("description")


_CASES = {"CAPITAL": "capital", "SMALL": "small"}
_KINDS = ("LETTER", "LIGATURE")


def _char_of(name: str) -> str | None:
    try:
        return unicodedata.lookup(name)
    except KeyError:
        return None


class GlyphAttributes(AttributeSource):
    """Attributes of a letter from its Unicode name and properties (``glyphs``).

    ``"LATIN SMALL LETTER A WITH GRAVE"`` -> ``["latin", "small", "letter a", "with grave",
    "lowercase", "base letter a"]``: script, case (from the name, else the general category),
    base letter, one attribute per diacritic (``WITH X AND Y`` gives two), the letter case
    category, and the base letter of the canonical decomposition when there is one.
    """

    label = "glyphs-unicode"

    def prompt_name(self, name: str) -> str:
        return name.lower()

    def attributes(self, name: str) -> list[str]:
        words = name.split()
        kind_at = next((i for i, w in enumerate(words) if w in _KINDS), None)
        if kind_at is None:
            return [name.lower()]
        head, tail = words[:kind_at], words[kind_at:]
        case = next((_CASES[w] for w in head if w in _CASES), None)
        script = " ".join(w for w in head if w not in _CASES).lower()
        text = " ".join(tail)
        base, _, marks = text.partition(" WITH ")
        out = [script] if script else []
        ch = _char_of(name)
        cat = unicodedata.category(ch) if ch else ""
        if case is None and cat in ("Lu", "Ll"):
            case = "capital" if cat == "Lu" else "small"
        if case:
            out.append(case)
        out.append(base.lower())
        out += [f"with {m.strip().lower()}" for m in re.split(r" AND ", marks) if m.strip()]
        if cat in ("Lu", "Ll"):
            out.append("uppercase" if cat == "Lu" else "lowercase")
        if ch:
            dec = unicodedata.decomposition(ch).split()
            if dec and not dec[0].startswith("<"):
                try:
                    bname = unicodedata.name(chr(int(dec[0], 16)))
                except ValueError:
                    bname = ""
                kind = next((k for k in _KINDS if f" {k} " in f" {bname} "), None)
                if kind:
                    rest = bname.split(f"{kind} ", 1)[1].split(" WITH ")[0]
                    out.append(f"base {kind.lower()} {rest.lower()}")
        seen, uniq = set(), []
        for a in out:
            if a and a not in seen:
                seen.add(a)
                uniq.append(a)
        return uniq


def build_source(spec: str | None, dataset: str) -> AttributeSource:
    """``dsc.source``: ``auto`` (glyphs -> unicode, else a JSON path is needed), ``unicode`` or a
    JSON file path."""
    if spec in (None, "", "auto"):
        if dataset == "glyphs":
            return GlyphAttributes()
        raise UserError(f"dsc.source: {dataset} needs an attribute JSON file; produce it offline "
                        f"(README: DVLA-RL attribute JSON) and pass --set dsc.source=PATH")
    if spec == "unicode":
        return GlyphAttributes()
    return JsonAttributes(spec)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def progressive_topk(encode: Encoder, prompt_name: str, candidates: Sequence[str],
                     k: int) -> list[str]:
    """The k attributes chosen by progressive top-k (order of selection)."""
    return progressive_topk_many(encode, [prompt_name], [candidates], k)[0]


def progressive_topk_many(encode: Encoder, prompt_names: Sequence[str],
                          candidates: Sequence[Sequence[str]], k: int) -> list[list[str]]:
    """:func:`progressive_topk` for many classes at once: one text-encoder batch per round."""
    cands = [list(dict.fromkeys(c)) for c in candidates]
    offs = [0]
    for c in cands:
        offs.append(offs[-1] + len(c))
    flat = [a for c in cands for a in c]
    if not flat or k <= 0:
        return [[] for _ in cands]
    feats = _unit(encode(flat))
    templates = [TEMPLATE.format(p) for p in prompt_names]
    chosen: list[list[int]] = [[] for _ in cands]
    for _ in range(k):
        active = [i for i, c in enumerate(cands) if len(chosen[i]) < len(c)]
        if not active:
            break
        t = _unit(encode([templates[i] for i in active]))
        for row, i in enumerate(active):
            sc = feats[offs[i]:offs[i + 1]] @ t[row]
            if chosen[i]:
                sc[chosen[i]] = float("-inf")
            j = int(torch.argmax(sc))  # first maximum on ties
            chosen[i].append(j)
            templates[i] = EXTEND.format(templates[i], cands[i][j])
    return [[c[j] for j in ch] for c, ch in zip(cands, chosen)]


def template_description(prompt_name: str, attributes: Sequence[str]) -> str:
    """The description used when the source has none: one sentence over the selected attributes."""
    if not attributes:
        return TEMPLATE.format(prompt_name) + "."
    listed = attributes[0] if len(attributes) == 1 else \
        ", ".join(attributes[:-1]) + " and " + attributes[-1]
    return f"A {prompt_name}, which has {listed}."


class ClassSemantics:
    """Text features per class, computed once and cached: ``tokens(name)`` -> ``(k + 1, D)`` unit
    rows (k selected attributes, then the description), ``target(name)`` -> ``(D,)`` the class
    prompt "A photo of a {CLASS}" (t* of the reward)."""

    def __init__(self, source: AttributeSource, encode: Encoder, k: int):
        self.source, self.encode, self.k = source, encode, int(k)
        self._tokens: dict[str, torch.Tensor] = {}
        self._target: dict[str, torch.Tensor] = {}
        self.selected: dict[str, list[str]] = {}
        self.descriptions: dict[str, str] = {}

    def prepare(self, names: Sequence[str]) -> None:
        """Select, describe and encode every class not cached yet (batched over classes)."""
        todo = [n for n in dict.fromkeys(names) if n not in self._tokens]
        if not todo:
            return
        pns = [self.source.prompt_name(n) for n in todo]
        with torch.no_grad():
            sel = progressive_topk_many(self.encode, pns,
                                        [self.source.attributes(n) for n in todo], self.k)
            descs = [self.source.description(n) or template_description(pn, a)
                     for n, pn, a in zip(todo, pns, sel)]
            texts = [t for a, d, pn in zip(sel, descs, pns) for t in a + [d, TEMPLATE.format(pn)]]
            rows = _unit(self.encode(texts)).cpu()
        at = 0
        for n, a, d in zip(todo, sel, descs):
            r = rows[at:at + len(a) + 2]
            at += len(a) + 2
            tok = r[:-1]
            if len(a) < self.k:  # pad with the description row
                tok = torch.cat([tok[:-1]] + [tok[-1:]] * (self.k - len(a) + 1))
            self._tokens[n], self._target[n] = tok, r[-1]
            self.selected[n], self.descriptions[n] = a, d

    def tokens(self, names: Sequence[str]) -> torch.Tensor:
        self.prepare(names)
        return torch.stack([self._tokens[n] for n in names])

    def targets(self, names: Sequence[str]) -> torch.Tensor:
        self.prepare(names)
        return torch.stack([self._target[n] for n in names])
