"""Text generation: decoding (attnlab.generation.decoding) turned into text, streamed piece by
piece, cut at stop strings, and started from an empty prompt."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from torch import nn

from attnlab.errors import UserError
from attnlab.generation.beam_decoding import beam_generate
from attnlab.generation.decoding import stream
from attnlab.tokenizers.base import Tokenizer

END_OF_TEXT = "<|endoftext|>"


def start_ids(tokenizer: Tokenizer) -> list[int]:
    """What an empty prompt starts from: "<|endoftext|>" when the tokenizer has it (documents
    begin after it in training), else a newline (nanoGPT's choice for character models)."""
    if END_OF_TEXT in tokenizer.special_tokens:
        return [tokenizer.special_tokens[END_OF_TEXT]]
    try:
        return tokenizer.encode("\n")
    except UserError:
        raise UserError(
            "the prompt is empty and the tokenizer has neither '<|endoftext|>' nor a newline "
            "to start from; give a prompt"
        ) from None


class StopScanner:
    """Passes text through until the first stop string, which is cut off with all that follows.

    Text that might be the beginning of a stop string is held back until the next piece shows
    whether it is, so nothing after a stop string is ever given out, even when the stop string
    arrives split across several tokens.
    """

    def __init__(self, stops: Iterable[str] = ()):
        if isinstance(stops, str):  # else each of its characters would be a stop string
            raise ValueError(f"stop is a list of stop strings, not one string: give [{stops!r}]")
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add decoded text; return what can be given out now."""
        self.pending += piece
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending, self.stopped = self.pending[: min(hits)], "", True
            return out
        keep = self._partial_stop_length()
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(out) :]
        return out

    def flush(self) -> str:
        """The text held back at the end of generation (no stop string followed)."""
        out, self.pending = self.pending, ""
        return out

    def _partial_stop_length(self) -> int:
        """Length of the longest end of the pending text that begins some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), longest, -1):
                if self.pending.endswith(stop[:n]):
                    longest = n
                    break
        return longest


def stream_text(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    *,
    stop: Iterable[str] = (),
    stop_ids: Iterable[int] | None = None,
    **options,
) -> Iterator[str]:
    """Continue `prompt`, yielding text pieces as tokens are produced, ending before the first
    stop string. An empty prompt starts from `start_ids`. stop_ids defaults to the tokenizer's
    "<|endoftext|>" when it has one. Other options are `generate`'s; vocab_limit defaults to
    the tokenizer's size, so a model whose vocabulary is padded past it never picks an id no
    text decodes to. Yields only new text. A prompt the tokenizer cannot encode raises here,
    before anything is generated."""
    prompt_ids, stop_ids = _start(tokenizer, prompt, stop_ids, options)
    ids = stream(model, prompt_ids, max_new_tokens, stop_ids=stop_ids, **options)
    return _text_pieces(tokenizer, ids, StopScanner(stop))


def _start(tokenizer: Tokenizer, prompt: str, stop_ids, options: dict):
    """The prompt's ids and the stop ids, and vocab_limit set in options (see stream_text)."""
    options.setdefault("vocab_limit", tokenizer.vocab_size)
    prompt_ids = tokenizer.encode(prompt) if prompt else start_ids(tokenizer)
    if stop_ids is None:
        specials = tokenizer.special_tokens
        stop_ids = [specials[END_OF_TEXT]] if END_OF_TEXT in specials else []
    return prompt_ids, stop_ids


def _text_pieces(tokenizer: Tokenizer, ids: Iterator[int], scanner: StopScanner) -> Iterator[str]:
    for piece in tokenizer.decode_stream(ids):
        out = scanner.feed(piece)
        if out:
            yield out
        if scanner.stopped:
            ids.close()  # stop decoding now rather than at max_new_tokens
            return
    rest = scanner.flush()
    if rest:
        yield rest


def generate_text(
    model: nn.Module, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, **options
) -> str:
    """The continuation of `prompt` as one string (without the prompt); see `stream_text`."""
    return "".join(stream_text(model, tokenizer, prompt, max_new_tokens, **options))


def beam_text(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    *,
    stop: Iterable[str] = (),
    stop_ids: Iterable[int] | None = None,
    **options,
) -> str:
    """The best continuation of `prompt` by beam search (`beam_generate`'s options), as text
    cut before the first stop string (the search itself does not see them). The prompt, stop
    ids and vocab_limit are taken as `stream_text` takes them."""
    prompt_ids, stop_ids = _start(tokenizer, prompt, stop_ids, options)
    ids = beam_generate(model, prompt_ids, max_new_tokens, stop_ids=stop_ids, **options)
    scanner = StopScanner(stop)
    return scanner.feed(tokenizer.decode(ids)) + scanner.flush()
