"""Run folders of an attnlab before model kinds were registered (2026-12-03): their run.json kept
the data settings at the top level and named no kind. They resume as before, evaluate reads their
data, compare names their kind."""

import json
import shutil

from helpers import run
from test_run_directory import train

from attnlab.cli.runs import run_description
from attnlab.config import config_from_dict
from attnlab.data.translation import TranslationDataConfig


def _records(folder):
    """The run's metrics, less the figures of speed and time (which differ run to run)."""
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    timing = ("tokens_per_s", "elapsed_s", "mfu")
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]


def test_an_old_gpt_run_resumes_as_it_would_have_and_evaluates_on_its_own_data(
    tmp_path, corpus, capsys
):
    new, old = tmp_path / "new", tmp_path / "old"
    small = ["--n-layers", "1", "--d-model", "32", "--eval-interval", "1", "--no-cpu-kernels"]
    assert train(capsys, corpus, new, "--max-iters", "2", *small)[0] == 0
    shutil.copytree(new, old)
    # what `train gpt` wrote until 2026-12-03: the data's path and the tokenizer, no kind
    (old / "run.json").write_text(json.dumps({"data": str(corpus), "tokenizer": "char"}))
    code, out, err = run(["evaluate", str(old)], capsys)  # its data: the run's own
    assert code == 0 and "loss" in out, err
    code, out, _ = run(["compare", str(old), "--json"], capsys)
    assert code == 0 and json.loads(out)["runs"][0]["kind"] == "gpt"
    for folder in (new, old):
        code, _, err = run(["train", "gpt", "--out", str(folder), "--resume", "--max-iters", "4"],
                           capsys)  # fmt: skip
        assert code == 0, err
    assert _records(old) == _records(new)  # the same steps, losses and evaluations
    rewritten = json.loads((old / "run.json").read_text())  # a resume writes today's shape
    assert rewritten["kind"] == "gpt" and rewritten["data"]["data"] == str(corpus)


def test_an_old_translation_runs_description_is_read_as_todays(tmp_path):
    # what `train translation` wrote until 2026-12-03 (the embedded task: no data folder)
    options = {"bpe_vocab_size": 8000, "max_sentence_tokens": 128, "max_batch_tokens": 4096,
               "embedded_pairs": 20000}  # fmt: skip
    old = {"data": None, "src": "words", "tgt": "digits", "preset": "tiny", "translation": options}
    (tmp_path / "run.json").write_text(json.dumps(old))
    run, folder = run_description(tmp_path)
    assert folder == tmp_path and run["kind"] == "translation" and run["preset"] == "tiny"
    data = config_from_dict(TranslationDataConfig, run["data"])
    assert (data.src, data.tgt, data.data, data.bpe_vocab_size) == ("words", "digits", None, 8000)
