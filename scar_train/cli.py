"""``scar train``: loaded by the ``scar`` CLI only when invoked (it needs torch)."""

from __future__ import annotations

from pathlib import Path

import typer

from scar_train.config import TrainConfig

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command()
def train(
    data: Path = typer.Option(..., "--data", help="Data index JSON (../shared/data format)."),
    out: Path = typer.Option(..., "--out", help="Run folder (config, log, last/best checkpoints)."),
    size: str = typer.Option("small", help="Model size: small or paper."),
    epochs: int = typer.Option(30, help="Epochs (of --steps-per-epoch optimiser steps)."),
    steps_per_epoch: int = typer.Option(100, help="Optimiser steps per epoch."),
    max_steps: int | None = typer.Option(None, help="Stop after this many steps (smoke runs)."),
    batch: int = typer.Option(8, help="Slices per batch (per process)."),
    weak_per_batch: int = typer.Option(2, help="Key-point-only samples per batch."),
    crop: int = typer.Option(256, help="Training crop size (pixels at 1 mm)."),
    lambda_: float = typer.Option(50.0, "--lambda", help="Weight of the key-point loss."),
    heatmap_pos_weight: float = typer.Option(
        20.0, help="Key-point heatmap MSE weight 1 + this x target (0 = plain MSE)."),
    lr: float = typer.Option(5e-4, help="Adam learning rate (divided by 5 at 1/3 and 2/3)."),
    no_mcca: bool = typer.Option(False, "--no-mcca", help="Ablation: no MCCA (MF = F_S^H)."),
    no_at: bool = typer.Option(False, "--no-at", help="Ablation: no AT (FE = F_S^L)."),
    fine_refinement: bool = typer.Option(
        False, "--fine-refinement", help="Add the stride-2 boundary refinement head (sharper "
        "thin structures: discs; not in the paper)."),
    gap_weight: float = typer.Option(
        0.0, help="Extra cross-entropy weight in the background gaps between bodies and discs "
        "of masks labelling both (U-Net weight map; 0 = off)."),
    context_slices: int = typer.Option(
        0, help="2.5D input: neighbouring sagittal slices on each side as extra input channels "
        "(0 = 2D; --init from a 2D checkpoint starts them at zero)."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Disable augmentation."),
    rotation_deg: float = typer.Option(
        10.0, help="Augmentation: in-plane rotation drawn uniformly in +-this many degrees."),
    structure_signal_p: float = typer.Option(
        0.3, help="Augmentation: probability of darkening (degenerated disc, Modic-type body) "
        "or brightening one labelled body or disc (0 = off)."),
    disc_collapse_p: float = typer.Option(
        0.15, help="Augmentation: probability of squeezing one disc's height (collapse)."),
    thick_slice_p: float = typer.Option(
        0.2, help="Augmentation: probability of through-plane (thick-slice) blur."),
    motion_blur_p: float = typer.Option(
        0.15, help="Augmentation: probability of in-plane motion blur (a line kernel)."),
    oblique_slice_p: float = typer.Option(
        0.2, help="Augmentation: probability of an oblique plane (tilted +-10 deg through the "
        "sagittal slices; mask cases)."),
    precision: str = typer.Option(
        "auto", help="fp32, bf16 (CPU autocast, FP32 weights) or auto: bf16 on a CPU with "
        "native BF16 (amx_bf16 or avx512_bf16), else fp32."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.pt."),
    fold: int | None = typer.Option(None, help="Cross-validation fold (with --folds)."),
    folds: int | None = typer.Option(None, help="Number of folds (split by subject)."),
    seed: int = typer.Option(0, help="Random seed."),
    val_every: int = typer.Option(5, help="Validate every N epochs."),
    log_every: int = typer.Option(10, help="Log every N steps."),
    ckpt_every: int = typer.Option(50, help="Write last.pt every N steps."),
    threads: int | None = typer.Option(None, help="CPU threads (default: all cores)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    init: Path | None = typer.Option(
        None, "--init", help="Start from this checkpoint's weights (fine-tuning); classes are "
        "matched by id, new classes start fresh."),
    disc_fraction: float = typer.Option(0.25, help="Share of mask samples from disc-only sets."),
    both_fraction: float = typer.Option(
        0.35, help="Share of mask samples from sets labelling vertebrae and discs."),
):
    """Train SCAR-Net with mixed supervision (masks + key-points) and partial labels."""
    from scar_train.train import train as run_training

    cfg = TrainConfig(data=str(data), out=str(out), size=size, epochs=epochs,
                      steps_per_epoch=steps_per_epoch, max_steps=max_steps, batch=batch,
                      weak_per_batch=weak_per_batch, crop=crop, rec_weight=lambda_,
                      heatmap_pos_weight=heatmap_pos_weight, lr=lr,
                      use_mcca=not no_mcca, use_at=not no_at, fine_refinement=fine_refinement,
                      gap_weight=gap_weight, context_slices=context_slices,
                      augment=not no_augment, rotation_deg=rotation_deg,
                      structure_signal_p=structure_signal_p, disc_collapse_p=disc_collapse_p,
                      thick_slice_p=thick_slice_p, motion_blur_p=motion_blur_p,
                      oblique_slice_p=oblique_slice_p,
                      precision=precision,
                      seed=seed, fold=fold, folds=folds, val_every=val_every,
                      log_every=log_every, ckpt_every=ckpt_every, threads=threads,
                      device=device, resume=resume, init=str(init) if init else None,
                      disc_fraction=disc_fraction, both_fraction=both_fraction)
    summary = run_training(cfg)
    typer.echo(f"done: step {summary['step']}, best val score {summary['best_mean_dice']:.4f}"
               f", checkpoints in {out}")


def main() -> None:  # `python -m scar_train.cli` (torchrun uses this)
    import sys

    from scar_runtime.commands.cli import run

    sys.exit(run(["train", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
