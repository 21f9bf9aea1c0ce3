"""What several family modules build their models with: random weights made directly on a device
and in a dtype, the wider weights that make a tiny random model read its input, and the pieces of
their offline tokenizers (English words from CLIP's list, whole-word pieces and their merges)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def made_on(device: str, dtype: Any) -> Iterator[None]:
    """Parameters created directly on `device` and in `dtype` (no fp32 copy on the way)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def made_then_cast(model_class: Any, config: Any, device: str, dtype: Any) -> Any:
    """`model_class(config)` with random weights made on `device`, then cast to `dtype`, in eval
    mode (the captioners' full-size models, for benchmarks)."""
    import torch

    with torch.device(device):
        model = model_class(config)
    return model.to(dtype=dtype).eval()


def widen_to_read_the_prompt(text_encoder: Any, transformer: Any) -> None:
    """At the libraries' initial scales a random transformer barely reads the prompt (its image is
    the decoded noise whatever the words); wider weights make a tiny generator's images depend on
    the prompt a little, so a tiny loop has something to go round."""
    import torch

    with torch.no_grad():
        for parameter in text_encoder.parameters():
            parameter.normal_(0.0, 0.5)
        for parameter in transformer.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.3)


def clip_words() -> list[str]:
    """The whole English words of CLIP's BPE list (open_clip ships it), in its order: the
    vocabulary the full-size tokenizers are built from, so prompts and captions come to about
    their real token counts."""
    from open_clip.tokenizer import SimpleTokenizer

    return list(dict.fromkeys(token[:-4] for token in SimpleTokenizer().encoder
                              if token.endswith("</w>") and token[:-4].isascii()
                              and token[:-4].isalpha()))


def widen_to_follow_the_image(model: Any) -> None:
    """Random init puts every logit of a tiny captioner near zero and greedy decoding would repeat
    one token: wider weights (every matrix) make its caption follow the image."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.2)


def only_words_speakable(model: Any, vocab_size: int, word_ids: list[int]) -> None:
    """Only whole words may be said: the output rows of every other token, the end of a turn
    included, are zero, so a word's random logit beats them (a tiny captioner's caption is real
    words, max_new_tokens long, never empty). For models whose output layer is not tied."""
    import torch

    with torch.no_grad():
        speakable = torch.zeros(vocab_size, dtype=torch.bool)
        speakable[word_ids] = True
        model.lm_head.weight[~speakable] = 0.0


def add_word_pieces(vocab: dict[str, int], words: list[str], space: str,
                    size: int | None = None) -> list[tuple[str, str]]:
    """Give each word after a space (`space`: the tokenizer's mark for one, "Ġ" or "▁") a piece
    of its own, reached by merges of its prefixes, so a listed word is one token, as common words
    are in the real vocabularies. New pieces take the next ids in `vocab` (changed in place) until
    it holds `size`; returns the merges, in order."""
    merges: list[tuple[str, str]] = []
    for word in words:
        prefix = space
        for char in word:
            if size is not None and len(vocab) >= size:
                break
            if prefix + char not in vocab:
                vocab[prefix + char] = len(vocab)
                merges.append((prefix, char))
            prefix += char
    return merges
