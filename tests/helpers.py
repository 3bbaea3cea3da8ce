"""Helpers shared by tests (the tests folder is on sys.path under pytest)."""

import errno
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from attnlab.cli import main
from attnlab.generation.decoding import _Window
from attnlab.generation.sampling import SamplingConfig
from attnlab.models.gpt import GPT, GPTConfig

# For tests of compiled code: a compiler that fails must fail the test, not fall back to eager
# code with a warning (which would then pass any comparison with eager code).
MUST_COMPILE = pytest.mark.filterwarnings("error::attnlab.compiling.CompilerFailureWarning")


def run(argv, capsys):
    """Run `attnlab ARGV` in-process: (exit code, stdout, stderr)."""
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


class Terminal(io.StringIO):
    """A stand-in for stderr on a terminal: progress bars draw on it."""

    def isatty(self):
        return True


def loaded_modules(code, *args) -> set[str]:
    """The modules that Python `code` (given sys.argv[1:] = args) leaves loaded, run in a
    fresh process: what a command costs in imports, whatever this one has loaded."""
    code += "\nimport sys\nprint(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    return set(done.stdout.decode().splitlines()[-1].split())


def loaded_by(*argv) -> set[str]:
    """The modules `attnlab ARGV` leaves loaded, run (successfully) in a fresh process."""
    code = "import sys\nfrom attnlab.cli import main\nassert not main(sys.argv[1:])"
    return loaded_modules(code, *argv)


def snapshot(folder):
    """Every file directly in `folder`, by name, with its bytes: to check nothing changed."""
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def one_line_error(code, err):
    """Assert exit code 2 and exactly one error line, last, with no traceback; return the line."""
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("attnlab: error:")]
    assert len(errors) == 1 and err.strip().endswith(errors[0]) and "Traceback" not in err, err
    return errors[0]


def read_only(monkeypatch, folder):
    """Make `folder` refuse new files and folders as a read-only one does, even to root (whom
    permission bits do not stop, and as whom these tests may run)."""
    inside = os.path.realpath(folder) + os.sep
    real_open, real_mkdir = os.open, os.mkdir

    def refused(path):
        if os.path.realpath(path).startswith(inside):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    def guarded_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            refused(path)
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        refused(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)


def tiny_gpt(positional="learned", context_length=16, vocab_size=11, seed=0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=vocab_size,
        context_length=context_length,
        n_layers=2,
        n_heads=2,
        d_model=16,
        positional=positional,
    )
    model = GPT(config).eval()
    with torch.no_grad():  # larger weights than GPT-2's init, so random logits are not all flat
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model


def caches_made(monkeypatch, model) -> list:
    """The decoding caches model.new_cache makes from now on: a recompute makes none."""
    made, new_cache = [], model.new_cache
    monkeypatch.setattr(model, "new_cache", lambda *a, **k: made.append(1) or new_cache(*a, **k))
    return made


def step_logits(model, prompt, steps, use_cache, crop_to=None, compile=False):
    """Greedy decoding that also records each step's (V,) logits. Eager, it checks that the
    model was given a cache (use_cache) or never (a recompute, compared with a cached run)."""
    window = _Window(model, SamplingConfig(temperature=0), use_cache, crop_to, compile)
    tokens = torch.tensor([prompt + [0] * steps])
    all_logits, cached = [], []

    def record(module, args, kwargs):
        cached.append("cache" in kwargs)

    hook = None if compile else model.register_forward_pre_hook(record, with_kwargs=True)
    with torch.inference_mode():  # as generate runs
        for length in range(len(prompt), len(prompt) + steps):
            next_ids, logits = window.next_ids(tokens, length)
            all_logits.append(logits[0])
            tokens[0, length] = next_ids[0]
    if hook:  # a compiled step takes no hooks
        hook.remove()
        assert any(cached) == use_cache, f"use_cache={use_cache} not followed"
    return tokens[0, len(prompt) :].tolist(), torch.stack(all_logits)


def overlapping_tick_labels(fig) -> list[tuple[str, str]]:
    """The pairs of tick labels, major or minor, that run into each other on any axis of a
    matplotlib figure, as drawn (after its layout)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    pairs = []
    for axis in (axis for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)):
        labels = [t for t in axis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in labels]
        pairs += [(a, b) for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1 :]
                  if box.overlaps(other)]  # fmt: skip
    return pairs


def outside_the_figure(fig) -> list[str]:
    """The texts of a matplotlib figure (labels, titles, tick labels) drawn past its edges, cut
    off in the file, as drawn (after its layout)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    ticks, texts = set(), []
    for axis in (axis for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)):
        low, high = sorted(axis.get_view_interval())
        for tick in axis.get_major_ticks() + axis.get_minor_ticks():
            labels = tick.label1, tick.label2
            ticks |= set(map(id, labels))
            texts += labels if low <= tick.get_loc() <= high else ()  # drawn: in view
    texts += [t for t in fig.findobj(Text) if id(t) not in ticks]  # titles, labels, ...
    edges = fig.bbox.padded(1)  # a pixel's rounding
    boxes = {t.get_text(): t.get_window_extent() for t in texts if t.get_visible() and t.get_text()}
    return [text for text, box in boxes.items()
            if not (edges.contains(*box.min) and edges.contains(*box.max))]  # fmt: skip


def assert_same_tokens(got: list[int], expected: list[int]) -> None:
    """got == expected, or a failure that says where they first differ. (pytest explains a
    failed == of two lists with a diff of the whole, in CI: hours for a corpus's tokens.)"""
    if got != expected:
        pairs = enumerate(zip(got, expected, strict=False))
        at = next((i for i, (a, b) in pairs if a != b), min(len(got), len(expected)))
        shown = slice(max(at - 2, 0), at + 3)
        pytest.fail(
            f"{len(got)} and {len(expected)} tokens, first different at token {at}: "
            f"{got[shown]} != {expected[shown]}"
        )


