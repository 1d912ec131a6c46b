"""training/tokenizer.py: the CLIP-format byte-level BPE trained on the shapes captions, checked as a user of
`transformers.CLIPTokenizer` sees it: encode/decode, save/load, the same vocabulary on every run, the length limit,
and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from transformers import CLIPTokenizer

from training.builtin.shapes import BACKGROUNDS, CAPTION_TEMPLATE, COLORS, SHAPES, SIZES
from training.tokenizer import BOS, EOS, train_clip_tokenizer

# Every caption the shapes grammar can produce (108).
CAPTIONS = [
    CAPTION_TEMPLATE.format(size=size, color=color, shape=shape, background=background)
    for size in SIZES
    for color in COLORS
    for shape in SHAPES
    for background in BACKGROUNDS
]
BYTE_SYMBOLS = 2 * 256  # each byte mid-word and word-final ("</w>")


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return train_clip_tokenizer(CAPTIONS, vocab_size=600)


def vocab_and_merges(tokenizer: CLIPTokenizer) -> tuple[dict, list]:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    return model["vocab"], model["merges"]


def round_trip(tokenizer: CLIPTokenizer, text: str) -> str:
    return tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True)


def test_every_caption_round_trips_as_whole_words(tokenizer):
    for caption in CAPTIONS:
        ids = tokenizer(caption).input_ids
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        assert round_trip(tokenizer, caption) == caption
        # 600 is more than the grammar needs: training stops once every word is one token.
        assert len(ids) == len(caption.split()) + 2, caption
    assert len(tokenizer) < 600


def test_a_small_vocabulary_is_filled_exactly_and_still_round_trips():
    """Fewer merges than words: the vocabulary is exactly `vocab_size` and words split into sub-words."""
    for vocab_size in (BYTE_SYMBOLS + 2, 530):  # no merge at all (bytes only), then 16 merges
        small = train_clip_tokenizer(CAPTIONS, vocab_size=vocab_size)
        assert len(small) == vocab_size
        for caption in CAPTIONS:
            assert round_trip(small, caption) == caption
        assert len(small(CAPTIONS[0]).input_ids) > len(CAPTIONS[0].split()) + 2


def test_text_outside_the_captions_round_trips_through_bytes(tokenizer):
    """Byte-level BPE: words and characters never seen in training still encode, and decode back (CLIP's
    normaliser lower-cases, as OpenAI's tokenizer does)."""
    assert round_trip(tokenizer, "a crimson rhombus ✓ on a Grüner background") == (
        "a crimson rhombus ✓ on a grüner background"
    )
    ids = tokenizer("a crimson rhombus ✓").input_ids
    assert tokenizer.unk_token_id not in ids[1:-1]  # CLIP's unknown token is <|endoftext|>, so only at the end


def test_vocabulary_layout(tokenizer):
    """The 256 byte symbols in byte order, the same with "</w>", the merges in order, then <|startoftext|> and
    <|endoftext|> (OpenAI's CLIP vocab has the same blocks, with the printable byte stand-ins first)."""
    vocab, merges = vocab_and_merges(tokenizer)
    assert len(vocab) == BYTE_SYMBOLS + len(merges) + 2
    by_id = {i: token for token, i in vocab.items()}
    assert all(len(by_id[i]) == 1 and by_id[i + 256] == by_id[i] + "</w>" for i in range(256))
    assert by_id[ord("a")] == "a" and by_id[0] == "Ā"  # printable bytes stand for themselves, byte 0 for U+0100
    assert [vocab["".join(pair)] for pair in merges] == list(range(BYTE_SYMBOLS, BYTE_SYMBOLS + len(merges)))
    assert (vocab[BOS], vocab[EOS]) == (len(vocab) - 2, len(vocab) - 1)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (BOS, EOS, EOS)  # CLIP pads with EOS


def test_save_and_load_with_clip_tokenizer_from_pretrained(tokenizer, tmp_path):
    short = train_clip_tokenizer(CAPTIONS, vocab_size=600, model_max_length=16)
    short.save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is CLIPTokenizer
    assert vocab_and_merges(loaded) == vocab_and_merges(short) == vocab_and_merges(tokenizer)
    assert loaded.model_max_length == 16
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (
        short.bos_token_id, short.eos_token_id, short.pad_token_id
    )  # fmt: skip
    for caption in CAPTIONS:
        assert loaded(caption).input_ids == short(caption).input_ids
        assert round_trip(loaded, caption) == caption


def test_model_max_length_truncates_and_pads(tmp_path):
    tokenizer = train_clip_tokenizer(CAPTIONS, vocab_size=600, model_max_length=8)
    assert tokenizer.model_max_length == 8
    long = "a small red circle on a white background and a large blue square"  # 13 words
    ids = tokenizer(long, truncation=True).input_ids
    assert len(ids) == 8 and ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a small red circle on a"
    padded = tokenizer("a circle", padding="max_length").input_ids  # what the text encoder is fed
    assert len(padded) == 8 and padded[4:] == [tokenizer.pad_token_id] * 4
    batch = tokenizer(CAPTIONS[:3] + [long], padding="max_length", truncation=True, return_tensors="pt").input_ids
    assert tuple(batch.shape) == (4, 8)


def test_training_twice_gives_the_same_vocabulary(tokenizer):
    assert vocab_and_merges(train_clip_tokenizer(CAPTIONS, vocab_size=600)) == vocab_and_merges(tokenizer)
    # The order of the captions does not matter either (they are counted, not streamed).
    assert vocab_and_merges(train_clip_tokenizer(CAPTIONS[::-1], vocab_size=600)) == vocab_and_merges(tokenizer)


def test_the_same_vocabulary_under_any_hash_seed(tokenizer, tmp_path):
    """`tokenizers`' BpeTrainer broke ties in hash order and gave a different vocabulary per process; ours must
    not: two processes with different PYTHONHASHSEED write identical tokenizer.json files."""
    script = (
        "import json, sys\n"
        "from training.tokenizer import train_clip_tokenizer\n"
        "captions = json.loads(open(sys.argv[1]).read())\n"
        "train_clip_tokenizer(captions, vocab_size=600).save_pretrained(sys.argv[2])\n"
    )
    (tmp_path / "captions.json").write_text(json.dumps(CAPTIONS))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "captions.json"), str(tmp_path / seed)],
            env={**os.environ, "PYTHONHASHSEED": seed, "HF_HUB_OFFLINE": "1"},
        )
        for seed in ("1", "2")
    ]
    assert [process.wait(timeout=300) for process in processes] == [0, 0]
    first, second = ((tmp_path / seed / "tokenizer.json").read_text() for seed in ("1", "2"))
    assert first == second
    assert vocab_and_merges(CLIPTokenizer.from_pretrained(tmp_path / "1")) == vocab_and_merges(tokenizer)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"captions": []}, r"`captions`: got an empty list; a tokenizer needs at least one caption"),
        ({"captions": iter(())}, r"`captions`: got an empty list"),
        ({"captions": CAPTIONS, "vocab_size": 513}, r"`vocab_size`: 513 is too small; .* needs at least 514"),
    ],
    ids=["no_captions", "empty_iterator", "vocab_size"],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_clip_tokenizer(**kwargs)
