"""The vocabulary: tokenizer.json loads in transformers, and the fast byte encoder equals it."""
from __future__ import annotations

import numpy as np

from data_prep import vocab


def test_tokenizer_json_loads_with_transformers(tmp_path):
    path = vocab.save_tokenizer(tmp_path)
    tok = vocab.load_hf_tokenizer(path)
    assert path.name == "tokenizer.json"
    assert len(tok) == vocab.VOCAB_SIZE == 30
    assert tok.pad_token_id == vocab.PAD_ID == 0 and tok.mask_token_id == vocab.MASK_ID == 1
    assert tok.cls_token_id == vocab.BOS_ID and tok.eos_token_id == vocab.EOS_ID and tok.unk_token_id == vocab.UNK_ID
    ids = tok("MKVlA", add_special_tokens=False)["input_ids"]
    assert ids == [vocab.VOCAB[c] for c in "MKVLA"]
    assert tok.convert_ids_to_tokens(ids) == list("MKVLA")


def test_round_trip_all_residues():
    seq = vocab.RESIDUES * 3 + "MKTAYIAKQRQISFVKSHFSRQ"
    ids = vocab.encode(seq)
    assert ids.dtype == np.uint8 and len(ids) == len(seq)
    assert vocab.decode(ids) == seq
    assert vocab.decode(vocab.encode(seq.lower())) == seq
    assert (vocab.encode(vocab.STANDARD) == vocab.STANDARD_IDS).all()
    assert vocab.encode_with_tokenizer(seq).tolist() == ids.tolist()


def test_fast_encoder_equals_tokenizer_on_every_byte():
    tok = vocab.build_tokenizer()
    whitespace = []
    for b in range(256):
        ch = bytes([b]).decode("latin-1")
        ref = tok.encode(ch, add_special_tokens=False).ids
        fast = vocab.encode(bytes([b])).tolist()
        if ref == []:  # the tokenizer's normalizer deletes whitespace
            whitespace.append(b)
            continue
        assert fast == ref, (b, ch, fast, ref)
    # Whitespace is removed before encoding on both paths (normalizer; FASTA parser mask), so the
    # two agree on every byte that can reach the encoder. These are exactly the deleted bytes:
    assert whitespace == [9, 10, 11, 12, 13, 32, 0x85, 0xA0]
    assert all(vocab.encode(bytes([b]))[0] == vocab.UNK_ID for b in whitespace)
    # every symbol, upper and lower case, maps to its own id in both
    for ch in vocab.RESIDUES:
        assert vocab.encode(ch)[0] == vocab.encode(ch.lower())[0] == vocab.VOCAB[ch]
        assert tok.encode(ch.lower(), add_special_tokens=False).ids == [vocab.VOCAB[ch]]
        # the bulk parser's way back from ids to the (upper-case) sequence text
        assert chr(vocab.ID_TO_BYTE[vocab.VOCAB[ch]]) == ch
    assert set(vocab.ID_TO_BYTE[list(range(vocab.FIRST_RESIDUE_ID)) + list(range(vocab.VOCAB_SIZE, 256))]) == {ord("?")}


def test_bulk_string_equals_tokenizer():
    rng = np.random.default_rng(0)
    alphabet = np.frombuffer((vocab.RESIDUES + vocab.RESIDUES.lower() + "J#*-1").encode(), np.uint8)
    raw = rng.choice(alphabet, 5000).tobytes()
    assert vocab.encode(raw).tolist() == vocab.encode_with_tokenizer(raw.decode()).tolist()


def test_vocab_hash_is_stable():
    assert vocab.vocab_hash() == vocab.vocab_hash() and len(vocab.vocab_hash()) == 16
