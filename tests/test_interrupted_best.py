"""A run killed between saving a new best/ and the checkpoint that records it: best/ then holds
weights the resumed run's record of its best does not describe."""

import warnings

import pytest
import safetensors
from test_training import TOKENIZER, make_trainer

from attnlab.training.checkpoints import SAVE_ID, save_checkpoint


def keeping_best(out_dir, max_iters):
    trainer = make_trainer(out_dir, max_iters=max_iters, eval_interval=2)
    trainer.keep_best = "val_loss"
    return trainer


def test_a_best_saved_after_the_checkpoint_is_not_taken_for_the_one_it_records(tmp_path):
    keeping_best(tmp_path, max_iters=2).fit()  # best/ and the checkpoint of step 2
    # the kill: a later evaluation's best/ is saved, the checkpoint that records it not
    save_checkpoint(tmp_path / "best", make_trainer(tmp_path).model, {"tokenizer": TOKENIZER})
    resumed = keeping_best(tmp_path, max_iters=4)
    with pytest.warns(RuntimeWarning, match="best is not the best its checkpoint records"):
        resumed.resume()
    assert resumed.best == {}  # not step 2's record, which best/ no longer holds
    resumed.fit()  # the next evaluation is kept, and recorded with the weights it names
    assert resumed.best["step"] == 4
    with safetensors.safe_open(tmp_path / "best" / "model.safetensors", "pt") as best:
        assert resumed.best[SAVE_ID] == best.metadata()[SAVE_ID]


def test_a_resumed_run_keeps_the_best_its_checkpoint_records(tmp_path):
    first = keeping_best(tmp_path, max_iters=2)
    first.fit()
    resumed = keeping_best(tmp_path, max_iters=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.resume()
    assert resumed.best == first.best and resumed.best["step"] == 2


def test_a_damaged_best_does_not_stop_the_run_resuming(tmp_path):
    keeping_best(tmp_path, max_iters=2).fit()
    (tmp_path / "best" / "model.safetensors").write_bytes(b"not safetensors")
    resumed = keeping_best(tmp_path, max_iters=4)
    with pytest.warns(RuntimeWarning, match="best is not the best its checkpoint records"):
        resumed.resume()
    resumed.fit()
    assert resumed.best["step"] in (2, 4)  # kept anew, over the damaged file
