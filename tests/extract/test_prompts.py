"""Prompt sets: templates, CuPL-style descriptions, padding and content hashes."""

from __future__ import annotations

import json

import pytest

from hgadapter.extract.prompts import PromptError, build_prompt_set, clean_classname, list_prompt_sets

CLASSES = ["red_square", "green circle"]


@pytest.mark.parametrize("name", list_prompt_sets())
def test_every_registered_set_builds(name):
    ps = build_prompt_set(name, CLASSES, dataset="dtd")
    assert len(ps.prompts) == 2 and ps.num_prompts >= 1
    assert all(len(p) == ps.num_prompts for p in ps.prompts)
    assert all("{}" not in s for p in ps.prompts for s in p)


def test_coop_template_depends_on_dataset_and_cleans_names():
    assert build_prompt_set("coop", CLASSES, dataset="coop:dtd").prompts == [["red square texture."], ["green circle texture."]]
    assert build_prompt_set("coop", CLASSES, dataset="eurosat").prompts[0] == ["a centered satellite photo of red square."]
    assert build_prompt_set("coop", CLASSES, dataset="imagefolder").prompts[1] == ["a photo of a green circle."]


def test_sets_concatenate_with_plus():
    ps = build_prompt_set("photo+ensemble7+template:{} art.", CLASSES)
    assert ps.num_prompts == 9
    assert ps.prompts[0][0] == "a photo of a red square." and ps.prompts[0][-1] == "red square art."


def test_descriptions_cycle_and_truncate(tmp_path):
    path = tmp_path / "cupl.json"
    # keys as CuPL files write them; matched after clean-up and lower-casing
    path.write_text(json.dumps({"Red Square": ["r1", "r2", "r3"], "green_circle": ["g1"]}))
    cyc = build_prompt_set(f"descriptions:{path}", CLASSES)
    assert cyc.prompts == [["r1", "r2", "r3"], ["g1", "g1", "g1"]]
    src = cyc.info["sources"][0]
    assert src["pad"] == "cycle" and src["counts"] == [3, 1] and src["P"] == 3
    trunc = build_prompt_set(f"photo+descriptions:{path}", CLASSES, pad="truncate")
    assert trunc.prompts == [["a photo of a red square.", "r1"], ["a photo of a green circle.", "g1"]]


def test_descriptions_missing_class_is_named(tmp_path):
    path = tmp_path / "cupl.json"
    path.write_text(json.dumps({"red_square": ["r1"]}))
    with pytest.raises(PromptError, match=r"no sentences for 1 classes: 'green circle'"):
        build_prompt_set(f"descriptions:{path}", CLASSES)


def test_bad_specs():
    with pytest.raises(PromptError, match=r"unknown prompt set 'nope'; available: \['coop'"):
        build_prompt_set("nope", CLASSES)
    with pytest.raises(PromptError, match="no '{}' placeholder"):
        build_prompt_set("template:a photo", CLASSES)
    with pytest.raises(PromptError, match="does not exist"):
        build_prompt_set("descriptions:/no/such/file.json", CLASSES)


def test_templates_file_and_hash(tmp_path):
    path = tmp_path / "neg.txt"
    path.write_text("a photo of no {}.\n\nnot a {}.\n")
    ps = build_prompt_set(f"templates:{path}", CLASSES)
    assert ps.prompts[1] == ["a photo of no green circle.", "not a green circle."]
    same = build_prompt_set("template:a photo of no {}.+template:not a {}.", CLASSES)
    assert ps.content_hash == same.content_hash  # the hash covers the sentences, not the spec
    other = build_prompt_set("template:a photo of no {}.", CLASSES)
    assert other.content_hash != ps.content_hash
    meta = ps.meta()
    assert meta["hash"] == ps.content_hash and meta["num_prompts"] == 2


def test_clean_classname():
    assert clean_classname("Apply_Eye_Makeup") == "Apply Eye Makeup"
    assert clean_classname(" a  b_c ") == "a b c"
