"""Prompt sets: built-in COCO-5k / PartiPrompts, text, COCO JSON/JSONL caption rules, fingerprints."""

import hashlib
import json
from pathlib import Path

import pytest

from fastgen.data import DataError, load_prompt_set, prompts_sha256
from fastgen.data.prompts import BUILTIN_PROMPT_SETS, sample_prompts

SHARED_COCO_JSONL = Path("/work/shared/data/prompts/coco2017_val_captions.jsonl")


def test_builtin_sets():
    coco = load_prompt_set("coco2017_5k")
    assert len(coco) == 5000 and coco[0] == "A woman stands in the dining area at the table."
    parti = load_prompt_set("parti")
    assert len(parti) == 1632 and parti[:2] == ["bond", "element"]
    assert load_prompt_set("parti", n=3) == parti[:3]
    assert (BUILTIN_PROMPT_SETS["parti"].parent / "ATTRIBUTION.md").is_file()


@pytest.mark.skipif(not SHARED_COCO_JSONL.is_file(), reason="COCO val2017 captions JSONL not on this machine")
def test_first_caption_rule_reproduces_shipped_coco_5k():
    assert load_prompt_set(SHARED_COCO_JSONL, caption_rule="first") == load_prompt_set("coco2017_5k")
    assert len(load_prompt_set(SHARED_COCO_JSONL, caption_rule="all")) == 25014


def test_coco_json_caption_rules(tmp_path):
    annotations = [
        {"image_id": 9, "id": 30, "caption": "nine, later caption"},
        {"image_id": 2, "id": 50, "caption": "two, later caption"},
        {"image_id": 9, "id": 4, "caption": "nine, first caption \n"},
        {"image_id": 2, "id": 7, "caption": " two, first caption"},
    ]
    path = tmp_path / "captions_val2017.json"
    path.write_text(json.dumps({"images": [], "annotations": annotations}))
    assert load_prompt_set(path) == ["two, first caption", "nine, first caption"]
    assert load_prompt_set(path, caption_rule="all") == [
        "two, first caption",
        "two, later caption",
        "nine, first caption",
        "nine, later caption",
    ]
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text("\n".join(json.dumps(a) for a in annotations))
    assert load_prompt_set(jsonl) == load_prompt_set(path)
    with pytest.raises(DataError, match="caption_rule='random'"):
        load_prompt_set(path, caption_rule="random")


def test_text_and_tsv_files(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("a cat\n\n  a dog  \n\n")
    assert load_prompt_set(text) == ["a cat", "a dog"]
    tsv = tmp_path / "p.tsv"
    tsv.write_text("Prompt\tCategory\nan owl\tAnimals\n")
    assert load_prompt_set(tsv) == ["an owl"]


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="neither a built-in name"):
        load_prompt_set("coco2014")
    csv = tmp_path / "p.csv"
    csv.write_text("a")
    with pytest.raises(DataError, match="unknown prompt file type '.csv'"):
        load_prompt_set(csv)
    with pytest.raises(DataError, match="n=2000"):
        load_prompt_set("parti", n=2000)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_id": 1, "id": 1, "caption": "x"}\n{"image_id": 2, "id": 2}\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 2: missing key\(s\) \['caption'\]"):
        load_prompt_set(bad)
    bad.write_text('{"image_id": 1, "id": 1, "caption": "x"}\nnot json\n')
    with pytest.raises(DataError, match="bad.jsonl line 2: not valid JSON"):
        load_prompt_set(bad)
    tsv = tmp_path / "p.tsv"
    tsv.write_text("Text\nan owl\n")
    with pytest.raises(DataError, match="no 'Prompt' column"):
        load_prompt_set(tsv)


def test_prompts_sha256():
    assert prompts_sha256(["a", "b"]) == hashlib.sha256(b"a\nb").hexdigest()
    assert prompts_sha256(["a", "b"]) != prompts_sha256(["b", "a"])


def test_sample_prompts_seeded_and_cycling():
    prompts = ["a", "b", "c"]
    drawn = sample_prompts(prompts, 7, seed=0)
    assert drawn == sample_prompts(prompts, 7, seed=0)
    assert sorted(drawn[:3]) == prompts and sorted(drawn[3:6]) == prompts
    with pytest.raises(DataError, match="empty"):
        sample_prompts([], 2)
