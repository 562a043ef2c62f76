"""Subprocess body of the kill-and-resume test: train a small masked LeNet-5 with checkpoints.

Usage: python resume_worker.py CHECKPOINT OUT [--stall-epoch E]
With --stall-epoch, the run writes OUT.stalled and sleeps in the middle of epoch E (after the
checkpoint of epoch E-1), waiting to be killed.
Its checkpoint (rewritten every epoch) is what the test watches for progress on a loaded machine.
"""

import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

import prunekit  # noqa: E402
from prunekit import data, models, training  # noqa: E402


def toy_dataset() -> data.Dataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(600) % 10
    images = torch.randint(0, 60, (600, 1, 28, 28), generator=g, dtype=torch.uint8)
    for c in range(10):  # a learnable pattern: a bright bar per class
        images[labels == c, 0, 2 * c + 3, 4:24] = 250
    train = data.ArrayDataset(images[:500], labels[:500], [str(i) for i in range(10)])
    test = data.ArrayDataset(images[500:], labels[500:], train.classes)
    return data.Dataset(data.get_info("fashion-mnist"), train, test, Path("toy"))


class Stall(training.Callback):
    def __init__(self, epoch: int, marker: Path):
        self.epoch, self.marker = epoch, marker

    def on_batch_end(self, trainer, step):
        if trainer.epoch == self.epoch - 1 and step == 3:
            self.marker.write_text("stalled")
            time.sleep(24 * 3600)  # until killed


def main() -> None:
    ckpt, out = Path(sys.argv[1]), Path(sys.argv[2])
    stall = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--stall-epoch" else None
    ds = toy_dataset()
    model = models.create("lenet5", 10, (1, 28, 28), seed=0)
    model.classifier.insert(1, torch.nn.Dropout(0.3))  # exercises the RNG state in the checkpoint
    masks = prunekit.prune(model, "random", 0.8, seed=0)
    config = training.TrainConfig(epochs=4, batch_size=50, lr=0.05, weight_decay=5e-4, schedule="cosine", val_size=50)
    callbacks = [Stall(stall, out.with_suffix(".stalled"))] if stall else []
    result = training.fit(model, ds, config, masks=masks, seed=1, checkpoint=ckpt, callbacks=callbacks, device="cpu")
    torch.save({"state": model.state_dict(), "history": result.history}, out)


if __name__ == "__main__":
    main()
