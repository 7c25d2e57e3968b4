"""Positive and negative prompt sets (paper Sec. 3.2: the textual nodes are built from positive
prompts such as "a photo of a {class}." or LLM-written class descriptions, and from negative
prompts such as "a photo of no {class}.").

A prompt set turns C class names into C lists of exactly P sentences. Every sentence is encoded
separately and the cache keeps the per-prompt features, ``(C, P, d)`` and ``(C, Q, d)``, so
averaging choices and prompt ablations need no re-encoding. The set's name and a hash of its
sentences go into the cache sidecar.

Spec strings (``--pos-prompts``, ``--neg-prompts``), joined with ``+`` to concatenate sets:

- a registered template set: ``coop`` (CoOp's per-dataset template), ``ensemble7``
  (Tip-Adapter's seven ImageNet templates), ``photo`` ("a photo of a {}."), ``no``
  ("a photo of no {}."), ``neg4`` (four negative templates);
- ``template:<text with {}>``: one literal template;
- ``templates:<file>``: a text file, one template per line;
- ``descriptions:<file.json>``: a CuPL-style JSON file ``{class name: [sentence, ...]}``.

Classes with different numbers of descriptions are brought to a common P by cycling through
their own sentences in file order (``pad="cycle"``, the default) or by keeping the first
``min`` of each (``pad="truncate"``); the choice and the per-class counts are recorded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hgadapter.errors import UserError


class PromptError(UserError):
    """A prompt spec is unknown, malformed or does not cover the dataset's classes."""


# CoOp's hand-written template per dataset (CoOp, CUSTOM_TEMPLATES), keyed by our dataset names.
COOP_TEMPLATES: dict[str, str] = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}

_TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "photo": ("a photo of a {}.",),
    # The seven-template ImageNet ensemble of Tip-Adapter (selected from CLIP's 80).
    "ensemble7": (
        "itap of a {}.",
        "a bad photo of the {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
    ),
    "no": ("a photo of no {}.",),
    "neg4": (
        "a photo of no {}.",
        "a photo without a {}.",
        "a photo that is not a {}.",
        "there is no {} in this photo.",
    ),
}


def list_prompt_sets() -> list[str]:
    """Registered prompt-set names (``coop`` depends on the dataset)."""
    return ["coop", *_TEMPLATE_SETS]


def clean_classname(name: str) -> str:
    """CoOp's prompt-side clean-up: underscores become spaces, whitespace is collapsed."""
    return " ".join(name.replace("_", " ").split())


@dataclass(frozen=True)
class PromptSet:
    """C lists of P sentences plus the record of how they were made.

    Attributes:
        name: the spec it was built from.
        prompts: ``prompts[c][p]`` is sentence p of class c; every inner list has length P.
        info: how it was built (sources, padding rule, per-class description counts).
    """

    name: str
    prompts: list[list[str]]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_prompts(self) -> int:
        return len(self.prompts[0]) if self.prompts else 0

    @property
    def content_hash(self) -> str:
        """sha256 of the exact sentences, in order; any edit to a template or file changes it."""
        blob = json.dumps(self.prompts, ensure_ascii=False, separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()

    def meta(self) -> dict[str, Any]:
        return {"name": self.name, "hash": self.content_hash, "num_prompts": self.num_prompts, **self.info}


def _fill(template: str, classname: str) -> str:
    if "{}" not in template:
        raise PromptError(f"template {template!r} has no '{{}}' placeholder for the class name")
    return template.replace("{}", classname)


def _load_descriptions(path: Path, classnames: list[str], pad: str) -> tuple[list[list[str]], dict]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PromptError(f"description file {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise PromptError(f"description file {path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in raw.values()
    ):
        raise PromptError(f"description file {path} must map each class name to a list of sentences")
    # Match exactly first, then after CoOp's clean-up and lower-casing (files differ on "_" and case).
    by_key = {clean_classname(k).lower(): v for k, v in raw.items()}
    lists, missing = [], []
    for name in classnames:
        sentences = raw.get(name) or by_key.get(clean_classname(name).lower())
        if not sentences:
            missing.append(name)
        lists.append([" ".join(s.split()) for s in (sentences or [])])
    if missing:
        shown = ", ".join(repr(m) for m in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise PromptError(f"description file {path} has no sentences for {len(missing)} classes: {shown}{more}")
    counts = [len(s) for s in lists]
    if pad == "cycle":
        target = max(counts)
        lists = [[s[i % len(s)] for i in range(target)] for s in lists]
    elif pad == "truncate":
        target = min(counts)
        lists = [s[:target] for s in lists]
    else:
        raise PromptError(f"unknown description padding {pad!r}; available: ['cycle', 'truncate']")
    info = {
        "file": str(path),
        "pad": pad,
        "P": target,
        "min_count": min(counts),
        "max_count": max(counts),
        "counts": counts if min(counts) != max(counts) else None,
    }
    return lists, info


def _templates_for(part: str, dataset: str | None) -> tuple[str, ...] | None:
    if part == "coop":
        base = (dataset or "").split(":")[-1]
        return (COOP_TEMPLATES.get(base, "a photo of a {}."),)
    if part in _TEMPLATE_SETS:
        return _TEMPLATE_SETS[part]
    if part.startswith("template:"):
        return (part.split(":", 1)[1],)
    if part.startswith("templates:"):
        path = Path(part.split(":", 1)[1]).expanduser()
        if not path.is_file():
            raise PromptError(f"template file {path} does not exist")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise PromptError(f"template file {path} is empty")
        return tuple(lines)
    return None


def build_prompt_set(
    spec: str,
    classnames: list[str],
    *,
    dataset: str | None = None,
    pad: str = "cycle",
) -> PromptSet:
    """Build the prompt set ``spec`` (module docstring) for ``classnames``.

    Args:
        spec: e.g. ``"coop"``, ``"ensemble7+descriptions:cupl/dtd.json"``, ``"template:a {} photo."``.
        classnames: raw class names in label order; templates see them after :func:`clean_classname`.
        dataset: dataset name (``dtd``, ``coop:dtd``), used by ``coop``.
        pad: how descriptions are brought to a common count: ``cycle`` or ``truncate``.

    Raises:
        PromptError: unknown set, missing file, class without descriptions, template without ``{}``.
    """
    if not classnames:
        raise PromptError("cannot build prompts for an empty class list")
    parts = [p for p in spec.split("+") if p]
    if not parts:
        raise PromptError(f"empty prompt spec {spec!r}")
    cleaned = [clean_classname(c) for c in classnames]
    per_class: list[list[str]] = [[] for _ in classnames]
    sources: list[dict[str, Any]] = []
    for part in parts:
        templates = _templates_for(part, dataset)
        if templates is not None:
            for c, name in enumerate(cleaned):
                per_class[c].extend(_fill(t, name) for t in templates)
            sources.append({"kind": "templates", "spec": part, "templates": list(templates)})
        elif part.startswith("descriptions:"):
            path = Path(part.split(":", 1)[1]).expanduser()
            lists, info = _load_descriptions(path, classnames, pad)
            for c in range(len(classnames)):
                per_class[c].extend(lists[c])
            sources.append({"kind": "descriptions", "spec": part, **info})
        else:
            raise PromptError(
                f"unknown prompt set {part!r}; available: {list_prompt_sets()} or "
                f"'template:<text>', 'templates:<file>', 'descriptions:<file.json>'"
            )
    return PromptSet(name=spec, prompts=per_class, info={"sources": sources})
