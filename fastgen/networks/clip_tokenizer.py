"""The real CLIP BPE tokenizer (SD1.5's), built offline from the vocabulary shipped in open_clip.

`transformers.CLIPTokenizer.from_pretrained` needs hub files; offline it can silently return a broken
2-token tokenizer. open_clip ships the same BPE merges (`bpe_simple_vocab_16e6.txt.gz`), from which
`vocab.json`/`merges.txt` are reconstructed exactly as OpenAI's CLIP does (byte alphabet, `</w>`
variants, merges, then `<|startoftext|>`/`<|endoftext|>`): 49,408 tokens.
"""

from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

from fastgen.core.files import write_text_atomic

CLIP_VOCAB_SIZE = 49408
_NUM_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _open_clip_bpe_path() -> Path:
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"open_clip's BPE vocabulary is missing at {path}; reinstall open_clip_torch.")
    return path


def write_clip_tokenizer_files(out_dir: str | os.PathLike) -> Path:
    """Write `vocab.json` and `merges.txt` of the CLIP tokenizer into `out_dir` (idempotent)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "vocab.json").is_file() and (out / "merges.txt").is_file():
        return out
    lines = gzip.open(_open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : _NUM_MERGES + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    for name, text in (
        ("vocab.json", json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False)),
        ("merges.txt", "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"),
    ):
        write_text_atomic(out / name, text)
    return out


@lru_cache(maxsize=None)
def build_clip_tokenizer(cache_dir: str, model_max_length: int = 77):
    """A `transformers.CLIPTokenizer` identical to SD1.5's, with no network access."""
    from transformers import CLIPTokenizer

    files = write_clip_tokenizer_files(Path(cache_dir) / "clip_tokenizer")
    tok = CLIPTokenizer.from_pretrained(str(files), model_max_length=model_max_length, pad_token="<|endoftext|>")
    if len(tok) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"CLIP tokenizer built from open_clip has {len(tok)} tokens, expected {CLIP_VOCAB_SIZE}.")
    return tok
