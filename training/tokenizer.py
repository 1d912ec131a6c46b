"""A CLIP-format BPE tokenizer trained on a dataset's captions.

When no pretrained CLIP tokenizer is given, sculpt trains one with the `tokenizers` library using exactly the
normalizer, pre-tokenizer and end-of-word suffix of `transformers.CLIPTokenizer`, and saves it with
`save_pretrained`, so `CLIPTokenizer.from_pretrained(folder)` (and therefore any diffusers pipeline) loads it like
OpenAI's.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, trainers
from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def train_clip_tokenizer(
    captions: Iterable[str], vocab_size: int = 1000, model_max_length: int = 77
) -> CLIPTokenizer:
    """Train a byte-level BPE on `captions` and return it as a `CLIPTokenizer`.

    Args:
        captions: the training captions (all of them; the set is small for captioned-image datasets).
        vocab_size: upper bound on the vocabulary, special tokens and the 256 byte symbols included.
        model_max_length: the padded sequence length the text encoder sees (77 in CLIP).
    """
    captions = list(captions)
    if not captions:
        raise ValueError("`captions`: got an empty list; a tokenizer needs at least one caption to train on.")
    # Alphabet is 256 byte symbols, each both mid-word and word-final ("</w>"), plus the two special tokens.
    if vocab_size < 2 * 256 + 2:
        raise ValueError(f"`vocab_size`: {vocab_size} is too small; a CLIP byte-level BPE needs at least 514.")

    # Borrow CLIP's normalizer / pre-tokenizer from an empty CLIPTokenizer, so the two can never drift apart.
    reference = CLIPTokenizer().backend_tokenizer
    bpe = Tokenizer(models.BPE(unk_token=EOS, continuing_subword_prefix="", end_of_word_suffix="</w>"))
    bpe.normalizer = reference.normalizer
    bpe.pre_tokenizer = reference.pre_tokenizer
    byte_alphabet = _bytes_to_unicode()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        initial_alphabet=byte_alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    bpe.train_from_iterator(captions, trainer=trainer)

    vocab = bpe.get_vocab()
    # CLIP's vocabulary holds every byte symbol both bare and with "</w>", so any text (even characters never
    # seen in training) tokenizes without <unk>.
    for symbol in byte_alphabet:
        for token in (symbol, symbol + "</w>"):
            if token not in vocab:
                vocab[token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=_merges(bpe), model_max_length=model_max_length)


def _merges(bpe: Tokenizer) -> list[tuple[str, str]]:
    import json

    model = json.loads(bpe.to_str())["model"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins for bytes used by GPT-2/CLIP byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]