# A few lines to learn a small WordPiece vocabulary from: words that share pieces, accents,
# other scripts, CJK, digits and punctuation.
BERT_TEXT = """\
The movie was good, the film was great and the acting was wonderful!
A terrible, boring film: the plot was thin and the acting was worse.
Unbelievable, unthinkable, thinking, thinker, things, thinks, rethinking.
Naïve café owners in Zürich serve crème brûlée and piña colada; résumé.
東京の夜は美しい。北京欢迎你！中文字符和日本語の文字。
Ελληνικά γράμματα, русский текст, español ¿qué tal?, français «bonjour».
Numbers: 3.14159, 2024-01-01, $100, 50% off, e-mail me@example.com #tags.
She said: "don't stop", he's sure it's fine; they'll see (maybe) [soon].
"""
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def bert_vocab(lowercase: bool = True, size: int = 300) -> list[str]:
    """vocab.txt's tokens of a WordPiece vocabulary that Hugging Face's `tokenizers` learns from
    BERT_TEXT, laid out as BERT's: [PAD] first, [unusedN] rows, then [UNK] [CLS] [SEP] [MASK]
    and the learned tokens. (Ties between pairs as frequent are broken at random: call it once
    for a vocabulary that two tokenizers share.)"""
    from tokenizers import BertWordPieceTokenizer

    learner = BertWordPieceTokenizer(lowercase=lowercase)
    learner.train_from_iterator(BERT_TEXT.splitlines() * 3, vocab_size=size, min_frequency=1,
                                special_tokens=BERT_SPECIALS, show_progress=False)  # fmt: skip
    learned = sorted(learner.get_vocab().items(), key=lambda entry: entry[1])
    return ["[PAD]", "[unused0]", "[unused1]", *BERT_SPECIALS[1:]] + [
        token for token, _ in learned if token not in BERT_SPECIALS
    ]


def bert_tokenizer_folder(folder, vocab: list[str], lowercase: bool = True):
    """A folder with vocab.txt and tokenizer_config.json, as Google's BERT folders have them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in vocab), "utf-8")
    (folder / "tokenizer_config.json").write_text(f'{{"do_lower_case": {str(lowercase).lower()}}}')
    return folder


def assert_refused_writing_nothing(argv, words, source, tmp_path, capsys) -> None:
    """`attnlab ARGV` ends with one line holding `words`, `source` as it was and no file new
    under tmp_path."""
    before = snapshot(source)
    files = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = run(argv, capsys)
    assert words in one_line_error(code, err)
    assert snapshot(source) == before and sorted(p.name for p in tmp_path.rglob("*")) == files


def assert_tokenizes_as(theirs, ours, order, text) -> None:
    """attnlab's tokenizer `ours` (a converted one: our id i is theirs order[i]) encodes `text`
    as the Hugging Face tokenizer `theirs` does, by each of its encoders, and decodes alike."""
    ids, expected = ours.encode(text), theirs(text, add_special_tokens=False)["input_ids"]
    assert [order[i] for i in ids] == expected
    assert ids == ours.encode_reference(text) == ours.encode_array(text).tolist()
    assert ours.decode(ids) == theirs.decode(expected, clean_up_tokenization_spaces=False)


def assert_samples_as_generate(hf, theirs, checkpoint, prompt, capsys) -> None:
    """Greedy `attnlab sample` of a converted checkpoint prints what transformers' greedy
    generate gives, 12 tokens or up to its end token (id 0)."""
    ids = theirs(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        new = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                          do_sample=False)[0, ids.shape[1] :].tolist()  # fmt: skip
    new = new[: new.index(0)] if 0 in new else new
    assert len(new) >= 4 and max(new) < len(theirs)
    argv = ["sample", str(checkpoint), "--prompt", prompt, "--temperature", "0"]
    code, out, err = run([*argv, "--max-new-tokens", "12"], capsys)
    assert code == 0, err
    assert out == prompt + theirs.decode(new, clean_up_tokenization_spaces=False) + "\n"


def byte_level_tokenizer(corpus, pre_tokenizer, specials, vocab_size, normalizer=None, added=(),
                         post_processor=None, pad_token=None):  # fmt: skip
    """A Hugging Face byte-level BPE trained on `corpus` (20 times over), shaped as a real
    one: `specials` at ids 0, 1, ..., then the bytes (but the 13 no UTF-8 text holds, which
    GPT-2's table writes as the characters of those code points) and the merges, then the
    `added` texts as tokens matched after `normalizer`; specials[0] its bos, eos and unk."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, trainers
    from tokenizers import pre_tokenizers as split
    from transformers import PreTrainedTokenizerFast

    alphabet = [
        c for c in split.ByteLevel.alphabet() if ord(c) not in (0xC0, 0xC1, *range(0xF5, 256))
    ]
    tokenizer = Tokenizer(models.BPE())
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer, tokenizer.decoder = pre_tokenizer, decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet,
        show_progress=False,
    )  # fmt: skip
    tokenizer.train_from_iterator([corpus] * 20, trainer)
    tokenizer.add_tokens([AddedToken(text, normalized=True) for text in added])
    if post_processor is not None:
        tokenizer.post_processor = post_processor
    end = specials[0]
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=end, eos_token=end, unk_token=end,
        pad_token=pad_token,
    )  # fmt: skip


def save_tokenizer(tokenizer, folder, tokenizer_class: str) -> None:
    """save_pretrained, its tokenizer_config.json naming `tokenizer_class` (as a hub model's)."""
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = tokenizer_class
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
