import gzip
import io
import json
import math
import sys
import unicodedata
from pathlib import Path

import pytest
import sacrebleu
import safetensors.torch
import torch
from helpers import Terminal, loaded_by, one_line_error, run

from attnlab.cli import main
from attnlab.data.translation import embedded_pairs
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.tokenizers import ByteTokenizer
from attnlab.training.checkpoints import save_checkpoint

TINY = [
    "--d-model",
    "16",
    "--n-heads",
    "2",
    "--d-ff",
    "32",
    "--n-encoder-layers",
    "1",
    "--n-decoder-layers",
    "1",
    "--max-batch-tokens",
    "256",
    "--eval-iters",
    "2",
    "--device",
    "cpu",
]
EMBEDDED = ["--embedded-pairs", "200", *TINY]  # the embedded task's size: without --data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("translation") / "run"
    code = main(
        [
            "train",
            "translation",
            "--out",
            str(out),
            "--max-iters",
            "6",
            "--eval-interval",
            "3",
            *EMBEDDED,
        ]
    )
    assert code == 0
    return out


@pytest.fixture
def gpt_checkpoint(tmp_path):
    model = GPT(GPTConfig(vocab_size=256, context_length=8, n_layers=1, n_heads=1, d_model=8))
    save_checkpoint(tmp_path / "gpt", model, {"tokenizer": ByteTokenizer()})
    return tmp_path / "gpt"


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


@pytest.mark.parametrize("command", [["train", "translation"], ["translate"], ["evaluate"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "usage: attnlab" in text
    expected = {"train": "--max-batch-tokens", "translate": "CKPT [TEXT]", "evaluate": "--ref"}
    assert expected[command[0]] in text


def test_train_writes_a_translation_checkpoint(trained):
    for name in ("model.safetensors", "config.json", "tokenizer.json", "run.json", "loss.png"):
        assert (trained / name).is_file()
    config = json.loads((trained / "config.json").read_text())
    assert config["kind"] == "translation" and config["config"]["d_model"] == 16
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6] and "val_loss" in records[5]


def test_translate_text_and_stdin(trained, capsys, monkeypatch):
    code, out, _ = run(["translate", str(trained), "forty-two", "--beam-size", "2"], capsys)
    assert code == 0 and out.count("\n") == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("one\n\nseven hundred\nfive\n"))
    code, lines, _ = run(["translate", str(trained), "--batch-size", "2"], capsys)
    assert code == 0 and len(lines.splitlines()) == 4 and lines.splitlines()[1] == ""
    monkeypatch.setattr("sys.stdin", io.StringIO("\n  \n"))
    line = one_line_error(*run(["translate", str(trained)], capsys)[::2])
    assert "no text to translate" in line
    monkeypatch.setattr("sys.stdin", io.StringIO("forty-two\n"))
    assert run(["translate", str(trained), "--beam-size", "2"], capsys)[1] == out
    assert run(["translate", str(trained), "--beam-size", "2", "forty-two"], capsys)[1] == out
    penalised = ["forty-two", "--beam-size", "2", "--length-penalty", "1"]  # a beam's to rank
    assert run(["translate", str(trained), *penalised], capsys)[0] == 0
    short = ["--beam-size", "1", "--max-length-factor", "0", "--max-length-offset", "1"]
    code, _, err = run(["translate", str(trained), "seven " * 3000, *short], capsys)
    assert code == 0 and "attnlab: note: 1 sentence(s) over the model's" in err
    none = ["--max-length-factor", "0", "--max-length-offset", "0"]
    code, _, err = run(["translate", str(trained), "one", *none], capsys)
    assert "leave no room" in one_line_error(code, err)
    with pytest.raises(SystemExit) as stopped:  # the command's own usage, not attnlab's
        run(["translate", str(trained), "--beam-size", "2", "--bogus"], capsys)
    assert stopped.value.code == 2
    assert "attnlab translate: error: unrecognized arguments: --bogus" in capsys.readouterr().err
    # a limit beyond any length is the model's own: the same text as a limit just past it
    limits = [run(["translate", str(trained), "forty-two", "--max-length-factor", factor], capsys)
              for factor in ("1e300", "1e3")]  # fmt: skip
    assert limits[0] == limits[1] and limits[0][0] == 0 and limits[0][1].strip()


@pytest.mark.parametrize("target", ["src", "ref"])
def test_hypotheses_never_overwrite_the_sources_or_references(trained, tmp_path, capsys, target):
    pairs = embedded_pairs(5, seed=9)
    files = {
        "src": write(tmp_path / "test.words", [s for s, _ in pairs]),
        "ref": write(tmp_path / "test.digits", [t for _, t in pairs]),
    }
    before = {name: Path(f).read_bytes() for name, f in files.items()}
    argv = ["evaluate", str(trained), "--src", files["src"], "--ref", files["ref"]]
    code, _, err = run([*argv, "--hypotheses", files[target]], capsys)
    assert f"would overwrite --{target}'s file" in one_line_error(code, err)
    assert {name: Path(f).read_bytes() for name, f in files.items()} == before


def test_scoring_as_trained_loads_no_compiler(trained):
    """Scoring alone builds no optimizer, nor the sinusoids on the meta device, each of which
    imports torch._dynamo (1-2 s)."""
    loaded = loaded_by("evaluate", trained, "--device", "cpu")
    assert loaded & {"attnlab.training.trainer", "torch._dynamo"} == {"attnlab.training.trainer"}


def test_evaluate_bleu(trained, tmp_path, capsys):
    pairs = embedded_pairs(20, seed=9)
    pairs[3] = ("", "")  # a blank line translates to a blank line, as `translate` gives it
    src = write(tmp_path / "test.words", [s for s, _ in pairs])
    ref = write(tmp_path / "test.digits", [t for _, t in pairs])
    hyps = tmp_path / "hyps.txt"
    code, out, _ = run(
        ["evaluate", str(trained), "--src", src, "--ref", ref, "--hypotheses", str(hyps)], capsys
    )
    assert code == 0 and "BLEU" in out and "chrF" in out and "case:mixed|eff:no|tok:13a" in out
    assert len(hyps.read_text().splitlines()) == 20 and hyps.read_text().splitlines()[3] == ""
    greedy = tmp_path / "greedy.txt"
    code, out, _ = run(
        ["evaluate", str(trained), "--src", src, "--ref", ref, "--json", "--beam-size", "1"]
        + ["--hypotheses", str(greedy)],
        capsys,
    )
    scores = json.loads(out)
    assert code == 0 and scores["sentences"] == 20
    assert {"chrf", "exact_match", "bleu_signature", "chrf_signature"} <= scores.keys()
    # the scores of the translations it wrote, by sacreBLEU itself and by counting
    hypotheses, references = greedy.read_text().splitlines(), [t for _, t in pairs]
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score)
    matches = sum(h == r for h, r in zip(hypotheses, references, strict=True))
    assert scores["exact_match"] == pytest.approx(100 * matches / 20)


