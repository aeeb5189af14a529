"""One baseline run in a fresh process: ``python _workloads.py VARIANT CASE BATCH EPOCHS ROOT``,
VARIANT one of bare, dataloader, lightning (the toolbox runs as ``python train.py``).

Prints one JSON line with the seconds of each epoch (training plus its validation pass).
Every variant trains the same model (toolbox's registered builder, same seed) on the same
MNIST split (toolbox's reader: 54,000 train / 6,000 val images, uint8), with AdamW at lr
1e-3, a validation pass over the 6,000 images after each epoch, and the last partial batch
dropped. Loading the data is outside the timed part for all of them.
"""

from __future__ import annotations

import json
import sys
import time

import torch

REPO = __file__.rsplit("/benchmarks/", 1)[0]
sys.path.insert(0, REPO)

from toolbox.datasets import DatasetInfo  # noqa: E402
from toolbox.datasets.mnist import MNIST  # noqa: E402
from toolbox.models import MODELS  # noqa: E402

EVAL_BATCH = 512
MEAN, STD = 0.1307 * 255, 0.3081 * 255


def model_config(case: str):
    if case == "mlp":
        return MODELS.get("mlp")(hidden_sizes=(256,), dropout=0.0)
    return MODELS.get("cnn")()


def build_model(case: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return model_config(case).build(DatasetInfo("classification", (1, 28, 28), 10))


def load(root: str):
    splits = MNIST(root=root, download=False).build()
    return splits.train, splits.val


def bare(case, batch_size, epochs, root):
    """The limit: preloaded tensors, a permutation per epoch, nothing else."""
    train, val = load(root)
    model = build_model(case)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = train["input"], train["target"]
    generator = torch.Generator().manual_seed(0)
    epoch_seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        running = torch.zeros(())
        order = torch.randperm(len(labels), generator=generator)
        for batch_idx in range(len(labels) // batch_size):
            index = order[batch_idx * batch_size : (batch_idx + 1) * batch_size]
            inputs = (images[index].float() - MEAN) / STD
            loss = torch.nn.functional.cross_entropy(model(inputs), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.detach()
        model.eval()
        correct = torch.zeros((), dtype=torch.int64)
        with torch.no_grad():
            for start in range(0, len(val["target"]), EVAL_BATCH):
                inputs = (val["input"][start : start + EVAL_BATCH].float() - MEAN) / STD
                correct += (
                    model(inputs).argmax(1) == val["target"][start : start + EVAL_BATCH]
                ).sum()
        print(
            f"loss {running.item() / (len(labels) // batch_size):.4f} val accuracy "
            f"{correct.item() / len(val['target']):.4f}",
            file=sys.stderr,
        )
        epoch_seconds.append(time.perf_counter() - started)
    return epoch_seconds, len(labels) // batch_size * batch_size


def dataloader(case, batch_size, epochs, root):
    """What most users write: a Dataset of PIL images, per-sample transforms, workers."""
    from PIL import Image
    from torchvision import transforms

    train, val = load(root)
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
    )

    class Images(torch.utils.data.Dataset):
        def __init__(self, split):
            self.images = split["input"][:, 0].numpy()
            self.labels = split["target"].tolist()

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, index):
            return transform(Image.fromarray(self.images[index], mode="L")), self.labels[index]

    loader = torch.utils.data.DataLoader(
        Images(train), batch_size=batch_size, shuffle=True, drop_last=True, num_workers=2
    )
    val_loader = torch.utils.data.DataLoader(Images(val), batch_size=EVAL_BATCH, num_workers=2)
    model = build_model(case)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    epoch_seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        for inputs, labels in loader:
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum((model(x).argmax(1) == y).sum().item() for x, y in val_loader)
        print(f"val accuracy {correct / len(val['target']):.4f}", file=sys.stderr)
        epoch_seconds.append(time.perf_counter() - started)
    return epoch_seconds, len(loader) * batch_size


def lightning(case, batch_size, epochs, root):
    """PyTorch Lightning with its defaults (checkpointing, logger), progress bar off."""
    import tempfile

    import lightning as L  # noqa: N812 - Lightning's own convention

    train, val = load(root)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = build_model(case)

        def forward(self, images):
            return self.model((images.float() - MEAN) / STD)

        def training_step(self, batch, batch_idx):
            images, labels = batch
            loss = torch.nn.functional.cross_entropy(self(images), labels)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            images, labels = batch
            logits = self(images)
            self.log("val_loss", torch.nn.functional.cross_entropy(logits, labels))
            self.log("val_accuracy", (logits.argmax(1) == labels).float().mean())

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    epoch_ends = []

    class Clock(L.Callback):
        def on_train_epoch_start(self, trainer, module):
            epoch_ends.append(("start", time.perf_counter()))

        def on_validation_end(self, trainer, module):
            if not trainer.sanity_checking:
                epoch_ends.append(("end", time.perf_counter()))

    train_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train["input"], train["target"]),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
    )
    val_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(val["input"], val["target"]), batch_size=EVAL_BATCH
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tempfile.mkdtemp(),
        callbacks=[Clock()],
        num_sanity_val_steps=0,
    )
    trainer.fit(Module(), train_loader, val_loader)
    starts = [t for kind, t in epoch_ends if kind == "start"]
    ends = [t for kind, t in epoch_ends if kind == "end"]
    return [end - start for start, end in zip(starts, ends, strict=True)], len(
        train_loader
    ) * batch_size


def main() -> None:
    variant, case, batch_size, epochs, root = sys.argv[1:6]
    torch.set_num_threads(torch.get_num_threads())  # the default: all cores
    epoch_seconds, samples_per_epoch = globals()[variant](case, int(batch_size), int(epochs), root)
    print(
        json.dumps(
            {
                "variant": variant,
                "case": case,
                "batch_size": int(batch_size),
                "epoch_s": epoch_seconds,
                "samples_per_epoch": samples_per_epoch,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
