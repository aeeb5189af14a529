"""How recognisable a diffusion run's samples are, scored by a classifier trained on the same data.

A trained classifier is confident on real digits and spread over all ten classes; on blobs it
hesitates, and a collapsed sampler draws few classes. So this reports, for N samples of the
ddpm run and for N real test images side by side:

- confidence: the classifier's mean top probability, and the share of images above 0.9;
- classes: how many of the ten classes it assigns, and the entropy of their histogram in
  nats (log 10 = 2.30 for a uniform spread);
- the classifier score exp(E[KL(p(y|x) || p(y))]) (the Inception score with an MNIST
  classifier): 10 at best, 1 for samples that all look alike or like nothing.

Usage (from the repository root):

    uv run train.py --arch cnn --dataset mnist --data.root ../shared/data --epochs 2 \\
        --run-name mnist-cnn
    uv run python benchmarks/sample_quality.py outputs/<ddpm-run> outputs/mnist-cnn
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from toolbox.config.plain import from_plain
from toolbox.records import checkpoint
from toolbox.training.runtime import build_model, input_normalizer


def load_run(run_dir: Path, device: torch.device, ema: bool = True):
    """The model of a run's model_best.pth.tar (its weight average, if it kept one), its
    config and its dataset's splits."""
    state = checkpoint.load_checkpoint(run_dir / checkpoint.BEST)
    config = from_plain(state["config"])
    splits = config.data.build()
    model = build_model(config, splits.info, device)
    averaged = ema and state.get("ema") is not None
    model.load_state_dict(state["ema"] if averaged else state["model"])
    return model.eval(), config, splits, averaged


def scores(probabilities: torch.Tensor) -> dict[str, float]:
    """The figures of the module docstring, for class probabilities (N, classes)."""
    top = probabilities.max(dim=1).values
    counts = torch.bincount(probabilities.argmax(dim=1), minlength=probabilities.shape[1])
    spread = counts.float() / counts.sum()
    marginal = probabilities.mean(dim=0)
    kl = (probabilities * (probabilities.clamp_min(1e-12).log() - marginal.log())).sum(dim=1)
    return {
        "mean top probability": top.mean().item(),
        "share above 0.9": (top > 0.9).float().mean().item(),
        "classes assigned": int((counts > 0).sum()),
        "class entropy (nats)": -(spread[spread > 0] * spread[spread > 0].log()).sum().item(),
        "classifier score": math.exp(kl.mean().item()),
        "histogram": counts.tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ddpm_run", type=Path, help="run directory of an --arch ddpm run")
    parser.add_argument("classifier_run", type=Path, help="run directory of a classifier run")
    parser.add_argument("--samples", type=int, default=500, help="images of each kind")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler's noise")
    parser.add_argument("--batch-size", type=int, default=250, help="samples drawn at once")
    parser.add_argument("--no-ema", action="store_true", help="the trained weights, not the EMA")
    parser.add_argument("--sampler", choices=["ddpm", "ddim"], help="instead of the run's")
    parser.add_argument("--sample-steps", type=int, help="instead of the run's")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    ddpm, _, _, averaged = load_run(args.ddpm_run, device, ema=not args.no_ema)
    # Sampling options change no weight, so any trained model can be sampled either way.
    ddpm.sampler = args.sampler or ddpm.sampler
    ddpm.sample_steps = args.sample_steps or ddpm.sample_steps
    classifier, classifier_config, splits, _ = load_run(args.classifier_run, device)
    normalize = input_normalizer(classifier_config, splits.info, device)

    @torch.no_grad()
    def classify(pixels: torch.Tensor) -> torch.Tensor:
        return classifier(normalize(pixels)).softmax(dim=1).cpu()

    generator = torch.Generator(device).manual_seed(args.seed)
    drawn = []
    with torch.no_grad():
        for start in range(0, args.samples, args.batch_size):
            count = min(args.batch_size, args.samples - start)
            images = ddpm.sample(count, generator)  # model units
            low, high = ddpm.pixel_range
            drawn.append(classify((images * ddpm.std + ddpm.mean).clamp(low, high)))
    real = classify(splits.test["input"][: args.samples].to(device))

    print(
        f"{args.samples} samples of {args.ddpm_run} ({ddpm.sampler}, {ddpm.sample_steps} "
        f"steps{', EMA weights' if averaged else ''}) and "
        f"{args.samples} real test images, classified by {args.classifier_run}"
    )
    results = {"samples": scores(torch.cat(drawn)), "real": scores(real)}
    print(f"| measure | {' | '.join(results)} |")
    print(f"|---|{'---|' * len(results)}")
    for measure in results["samples"]:
        values = [results[kind][measure] for kind in results]
        shown = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in values]
        print(f"| {measure} | {' | '.join(shown)} |")


if __name__ == "__main__":
    main()