def test_hypotheses_named_gz_are_gzip_as_src_and_ref_are_read(trained, tmp_path, capsys):
    pairs = embedded_pairs(4, seed=9)
    src = write(tmp_path / "test.words", [s for s, _ in pairs])
    ref = write(tmp_path / "test.digits", [t for _, t in pairs])
    hyps = tmp_path / "hyps.txt.gz"
    argv = ["evaluate", str(trained), "--src", src, "--json", "--beam-size", "1"]
    assert run([*argv, "--ref", ref, "--hypotheses", str(hyps)], capsys)[0] == 0
    assert len(gzip.decompress(hyps.read_bytes()).decode().splitlines()) == 4
    code, out, err = run([*argv, "--ref", str(hyps)], capsys)  # they are their own reference
    assert code == 0 and json.loads(out)["exact_match"] == 100, err


def test_resume_reproduces_the_straight_run(tmp_path):
    straight, halted = tmp_path / "straight", tmp_path / "halted"
    common = ["--eval-interval", "2", *EMBEDDED]
    assert main(["train", "translation", "--out", str(straight), "--max-iters", "4", *common]) == 0
    assert main(["train", "translation", "--out", str(halted), "--max-iters", "2", *common]) == 0
    assert main(["train", "translation", "--out", str(halted), "--resume", "--max-iters", "4"]) == 0
    weights = [safetensors.torch.load_file(d / "model.safetensors") for d in (straight, halted)]
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])


