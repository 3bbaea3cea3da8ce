"""A folder of images without a test folder: its seeded held-out share, drawn without copies."""

import numpy as np
import torch
from test_images import write_png

from attnlab.data.images import HOLDOUT_SEED, load_image_folder


def test_the_held_out_share_is_the_seeded_draw_and_both_parts_share_one_copy(tmp_path):
    """The images of a class folder (in name order), drawn in the seeded order: the first 10%
    held out. Both parts are views of one tensor: stacking the images, then drawing them in
    that order, held the pixels three times over at the peak."""
    values = {"a": range(0, 100, 10), "b": range(105, 205, 10)}
    for name, levels in values.items():
        for i, value in enumerate(levels):
            write_png(tmp_path / name / f"{i}.png", value=value)
    data = load_image_folder(tmp_path, 8, log=lambda m: None)
    stacked = np.array([v for levels in values.values() for v in levels])  # one level an image
    order = torch.randperm(20, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    drawn = torch.cat([data.test.images, data.train.images])
    assert drawn.shape == (20, 1, 8, 8) and torch.equal(
        drawn[:, 0, 0, 0], torch.tensor(stacked)[order]
    )
    assert torch.equal(torch.cat([data.test.labels, data.train.labels]), (order >= 10).long())
    storages = {part.images.untyped_storage().data_ptr() for part in (data.test, data.train)}
    assert len(storages) == 1
