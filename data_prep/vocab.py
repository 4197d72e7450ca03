"""The one amino-acid vocabulary of the project.

Built with `tokenizers` (so it saves as a `tokenizer.json` that
`transformers.PreTrainedTokenizerFast` loads) plus a vectorised byte lookup table for bulk
encoding. `tests/test_vocab.py` proves the two agree on every byte value.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

PAD, MASK, BOS, EOS, UNK = "<pad>", "<mask>", "<cls>", "<eos>", "<unk>"
SPECIALS = (PAD, MASK, BOS, EOS, UNK)
STANDARD = "ACDEFGHIKLMNPQRSTVWY"  # the 20 residues, in the order PSSM columns are remapped to
NONSTANDARD = "UOBZX"
RESIDUES = STANDARD + NONSTANDARD

VOCAB: dict[str, int] = {tok: i for i, tok in enumerate(SPECIALS + tuple(RESIDUES))}
PAD_ID, MASK_ID, BOS_ID, EOS_ID, UNK_ID = (VOCAB[t] for t in SPECIALS)
FIRST_RESIDUE_ID = len(SPECIALS)
STANDARD_IDS = np.arange(FIRST_RESIDUE_ID, FIRST_RESIDUE_ID + len(STANDARD))
VOCAB_SIZE = len(VOCAB)


def build_tokenizer():
    """A character-level `tokenizers.Tokenizer` over the vocabulary (lowercase is upper-cased)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token=UNK))
    # tokenizers has Lowercase but no Uppercase normalizer: upper-case letter by letter.
    upper = [normalizers.Replace(c, c.upper()) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\s"), ""), *upper])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.add_special_tokens(list(SPECIALS))
    return tok


# Which special token plays which role for transformers (tokenizer_config.json).
SPECIAL_ROLES = {"pad_token": PAD, "mask_token": MASK, "unk_token": UNK, "cls_token": BOS, "bos_token": BOS,
                 "eos_token": EOS}


def save_tokenizer(path: str | Path) -> Path:
    """Write tokenizer.json (PreTrainedTokenizerFast-loadable) to `path` (a file or a directory).
    A directory also gets tokenizer_config.json and special_tokens_map.json, so that
    `transformers.AutoTokenizer.from_pretrained(DIR)` knows the class and pad/mask/unk without
    reading config.json (which is ours, not a transformers model config)."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".json":
        path.mkdir(parents=True, exist_ok=True)
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **SPECIAL_ROLES,
                  "model_max_length": 1_000_000_000, "clean_up_tokenization_spaces": False}
        (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (path / "special_tokens_map.json").write_text(json.dumps(SPECIAL_ROLES, indent=2) + "\n")
        path = path / "tokenizer.json"
    build_tokenizer().save(str(path))
    return path


def load_hf_tokenizer(path: str | Path):
    """Load tokenizer.json as a `transformers.PreTrainedTokenizerFast` with our special tokens."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(path), **SPECIAL_ROLES)


def vocab_hash() -> str:
    """Short hash recorded in manifests and exports so mismatched vocabularies are caught."""
    return hashlib.sha256(json.dumps(VOCAB, sort_keys=True).encode()).hexdigest()[:16]


def _byte_table() -> np.ndarray:
    table = np.full(256, UNK_ID, dtype=np.uint8)
    for ch in RESIDUES:
        table[ord(ch)] = VOCAB[ch]
        table[ord(ch.lower())] = VOCAB[ch]
    return table


BYTE_TO_ID = _byte_table()
# The inverse for residue ids (upper-case letter); any other id maps to '?'. Lets bulk code turn
# token bytes back into the sequence text with one table lookup.
ID_TO_BYTE = np.full(256, ord("?"), dtype=np.uint8)
ID_TO_BYTE[[VOCAB[ch] for ch in RESIDUES]] = np.frombuffer(RESIDUES.encode(), np.uint8)


def encode(seq: str | bytes) -> np.ndarray:
    """Residue string -> uint8 token ids (no specials), the fast path for bulk data."""
    raw = seq.encode("latin-1") if isinstance(seq, str) else seq
    return BYTE_TO_ID[np.frombuffer(raw, dtype=np.uint8)]


def encode_with_tokenizer(seq: str, tokenizer=None) -> np.ndarray:
    """Reference encoder through `tokenizers`; slow, used to verify `encode`."""
    tokenizer = tokenizer or build_tokenizer()
    return np.asarray(tokenizer.encode(seq, add_special_tokens=False).ids, dtype=np.uint8)


def decode(ids) -> str:
    inverse = {i: t for t, i in VOCAB.items()}
    return "".join(inverse[int(i)] if int(i) >= FIRST_RESIDUE_ID else "" for i in ids)