def test_train_on_files_and_time_limit(tmp_path, capsys):
    pairs = embedded_pairs(60, seed=2)
    for split in ("train", "val"):
        write(tmp_path / f"{split}.w", [s for s, _ in pairs])
        write(tmp_path / f"{split}.d", [t for _, t in pairs])
    out = tmp_path / "run"
    code, _, err = run(
        [
            "train",
            "translation",
            "--data",
            str(tmp_path),
            "--src",
            "w",
            "--tgt",
            "d",
            "--out",
            str(out),
            "--max-iters",
            "50",
            "--time-limit",
            "1e-6",
            "--bpe-vocab-size",
            "300",
            *TINY,
        ],
        capsys,
    )
    assert code == 0 and "train: 60 of 60 pairs kept" in err
    assert "done: step 2 (time limit of 1e-06 min), val loss" in err  # one step more, evaluated
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 2


def test_bad_training_input(tmp_path, capsys):
    write(tmp_path / "train.de", ["a", "b", "c"])
    write(tmp_path / "train.en", ["x", "y"])
    out = str(tmp_path / "run")
    code, _, err = run(
        [
            "train",
            "translation",
            "--data",
            str(tmp_path),
            "--src",
            "de",
            "--tgt",
            "en",
            "--out",
            out,
            *TINY,
        ],
        capsys,
    )
    assert "has 3 lines but" in one_line_error(code, err)
    code, _, err = run(["train", "translation", "--data", str(tmp_path), "--out", out], capsys)
    assert "--data needs --src and --tgt" in one_line_error(code, err)
    code, _, err = run(["train", "translation", "--src", "de", "--tgt", "en", "--out", out], capsys)
    assert "embedded task" in one_line_error(code, err)
    # more distinct numbers than there are below a million: drawn forever, were it not refused
    code, _, err = run(["train", "translation", "--embedded-pairs", "999999", "--out", out], capsys)
    assert "give at most 999,500" in one_line_error(code, err)
    code, _, err = run(["train", "translation", "--data", str(tmp_path), "--src", "de", "--tgt",
                        "en", "--embedded-pairs", "5", "--out", out], capsys)  # fmt: skip
    assert "with --data it is unused" in one_line_error(code, err)


def test_control_characters_are_escaped_on_a_terminal_only(tmp_path, capsys, monkeypatch):
    """An undertrained byte-level model emits control characters: escaped on a terminal, as
    `sample` does, and written as they are to a file or a pipe."""
    from attnlab.data.translation import SPECIAL_TOKENS, special_ids
    from attnlab.models.encoder_decoder import EncoderDecoder, EncoderDecoderConfig

    tokenizer = ByteTokenizer(SPECIAL_TOKENS)
    torch.manual_seed(0)
    config = EncoderDecoderConfig(vocab_size=tokenizer.vocab_size, max_length=64,
                                  n_encoder_layers=1, n_decoder_layers=1, n_heads=2, d_model=16,
                                  d_ff=32, **special_ids(tokenizer))  # fmt: skip
    save_checkpoint(tmp_path, EncoderDecoder(config), {"tokenizer": tokenizer})
    argv = ["translate", str(tmp_path), "hello there", "--beam-size", "1"]
    code, piped, _ = run(argv, capsys)
    controls = {c for c in piped if unicodedata.category(c) == "Cc"} - {"\n"}
    assert code == 0 and controls
    monkeypatch.setattr("sys.stdout", Terminal())
    assert main(argv) == 0
    assert sys.stdout.getvalue() == "".join(ascii(c)[1:-1] if c in controls else c for c in piped)


GREEDY_PENALISED = ["--beam-size", "1", "--length-penalty", "1"]  # a single hypothesis to rank


