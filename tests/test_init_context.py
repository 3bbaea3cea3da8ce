"""`train --init CKPT --context-length N`: a run may read fewer positions than the checkpoint it
starts from (fine-tuning GPT-2 on a CPU at a quarter of its context), each position table then
holding the checkpoint's first N rows; a longer context only where there is no table (RoPE)."""

import pytest
import safetensors.torch
import torch
from helpers import one_line_error, run, tiny_gpt
from test_run_directory import train

from attnlab.models.gpt import GPT, GPTConfig
from attnlab.training.checkpoints import load_matching_weights, save_checkpoint


def test_a_shorter_model_reads_the_first_rows_of_each_position_table(tmp_path):
    long, short = tiny_gpt(context_length=16, seed=0), tiny_gpt(context_length=8, seed=1)
    save_checkpoint(tmp_path, long, {})
    file = tmp_path / "model.safetensors"
    new, unused = load_matching_weights(short, file)  # by shape alone: the table starts new
    assert new == unused and len(new) == 1
    new, unused = load_matching_weights(short, file, crop=(16, 8))
    assert new == unused == []
    table = new_table = None
    for name, tensor in long.state_dict().items():
        mine = short.state_dict()[name]
        if tensor.shape == mine.shape:
            torch.testing.assert_close(mine, tensor, rtol=0, atol=0)
        else:
            table, new_table = tensor, mine
    torch.testing.assert_close(new_table, table[:8], rtol=0, atol=0)
    x = torch.randint(0, 11, (2, 8))  # the first 8 positions: the same function
    torch.testing.assert_close(short(x)[0], long(x)[0], rtol=1e-6, atol=1e-6)


def test_init_with_a_shorter_context_trains_on_and_a_longer_one_is_refused(
    tmp_path, corpus, capsys
):
    first = tmp_path / "run"
    code, _, err = train(capsys, corpus, first, "--positional", "learned", "--max-iters", "1")
    assert code == 0, err
    argv = ["train", "gpt", "--init", str(first), "--data", str(corpus), "--batch-size", "4"]
    argv += ["--eval-iters", "1", "--no-compile", "--max-iters", "1", "--learning-rate", "1e-9"]
    code, _, err = run([*argv, "--context-length", "8", "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "; a context of 8, not its 16" in err, err
    before = safetensors.torch.load_file(first / "model.safetensors")
    after = safetensors.torch.load_file(tmp_path / "b" / "model.safetensors")
    (name,) = [n for n in before if before[n].shape != after[n].shape]
    torch.testing.assert_close(after[name], before[name][:8], rtol=0, atol=1e-6)
    code, _, err = run([*argv, "--context-length", "32", "--out", str(tmp_path / "c")], capsys)
    error = one_line_error(code, err)
    assert "has no positions past its 16: its position_embedding.weight is a table" in error
    assert "--context-length 32 would read positions it never learned; give 16 or fewer" in error
    assert not (tmp_path / "c").exists()
    code, _, err = run([*argv, "--context-length", "0", "--out", str(tmp_path / "c")], capsys)
    assert "--context-length must be a positive number, got 0" in one_line_error(code, err)


def test_hyena_whose_filters_span_the_context_is_refused_a_shorter_one(tmp_path, corpus, capsys):
    """Hyena samples its filters over [0, 1] of the context: a shorter one has other filters,
    not the first positions of the checkpoint's, so no crop is the checkpoint's function."""
    first = tmp_path / "run"
    code, _, err = train(capsys, corpus, first, "--mixer", "hyena", "--max-iters", "1")
    assert code == 0, err
    argv = ["train", "gpt", "--init", str(first), "--data", str(corpus), "--batch-size", "4"]
    argv += ["--no-compile", "--max-iters", "1", "--context-length", "8", "--out"]
    code, _, err = run([*argv, str(tmp_path / "b")], capsys)
    error = one_line_error(code, err)
    assert "does not crop to --context-length 8: its blocks.0.token_mixer.filter" in error
    assert "spread over all its 16 positions" in error and not (tmp_path / "b").exists()
    long, short = (
        GPT(GPTConfig(vocab_size=11, context_length=n, n_layers=1, d_model=16, mixer="hyena"))
        for n in (16, 8)
    )
    save_checkpoint(tmp_path / "long", long, {})
    load_matching_weights(short, tmp_path / "long" / "model.safetensors", crop=(16, 8))
    filters = [model.blocks[0].token_mixer.filter(8) for model in (long, short)]
    assert not torch.allclose(*filters, atol=1e-2)  # the same weights, other filters


def test_a_rope_model_without_a_position_table_starts_a_longer_context(tmp_path, corpus, capsys):
    first = tmp_path / "run"
    code, _, err = train(capsys, corpus, first, "--positional", "rope", "--max-iters", "1")
    assert code == 0, err
    argv = ["train", "gpt", "--init", str(first), "--data", str(corpus), "--batch-size", "4"]
    argv += ["--eval-iters", "1", "--no-compile", "--max-iters", "1", "--learning-rate", "1e-9"]
    code, _, err = run([*argv, "--context-length", "32", "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "new: none" in err and "; a context of 32, not its 16" in err, err
    before = safetensors.torch.load_file(first / "model.safetensors")
    after = safetensors.torch.load_file(tmp_path / "b" / "model.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("kind", "crops"), [("gpt", True), ("classifier", True), ("igpt", False)])
def test_init_help_offers_a_shorter_context_only_where_there_is_the_flag(kind, crops, capsys):
    """igpt's context is its images' size, set by its data: it has no --context-length."""
    with pytest.raises(SystemExit):
        run(["train", kind, "--help"], capsys)
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "(a shorter --context-length crops its positions; a longer one needs none)" in text
    ) == crops
    assert ("--context-length CONTEXT_LENGTH" in text) == crops
