"""`attnlab train igpt`, `attnlab evaluate` and `attnlab sample-images` end to end on the
embedded shapes, and bad input (an image of the wrong size, a corrupt PNG, a checkpoint of
another kind): one clear line, exit code 2, nothing lost."""

import json
import shutil

import pytest
import torch
from helpers import one_line_error, run
from PIL import Image
from test_cli_vision import fingerprint, run_quiet

from attnlab.generation import complete_images
from attnlab.training.checkpoints import load_checkpoint

SMALL = [
    "--embedded-images", "64", "--n-layers", "1", "--d-model", "32", "--batch-size", "8",
    "--eval-iters", "2", "--device", "cpu", "--precision", "fp32",
]  # fmt: skip
SIDE = 16  # the tiny preset's images


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny image GPT trained for a few steps on the embedded shapes, 2 pixels a token."""
    out = tmp_path_factory.mktemp("igpt") / "run"
    code, _, err = run_quiet(["train", "igpt", "--max-iters", "4", "--eval-interval", "2",
                              "--pixels-per-token", "2", "--out", str(out), *SMALL])  # fmt: skip
    assert code == 0, err
    return out


def test_the_loss_plot_draws_no_loss_in_other_units_as_a_score(trained, tmp_path, monkeypatch):
    from attnlab.cli import reports

    drawn = []
    monkeypatch.setattr("attnlab.figures.save_figure", lambda fig, path: drawn.append(fig) or path)
    reports.plot_losses(trained / "metrics.jsonl", tmp_path / "loss.png")
    assert len(drawn[0].axes) == 1  # nats per image and bits per pixel: the val loss's curve


def test_training_scores_nats_per_image_and_saves_the_palette(trained):
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    # 128 tokens of 2 pixels: the loss per token times the tokens is the NLL of an image
    assert last["val_nats_per_image"] == pytest.approx(last["val_loss"] * 128, rel=1e-4)
    checkpoint = load_checkpoint(trained)
    palette = checkpoint.artifacts["palette"]
    assert palette.colours == ((0,), (255,)) and palette.pixels_per_token == 2
    config = checkpoint.model.config
    assert (config.vocab_size, config.context_length, config.image_size) == (5, 128, SIDE)


def test_evaluate_reports_nats_per_image_on_the_test_images(trained, capsys):
    code, out, err = run(["evaluate", str(trained), "--json", "--batch-size", "500"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["images"] == 2000
    assert 0 < result["nats_per_image"] < SIDE * SIDE * 0.7  # better than a coin per pixel
    expected_bits = result["nats_per_image"] / SIDE**2 / 0.6931471805599453
    assert result["bits_per_pixel"] == pytest.approx(expected_bits)


def test_sample_images_writes_a_grid_of_samples_and_completions(trained, capsys):
    png = trained.parent / "grid.png"
    argv = ["sample-images", str(trained), "--out", str(png), "--samples", "4",
            "--completions", "2", "--columns", "2", "--scale", "1"]  # fmt: skip
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "4 samples, 2 completions" in out
    cell = SIDE + 2  # an image and the line after it
    # two rows of samples, then originals, top halves and completions
    assert Image.open(png).size == (2 * cell + 2, 5 * cell + 2)
    argv = ["sample-images", str(trained), "--out", str(png), "--samples", "1",
            "--completions", "0", "--scale", "1"]  # fmt: skip
    assert run(argv, capsys)[0] == 0
    assert Image.open(png).size == (cell + 2, cell + 2)  # one image: no empty cells beside it


def test_completions_keep_the_top_half_they_were_given(trained):
    checkpoint = load_checkpoint(trained)
    model, palette = checkpoint.model, checkpoint.artifacts["palette"]
    top = torch.randint(palette.vocab_size, (3, 64), generator=torch.Generator().manual_seed(0))
    images = complete_images(model, palette, top, seed=1)
    assert images.shape == (3, 128) and torch.equal(images[:, :64], top)
    assert int(images.max()) < palette.vocab_size  # never the start token
    assert torch.equal(images, complete_images(model, palette, top, seed=1))  # the seed decides
    assert not torch.equal(images, complete_images(model, palette, top, seed=2))
    samples = complete_images(model, palette, count=5, temperature=0)
    assert samples.shape == (5, 128) and (samples == samples[0]).all()  # greedy: all the same


def test_complete_files_of_the_right_size(trained, tmp_path, capsys):
    path = tmp_path / "half.png"
    Image.new("L", (SIDE, SIDE), 255).save(path)
    png = tmp_path / "grid.png"
    argv = ["sample-images", str(trained), "--complete", str(path), "--samples", "0",
            "--out", str(png), "--scale", "1", "--columns", "1"]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 0, err
    grid = Image.open(png).convert("L")
    assert grid.size == (SIDE + 4, 3 * (SIDE + 2) + 2)
    assert grid.getpixel((2, 2)) == 255  # the white original, quantised to white


def bad_inputs(tmp_path):
    wrong_size = tmp_path / "big.png"
    Image.new("L", (SIDE + 4, SIDE + 4)).save(wrong_size)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return {"wrong_size": (wrong_size, "20x20 pixels"), "corrupt": (corrupt, "not a readable")}


@pytest.mark.parametrize("case", ["wrong_size", "corrupt"])
def test_bad_images_to_complete_are_one_line_and_exit_2(trained, tmp_path, capsys, case):
    path, message = bad_inputs(tmp_path)[case]
    png = tmp_path / "kept.png"
    png.write_bytes(b"an earlier grid")
    before = fingerprint(trained)
    argv = ["sample-images", str(trained), "--complete", str(path), "--out", str(png)]
    code, _, err = run(argv, capsys)
    assert message in one_line_error(code, err)
    assert png.read_bytes() == b"an earlier grid" and fingerprint(trained) == before


def test_an_output_never_overwrites_the_checkpoint_and_has_its_formats_name(
    trained, tmp_path, capsys
):
    before = fingerprint(trained)
    for out, message in [
        (trained / "model.safetensors", "would overwrite a file of the checkpoint"),
        (trained / "config.json", "would overwrite a file of the checkpoint"),
        (trained / "loss.png", "would overwrite a file of the checkpoint"),
        (tmp_path / "grid.txt", "the file is PNG, name it *.png"),
        (tmp_path, "is a folder: give a file"),
    ]:
        code, _, err = run(["sample-images", str(trained), "--out", str(out)], capsys)
        assert message in one_line_error(code, err)
    assert fingerprint(trained) == before
    image = tmp_path / "digit.png"
    Image.new("L", (SIDE, SIDE)).save(image)
    kept = image.read_bytes()
    argv = ["sample-images", str(trained), "--complete", str(image), "--out", str(image)]
    assert "would overwrite --complete's file" in one_line_error(*run(argv, capsys)[::2])
    assert image.read_bytes() == kept


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--samples", "-1"], "--samples"),
        (["--samples", "0", "--completions", "0"], "nothing to draw"),
        (["--temperature", "-1"], "--temperature"),
        (["--temperature", "nan"], "--temperature must be a finite number"),
        (["--seed", "99999999999999999999"], "--seed must be in [0, 2**63)"),
        (["--seed", "-1"], "--seed must be in [0, 2**63)"),
        (["--scale", "1000"], "--scale 1000 draws each 16-pixel image 16000 pixels wide"),
        (["--temperature", "0", "--seed", "3"], "--seed would change nothing at --temperature 0"),
        (["--complete", "a.png", "--completions", "3"], "--completions would change nothing"),
        (["--complete", "a.png", "--data", "shapes"], "--data would change nothing"),
        (["--resize"], "--resize scales --complete images"),
        (["--out", ""], "--out is empty: give a file"),  # not CKPT/samples.png
        (["--data", ""], "--data is empty"),  # not the run's own data
        (["--top-k", "-1"], "--top-k must be >= 0 (0 = off)"),
        (["--temperature", "0", "--samples", "4"], "--samples 4 at --temperature 0 (greedy)"),
        (["--top-k", "4"], "--top-k 4 would change nothing: the model chooses from 4 palette"),
    ],
)
def test_bad_options_are_one_line(trained, capsys, flags, message):
    before = fingerprint(trained)
    code, _, err = run(["sample-images", str(trained), *flags], capsys)
    assert message in one_line_error(code, err)
    assert fingerprint(trained) == before


def test_the_default_grid_is_never_written_through_a_link_in_the_run(trained, tmp_path, capsys):
    """CKPT/samples.png, in a run someone shared, may be a link to any file of the user's."""
    shared, victim = tmp_path / "shared", tmp_path / "victim"
    shutil.copytree(trained, shared)
    victim.write_text("mine")
    (shared / "samples.png").unlink(missing_ok=True)
    (shared / "samples.png").symlink_to(victim)
    argv = ["sample-images", str(shared), "--samples", "1", "--completions", "0"]
    line = one_line_error(*run(argv, capsys)[::2])
    assert f"{shared / 'samples.png'} is a link (to {victim})" in line and "with --out" in line
    assert victim.read_text() == "mine"


