"""Built-in in-memory DataModules: fixed splits, rank sharding, seeded per-epoch augmentation."""

from __future__ import annotations

import torch

from datamodules.digits import DigitsDataModule, shift_image
from datamodules.pydoc_text import MASK_ID, PydocTextDataModule


def test_shift_moves_pixels_and_fills_zeros():
    image = torch.arange(1.0, 17.0).view(4, 4)
    down_left = shift_image(image, 1, -1)
    assert down_left[0].tolist() == [0, 0, 0, 0] and down_left[:, 3].tolist() == [0, 0, 0, 0]
    assert down_left[1, 0] == image[0, 1] and down_left[3, 2] == image[2, 3]
    assert torch.equal(shift_image(image, 0, 0), image)


def test_digit_splits_are_fixed_and_disjoint():
    first, second = DigitsDataModule(seed=1), DigitsDataModule(seed=2)  # the run seed does not move the test set
    first.setup(), second.setup()
    ids = {split: set(first.datasets[split].ids.tolist()) for split in ("train", "val", "test")}
    assert sum(map(len, ids.values())) == 1797 and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert ids["test"] == set(second.datasets["test"].ids.tolist())


def test_digit_shifts_are_seeded_per_epoch_and_only_in_training():
    datamodule = DigitsDataModule(max_shift=1)
    datamodule.setup()
    train = datamodule.datasets["train"]
    epoch0 = torch.stack([train[i]["inputs"] for i in range(50)])
    again = torch.stack([train[i]["inputs"] for i in range(50)])
    train.set_epoch(1)
    epoch1 = torch.stack([train[i]["inputs"] for i in range(50)])
    assert torch.equal(epoch0, again) and not torch.equal(epoch0, epoch1)
    assert not torch.equal(epoch0, train.images[:50])  # some images really moved
    val = datamodule.datasets["val"]
    assert torch.equal(val[3]["inputs"], val.images[3])


def test_byte_samples_mask_only_chosen_positions_and_eval_masks_are_fixed():
    datamodule = PydocTextDataModule(seq_len=64, batch_size=4)
    datamodule.setup()
    sample = datamodule.datasets["train"][5]
    changed = sample["inputs"] != sample["target"]
    assert not (changed & ~sample["loss_mask"]).any()  # nothing outside the loss mask is altered
    assert (sample["inputs"][sample["loss_mask"]] == MASK_ID).any()
    val = datamodule.datasets["val"]
    val.set_epoch(3)
    assert torch.equal(val[2]["inputs"], datamodule.datasets["val"][2]["inputs"])
    batches = [b["index"] for b in datamodule.val_dataloader()]
    assert sorted(torch.cat(batches).tolist()) == list(range(len(val)))
