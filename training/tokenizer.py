"""A CLIP-format BPE tokenizer trained on a dataset's captions.

When no pretrained CLIP tokenizer is given, sculpt trains one on the captions using exactly the normalizer,
pre-tokenizer and end-of-word suffix of `transformers.CLIPTokenizer` (whose model is the `tokenizers` library's BPE),
and saves it with `save_pretrained`, so `CLIPTokenizer.from_pretrained(folder)` (and so any diffusers pipeline) loads
it like OpenAI's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def train_clip_tokenizer(
    captions: Iterable[str], vocab_size: int = 1000, model_max_length: int = 77
) -> CLIPTokenizer:
    """Train a byte-level BPE on `captions` and return it as a `CLIPTokenizer`.

    The merges are learned here rather than by `tokenizers.trainers.BpeTrainer`, whose tie-breaking between equally
    frequent pairs follows hash-map order and so changes from run to run (we measured three different vocabularies
    in three runs on the same captions): a seeded training run must see the same token ids every time. Ties are
    broken by the lexicographically smallest pair. The vocabulary is laid out as OpenAI's CLIP vocab is: the 256
    byte symbols, the same with "</w>", the merges in order, then <|startoftext|> and <|endoftext|>.

    Args:
        captions: the training captions (all of them; the set is small for captioned-image datasets).
        vocab_size: upper bound on the vocabulary, special tokens and the 2 x 256 byte symbols included.
        model_max_length: the padded sequence length the text encoder sees (77 in CLIP).
    """
    captions = list(captions)
    if not captions:
        raise ValueError("`captions`: got an empty list; a tokenizer needs at least one caption to train on.")
    if vocab_size < 2 * 256 + 2:
        raise ValueError(f"`vocab_size`: {vocab_size} is too small; a CLIP byte-level BPE needs at least 514.")

    # CLIP's own normalizer and pre-tokenizer (lower-case, split words, map bytes to printable symbols), so training
    # sees words exactly as the tokenizer will.
    reference = CLIPTokenizer().backend_tokenizer
    word_counts: Counter[tuple[str, ...]] = Counter()
    for caption in captions:
        for word, _ in reference.pre_tokenizer.pre_tokenize_str(reference.normalizer.normalize_str(caption)):
            word_counts[(*word[:-1], word[-1] + "</w>")] += 1

    alphabet = _bytes_to_unicode()
    vocab = {symbol: i for i, symbol in enumerate(alphabet + [s + "</w>" for s in alphabet])}
    merges: list[tuple[str, str]] = []
    words = dict(word_counts)
    while len(vocab) + 2 < vocab_size:
        pair_counts: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pair_counts[pair] += count
        if not pair_counts:
            break  # every word is a single token already
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        merged = best[0] + best[1]
        merges.append(best)
        vocab.setdefault(merged, len(vocab))
        words = {_merge(word, best, merged): count for word, count in words.items()}
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def _merge(word: tuple[str, ...], pair: tuple[str, str], merged: str) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins for bytes used by GPT-2/CLIP byte-level BPE, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for b, c in sorted(zip(bs, cs))]