def test_greedy_draws_one_sample_unless_told_more(trained, tmp_path, capsys):
    png = tmp_path / "greedy.png"
    argv = ["sample-images", str(trained), "--temperature", "0", "--completions", "0"]
    for flags in [], ["--samples", "1"]:  # as many as it draws: nothing to refuse
        code, stdout, err = run([*argv, "--out", str(png), *flags], capsys)
        assert code == 0 and stdout.startswith("1 samples, 0 completions"), err


def test_top_k_0_is_off_as_in_sample(trained, tmp_path, capsys):
    grids = [tmp_path / "off.png", tmp_path / "zero.png"]
    for png, flags in zip(grids, [[], ["--top-k", "0"]], strict=True):
        argv = ["sample-images", str(trained), "--samples", "2", "--completions", "0"]
        code, _, err = run([*argv, "--seed", "1", "--out", str(png), *flags], capsys)
        assert code == 0, err
    assert grids[0].read_bytes() == grids[1].read_bytes()


def test_a_checkpoint_of_another_kind_is_refused(tmp_path, capsys):
    from helpers import tiny_gpt

    from attnlab.tokenizers import build_tokenizer
    from attnlab.training.checkpoints import save_checkpoint

    save_checkpoint(
        tmp_path / "gpt", tiny_gpt(vocab_size=256), {"tokenizer": build_tokenizer("byte", [])}
    )
    code, _, err = run(["sample-images", str(tmp_path / "gpt")], capsys)
    assert "'gpt' model" in one_line_error(code, err)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--palette", "grey:16", "--pixels-per-token", "4"], "65,536 token values"),
        (["--palette", "grey:300"], "give from 2 to 256 grey levels"),
    ],
)
def test_palettes_beyond_the_limits_are_one_line(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    code, _, err = run(["train", "igpt", *flags, "--max-iters", "1", "--out", str(out), *SMALL],
                       capsys)  # fmt: skip
    assert message in one_line_error(code, err)
    assert not out.exists()


def test_inspect_attention_reads_an_image_as_the_model_does(trained, tmp_path, capsys):
    from attnlab.interpretability.inputs import model_inputs
    from attnlab.training.checkpoints import load_checkpoint

    path = tmp_path / "white.png"
    Image.new("L", (SIDE, SIDE), 255).save(path)
    checkpoint = load_checkpoint(trained)
    inputs = model_inputs(checkpoint, None, image=str(path))
    palette = checkpoint.artifacts["palette"]
    (ids,) = inputs.args
    assert ids.shape == (1, SIDE * SIDE // 2) and ids[0, 0] == palette.start_token
    assert list(inputs.sequences) == ["image"]  # the viewer's "queries (image)", not "(text)"
    assert inputs.sequences["image"][:3] == ["start", "r0c0", "r0c2"]
    assert inputs.sequences["image"][-1] == f"r{SIDE - 1}c{SIDE - 4}"  # the last token is not fed
    page = tmp_path / "page.html"
    argv = ["inspect", "attention", str(trained), "--image", str(path), "--out", str(page)]
    code, _, err = run(argv, capsys)
    assert code == 0 and page.is_file(), err
    line = one_line_error(*run([*argv[:3], "--text", "hi"], capsys)[::2])
    assert "holds an 'igpt' model, which reads images: give --image FILE" in line
