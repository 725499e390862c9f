"""Prompt sets for evaluation: plain text, COCO captions (JSON / JSONL), PartiPrompts, and built-in names.

`load_prompt_set(source)` accepts
  * a built-in name: "coco2017_5k" (COCO 2017 val, one caption per image, 5,000 prompts) or
    "parti" (PartiPrompts, 1,632 prompts); both ship in fastgen/assets/prompts (see ATTRIBUTION.md there);
  * a ``.txt`` file: one prompt per line, blank lines skipped;
  * a ``.json`` file in the ``captions_val2017.json`` format: {"annotations": [{"image_id", "id", "caption"}]};
  * a ``.jsonl`` file with one {"image_id", "id", "caption"} object per line;
  * a ``.tsv`` file with a "Prompt" column (PartiPrompts).

COCO caption rules (record the rule with the results, it changes FID/CLIP numbers):
  * "first": per image, the caption with the lowest caption id; images sorted by image id.
    On the val2017 annotations this reproduces the shipped "coco2017_5k" list exactly.
  * "all": every caption, sorted by (image id, caption id).
Captions are stripped of surrounding whitespace (raw COCO captions carry trailing spaces/newlines).
"""

import csv
import hashlib
import json
from pathlib import Path

import torch

from fastgen.data.errors import DataError
from fastgen.data.loading import read_jsonl, require_keys

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "prompts"
BUILTIN_PROMPT_SETS = {
    "coco2017_5k": ASSET_DIR / "coco2017_val_5k_first_caption.txt",
    "parti": ASSET_DIR / "PartiPrompts.tsv",
}
CAPTION_RULES = ("first", "all")
COCO_KEYS = ("image_id", "id", "caption")
COCO_IMAGE_KEYS = ("id", "file_name")


def load_prompt_set(source, n=None, caption_rule="first"):
    """Prompts from a built-in name or a file (format chosen by suffix); the first `n` if given."""
    if caption_rule not in CAPTION_RULES:
        raise DataError(f"caption_rule={caption_rule!r} is not one of {CAPTION_RULES}")
    path = BUILTIN_PROMPT_SETS.get(str(source), Path(source))
    if not path.is_file():
        raise DataError(
            f"prompt set {str(source)!r} is neither a built-in name {sorted(BUILTIN_PROMPT_SETS)} nor an existing file"
        )
    suffix = path.suffix.lower()
    if suffix in _PROMPT_READERS:
        prompts = _PROMPT_READERS[suffix](path)
    elif suffix in _CAPTION_READERS:
        prompts = _pick_captions(_CAPTION_READERS[suffix](path), caption_rule)
    else:
        known = sorted([*_PROMPT_READERS, *_CAPTION_READERS])
        raise DataError(f"{path}: unknown prompt file type {path.suffix!r}; use one of {known}")
    if not prompts:
        raise DataError(f"{path}: holds no prompts")
    if n is not None:
        if not 0 < n <= len(prompts):
            raise DataError(f"asked for n={n} prompts but {path} holds {len(prompts)}")
        prompts = prompts[:n]
    return prompts


def prompts_sha256(prompts):
    """The prompt-set fingerprint: sha256 hex digest of the prompts joined by newlines."""
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()


def sample_prompts(prompts, n, seed=0):
    """`n` prompts in a seeded shuffled order, cycling through the set (reshuffled each pass) if `n` exceeds it."""
    if not prompts:
        raise DataError("cannot draw evaluation prompts from an empty prompt list")
    generator = torch.Generator().manual_seed(seed)
    out = []
    while len(out) < n:
        out += [prompts[i] for i in torch.randperm(len(prompts), generator=generator).tolist()]
    return out[:n]


def _read_text(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def _read_parti_tsv(path):
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if "Prompt" not in (reader.fieldnames or []):
            raise DataError(f"{path}: no 'Prompt' column (found {reader.fieldnames})")
        return [row["Prompt"].strip() for row in reader if (row["Prompt"] or "").strip()]


def read_coco_captions_file(path):
    """The parsed COCO captions file (`captions_val2017.json`), every annotation and "images" entry checked.

    Annotations of images absent from the file's "images" list (when it lists any) are dropped: they are not part
    of the split (a public copy of val2017's file carries one such entry, image 336252; ATTRIBUTION.md).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f"{path}: expected a COCO captions file with an 'annotations' list")
    for key, required in (("annotations", COCO_KEYS), ("images", COCO_IMAGE_KEYS)):
        entries = data.get(key) or []
        if not isinstance(entries, list):
            raise DataError(f"{path}: '{key}' must be a list")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise DataError(f"{path} {key}[{i}]: expected a JSON object")
            require_keys(entry, required, f"{path} {key}[{i}]")
    if data.get("images"):
        listed = {image["id"] for image in data["images"]}
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in listed]
    return data


def _read_coco_json(path):
    return read_coco_captions_file(path)["annotations"]


def _read_coco_jsonl(path):
    return [record for _, record in read_jsonl(path, COCO_KEYS)]


def first_captions(records):
    """{image id: its lowest-id caption, stripped}, in image id order, from {"image_id", "id", "caption"} records."""
    first = {}
    for image_id, _, caption in sorted((r["image_id"], r["id"], str(r["caption"]).strip()) for r in records):
        first.setdefault(image_id, caption)
    return first


def _pick_captions(records, caption_rule):
    """Apply `caption_rule` to {"image_id", "id", "caption"} records."""
    if caption_rule == "all":
        return [str(r["caption"]).strip() for r in sorted(records, key=lambda r: (r["image_id"], r["id"]))]
    return list(first_captions(records).values())


_PROMPT_READERS = {".txt": _read_text, ".tsv": _read_parti_tsv}
_CAPTION_READERS = {".json": _read_coco_json, ".jsonl": _read_coco_jsonl}
