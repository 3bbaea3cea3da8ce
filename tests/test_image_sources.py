"""Where images come from: a folder of images without a test folder (its seeded held-out share,
drawn without copies), MNIST's IDX files as other copies of them name them."""

import numpy as np
import torch
from test_images import write_mnist, write_png

from attnlab.data.images import HOLDOUT_SEED, is_idx_folder, load_idx_folder, load_image_folder


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


def test_mnist_as_kaggle_names_its_files_is_read_as_idx_files(tmp_path):
    """Kaggle's copy names its files "train-images.idx3-ubyte", each also in a folder of its
    own name: it was taken for a folder of class folders, which held no readable image."""
    write_mnist(tmp_path / "mnist", compress=False)
    expected = load_idx_folder(tmp_path / "mnist")
    for nested in (False, True):
        kaggle = tmp_path / f"kaggle{int(nested)}"
        for file in (tmp_path / "mnist").iterdir():
            name = file.name.replace("-idx", ".idx")
            target = kaggle / name / name if nested else kaggle / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.read_bytes())
        assert is_idx_folder(kaggle)
        data = load_idx_folder(kaggle)
        assert torch.equal(data.train.images, expected.train.images)
        assert torch.equal(data.test.labels, expected.test.labels)