def test_bad_evaluation_input(trained, gpt_checkpoint, tmp_path, capsys, monkeypatch):
    src = write(tmp_path / "src.txt", ["one", "two", "three"])
    short = write(tmp_path / "ref.txt", ["1", "2"])
    empty = write(tmp_path / "empty.txt", [])
    cases = [
        (["evaluate", str(trained), "--src", src, "--ref", short], "has 3 lines but"),
        (["evaluate", str(trained), "--src", empty, "--ref", short], "is empty"),
        (["evaluate", str(trained), "--src", src], "needs both --src and --ref"),
        (["evaluate", str(trained), "--src", "", "--ref", src], "--src is empty"),
        (["evaluate", str(trained), "--src", src, "--ref", src, "--hypotheses", ""], "is empty"),
        (["evaluate", str(gpt_checkpoint), "--src", src, "--ref", src], "holds a 'gpt' model"),
        (["evaluate", str(trained), "--data", src], "holds a 'translation' model"),
        (
            ["evaluate", str(gpt_checkpoint), "--hypotheses", src, "--beam-size", "2"],
            "--beam-size, --hypotheses: not used in scoring a language model",
        ),
        (
            ["evaluate", str(trained), "--src", src, "--ref", src, "--confusion", "c.png"],
            "--confusion: not used in scoring a translation model with --src",
        ),
        (["sample", str(trained)], "holds a 'translation' model, which `attnlab sample`"),
        (["translate", str(gpt_checkpoint), "hello"], "holds a 'gpt' model"),
        (["translate", str(trained), "one", "--beam-size", "0"], "--beam-size must be"),
        (["translate", str(trained), "one", "--length-penalty", "-5"], "must be a number >= 0"),
        (["translate", str(trained), "one", *GREEDY_PENALISED], "change nothing at --beam-size 1"),
        (["translate", str(trained), "one", "--beam-size", "1", "--length-penalty", "0"], "change"),
        (
            ["evaluate", str(trained), "--src", src, "--ref", src, *GREEDY_PENALISED],
            "change nothing",
        ),
        (["translate", str(tmp_path / "nothing"), "one"], "no checkpoint"),
        (["translate", str(trained), "caf\udcff"], "not valid UTF-8"),  # a byte not UTF-8
        (["translate", str(trained)], "not valid UTF-8"),  # stdin, below
    ]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9 \xff\n")))
    for argv, pattern in cases:
        code, out, err = run(argv, capsys)
        assert pattern in one_line_error(code, err)
        assert out == ""


def test_corpus_scores():
    from attnlab.errors import UserError
    from attnlab.evaluation.bleu import corpus_scores

    refs = ["A man rides a bike down the road .", "Two dogs play in the grass ."]
    perfect = corpus_scores(refs, refs)
    assert perfect["bleu"] == pytest.approx(100) and perfect["exact_match"] == 100
    assert perfect["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    partial = corpus_scores(["A man rides a bike .", "Two dogs play in the grass ."], refs)
    # by hand: 13 of 13 unigrams match, 10/11 bigrams, 8/9 trigrams, 6/7 4-grams (the first
    # hypothesis misses "bike ." and what follows), and 13 hypothesis words for 16 reference
    # words give a brevity penalty of exp(1 - 16/13)
    expected = 100 * math.exp(1 - 16 / 13) * (10 / 11 * 8 / 9 * 6 / 7) ** (1 / 4)
    assert partial["bleu"] == pytest.approx(expected) and partial["exact_match"] == 50
    assert corpus_scores([r.lower() for r in refs], refs)["exact_match"] == 0  # cased, as BLEU
    with pytest.raises(UserError, match="must pair up"):
        corpus_scores(refs, refs[:1])


def test_training_offers_no_batch_size_its_batches_are_counted_in_tokens(capsys):
    with pytest.raises(SystemExit):
        main(["train", "translation", "--help"])
    shown = capsys.readouterr().out
    assert "--max-batch-tokens" in shown and "--batch-size" not in shown


def test_the_decoding_flags_reach_the_search(trained, tmp_path, capsys, monkeypatch):
    """--beam-size and --length-penalty of translate and evaluate were taken on trust: a search
    run greedy whatever they said would have passed every other test."""
    from attnlab.generation import beam_search

    seen, search = [], beam_search.translate
    monkeypatch.setattr(beam_search, "translate", lambda *a, **k: seen.append(k) or search(*a, **k))
    flags = ["--beam-size", "3", "--length-penalty", "0.5"]
    assert run(["translate", str(trained), "forty-two", *flags], capsys)[0] == 0
    src, ref = write(tmp_path / "src", ["one"]), write(tmp_path / "ref", ["1"])
    assert run(["evaluate", str(trained), "--src", src, "--ref", ref, *flags], capsys)[0] == 0
    assert [(k["beam_size"], k["length_penalty"]) for k in seen] == [(3, 0.5)] * 2
