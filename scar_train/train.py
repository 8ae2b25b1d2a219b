"""The training loop behind ``scar train``.

One path for every setting: a single process, or several under ``torchrun`` (gloo on CPU, nccl on
GPU; each rank draws its own batches, DDP averages gradients, rank 0 validates and writes). A run
folder holds config.json, log.jsonl (one JSON object per line), last.pt (every ``ckpt_every``
steps and at the end) and best.pt (best validation mean Dice). ``--resume`` continues from last.pt
at the step it recorded, after checking the settings match.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from scar_runtime.core.atomic import check_folder_creatable
from scar_runtime.core.errors import ConfigError, DataIndexError
from scar_runtime.evaluation.dataset import Case, index_hash, read_index
from scar_runtime.pipeline.preprocess import PreprocessConfig
from scar_train.augment_structures import StructureAugmentConfig
from scar_train.checkpoint import load_checkpoint, save_checkpoint
from scar_train.config import TrainConfig
from scar_train.data import AugmentConfig, PreparedCase, SliceSampler, prepare_case
from scar_train.losses import scar_loss
from scar_train.model import ScarNetConfig, build_model, count_parameters
from scar_train.validate import validate

PREPROCESS = PreprocessConfig()


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size())


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name != "cpu":
        raise ConfigError(f"unknown device {name!r} (valid: auto, cpu, cuda)")
    return torch.device("cpu")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(name: str, device: torch.device, flags: set[str] | None = None) -> str:
    """``fp32`` or ``bf16`` for ``--precision``. ``auto`` is bf16 only on a CPU that computes
    BF16 natively (amx_bf16 or avx512_bf16 in its flags): faster per step there (AMX Xeon,
    AVX512_BF16 Zen 4), while an AVX2 CPU emulates it, several times slower (the figures:
    MODEL_CARD.md). GPUs keep FP32 (not measured)."""
    if name != "auto":
        return name
    if device.type != "cpu":
        return "fp32"
    have = cpu_flags() if flags is None else flags
    return "bf16" if have & {"amx_bf16", "avx512_bf16"} else "fp32"


def structure_augment(cfg: TrainConfig) -> StructureAugmentConfig:
    return StructureAugmentConfig(signal_p=cfg.structure_signal_p,
                                  collapse_p=cfg.disc_collapse_p, thick_p=cfg.thick_slice_p,
                                  motion_p=cfg.motion_blur_p, oblique_p=cfg.oblique_slice_p)


def split_for_run(cases: list[Case], cfg: TrainConfig) -> tuple[list[Case], list[Case]]:
    """(train, val). With --folds, subjects of the train split are dealt into folds (the index's
    own val split stays held out); otherwise the index's train/val splits are used."""
    if cfg.folds is None:
        return [c for c in cases if c.split == "train"], [c for c in cases if c.split == "val"]
    pool = [c for c in cases if c.split == "train"]
    subjects = sorted({c.subject for c in pool})
    order = np.random.default_rng(cfg.seed).permutation(len(subjects))
    fold_of = {subjects[j]: i % cfg.folds for i, j in enumerate(order)}
    val = [c for c in pool if fold_of[c.subject] == cfg.fold]
    return [c for c in pool if fold_of[c.subject] != cfg.fold], val


NEW_HEAD_PREFIX = "decoder.refine."  # weights a fine-tuning run may add (BoundaryRefinement)
INPUT_CONV_SUFFIX = "encoder.stem.0.0.weight"  # each encoder's first conv: sees the input image


def _widens_input(src: torch.Tensor, own: torch.Tensor) -> bool:
    """A one-channel conv weight that becomes an odd number of input channels (2D -> 2.5D)."""
    return (src.dim() == own.dim() == 4 and src.shape[1] == 1 and own.shape[1] % 2 == 1
            and src.shape[0] == own.shape[0] and src.shape[2:] == own.shape[2:])


def init_from_checkpoint(model: torch.nn.Module, path: str) -> None:
    """Copy a checkpoint's weights into ``model`` (fine-tuning). Tensors of equal shape are
    copied; a classifier with fewer classes (v0.1: 11) fills the first rows, which are the same
    classes (labels.py keeps ids 1-10 fixed), and the new classes keep their fresh init. A
    boundary-refinement head the checkpoint lacks keeps its init (its last conv is zero, so the
    network starts as the checkpoint's). A 2D checkpoint starts a 2.5D model: its input convs
    become the centre channel's and the neighbour channels start at zero, so the network starts
    as the checkpoint's and learns what the neighbours add. Any other mismatch is an error, not
    a silent partial load."""
    src = load_checkpoint(path)["model"]
    own = model.state_dict()
    for k, v in own.items():
        if k not in src and k.startswith(NEW_HEAD_PREFIX):
            continue
        if k not in src:
            raise ConfigError(f"--init {path}: has no weight {k} (another model size?)")
        w = src[k]
        if w.shape == v.shape:
            v.copy_(w)
        elif w.dim() == v.dim() and w.shape[1:] == v.shape[1:] and w.shape[0] < v.shape[0]:
            v[: w.shape[0]].copy_(w)
        elif k.endswith(INPUT_CONV_SUFFIX) and _widens_input(w, v):
            v.zero_()
            v[:, v.shape[1] // 2].copy_(w[:, 0])
        else:
            raise ConfigError(f"--init {path}: {k} has shape {tuple(w.shape)}, this model "
                              f"{tuple(v.shape)}")


def state_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class RunLog:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, **record) -> None:
        if not self.enabled:
            return
        record.setdefault("time", time.time())
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _batch_to_torch(b, device) -> dict:
    return {"image": torch.from_numpy(b.image).to(device),
            "labels": torch.from_numpy(b.labels).to(device),
            "class_mask": torch.from_numpy(b.class_mask).to(device),
            "has_seg": torch.from_numpy(b.has_seg).to(device),
            "heatmaps": torch.from_numpy(b.heatmaps).to(device),
            "kp_mask": torch.from_numpy(b.kp_mask).to(device),
            "distance": torch.from_numpy(b.distance).to(device),
            **({} if b.ce_weight is None else
               {"ce_weight": torch.from_numpy(b.ce_weight).to(device)})}


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def forward_loss(net, batch: dict, cfg: TrainConfig, precision: str):
    """Forward and loss; with bf16 under CPU autocast (FP32 master weights, FP32 gradients:
    autocast casts per op, the parameters stay FP32). The loss terms are computed on the
    outputs cast back to FP32, so the log-softmax, Dice sums and heatmap MSE keep FP32 range."""
    if precision != "bf16":
        return scar_loss(net(batch["image"]), batch, cfg.rec_weight, cfg.heatmap_pos_weight)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        outp = net(batch["image"])
    outp = type(outp)(*(t.float() for t in outp))
    return scar_loss(outp, batch, cfg.rec_weight, cfg.heatmap_pos_weight)


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=False)


@dataclass
class _Setup:
    """What a run knows before anything is written: device, ranks, data (every case read)."""

    device: torch.device
    di: DistInfo
    out: Path
    index_path: Path
    preprocess: PreprocessConfig
    prepared: list[PreparedCase]
    train_cases: list[Case]
    val_cases: list[Case]


def _setup(cfg: TrainConfig) -> _Setup:
    device = pick_device(cfg.device)
    if cfg.threads and cfg.threads != torch.get_num_threads():
        # Only when it changes anything: setting the count a machine already has made training
        # steps many times slower (docs/performance.md, "Moved from code comments").
        torch.set_num_threads(cfg.threads)
    di = setup_distributed(device)
    out = Path(cfg.out)
    check_folder_creatable(out)  # a file or a read-only place: refused before any work
    index_path = Path(cfg.data)
    cases = read_index(index_path)
    train_cases, val_cases = split_for_run(cases, cfg)
    if not train_cases:
        raise DataIndexError(f"{index_path}: the train split is empty")
    # Every training case is read before anything is written: an unusable index (an unreadable
    # image, a mask on another grid) leaves no config.json or log.jsonl behind.
    preprocess = replace(PREPROCESS, context_slices=cfg.context_slices)
    prepared = [prepare_case(c, preprocess) for c in train_cases]
    return _Setup(device, di, out, index_path, preprocess, prepared, train_cases, val_cases)


@dataclass
class _ResumePoint:
    step: int = 0
    best: float = -1.0
    doc: dict | None = None  # last.pt's contents when resuming


def _resume_point(cfg: TrainConfig, out: Path, di: DistInfo) -> _ResumePoint:
    """Where the run starts: last.pt's step and best score with ``--resume`` (after checking
    the settings match), else step 0 in a new run folder."""
    last = out / "last.pt"
    rp = _ResumePoint()
    if cfg.resume:
        if not last.is_file():
            raise ConfigError(f"--resume: no checkpoint {last} to resume from")
        rp.doc = load_checkpoint(last)
        cfg.check_resumable_from(rp.doc["train_config"])
        rp.step = rp.doc["step"]
        rp.best = rp.doc["extra"].get("best", -1.0)
    elif di.main:
        if last.exists():
            raise ConfigError(f"{out} already holds a run (last.pt); use --resume or a new --out")
        out.mkdir(parents=True, exist_ok=True)
    if di.world > 1:
        dist.barrier()
    return rp


class _Trainer:
    """The model, its optimiser and schedule, the batch stream, and what the run writes."""

    def __init__(self, cfg: TrainConfig, su: _Setup, rp: _ResumePoint):
        self.cfg, self.su, self.best, self.start_step = cfg, su, rp.best, rp.step
        device, di, preprocess = su.device, su.di, su.preprocess
        torch.manual_seed(cfg.seed)
        self.mcfg = ScarNetConfig.from_size(cfg.size, use_mcca=cfg.use_mcca, use_at=cfg.use_at,
                                            fine_refinement=cfg.fine_refinement,
                                            in_channels=preprocess.input_channels)
        self.model = model = build_model(self.mcfg).to(device)
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        total = cfg.total_steps
        # lr / 5 at 1/3 and 2/3 of the planned run (the paper's schedule)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, [total // 3, 2 * total // 3],
                                                          gamma=0.2)
        if rp.doc is None and cfg.init:
            init_from_checkpoint(model, cfg.init)
        if rp.doc is not None:
            model.load_state_dict(rp.doc["model"])
            self.opt.load_state_dict(rp.doc["optimizer"])
            self.sched.load_state_dict(rp.doc["scheduler"])
        self.net = model
        if di.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)

        self.precision = resolve_precision(cfg.precision, device)
        if self.precision == "bf16" and device.type != "cpu":
            raise ConfigError("--precision bf16 is CPU autocast; on a GPU use fp32")
        self.data_hash = index_hash(su.index_path)
        self.log = RunLog(su.out / "log.jsonl", di.main)
        if di.main:
            cfg.save(su.out / "config.json")
            self.log.write(event="resume" if rp.doc else "start", step=rp.step, world=di.world,
                           device=str(device), parameters=count_parameters(model),
                           train_cases=len(su.train_cases), val_cases=len(su.val_cases),
                           data_index_sha256=self.data_hash, precision=self.precision,
                           cpu=cpu_model_name(), threads=torch.get_num_threads())

        # each rank and each resume point gets its own stream of batches
        self.sampler = SliceSampler(
            su.prepared, crop=(cfg.crop, cfg.crop), batch_size=cfg.batch,
            weak_per_batch=cfg.weak_per_batch, disc_fraction=cfg.disc_fraction,
            both_fraction=cfg.both_fraction,
            augment=AugmentConfig(enabled=cfg.augment, rotation_deg=cfg.rotation_deg,
                                  structures=structure_augment(cfg)),
            spacing_mm=preprocess.spacing_mm, gap_weight=cfg.gap_weight,
            context_slices=preprocess.context_slices,
            seed=hash((cfg.seed, di.rank, rp.step)) % 2**32)
        self.end = total if cfg.max_steps is None else min(total, cfg.max_steps)

    def checkpoint(self, step: int, path: Path, metrics: dict | None = None) -> None:
        cfg, su = self.cfg, self.su
        save_checkpoint(path, model_state=self.model.state_dict(), model_config=self.mcfg.to_dict(),
                        train_config=cfg.to_dict(), preprocess=su.preprocess.to_dict(),
                        data_index_sha256=self.data_hash, step=step,
                        epoch=step // cfg.steps_per_epoch, optimizer_state=self.opt.state_dict(),
                        scheduler_state=self.sched.state_dict(), metrics=metrics,
                        extra={"best": self.best, "val_cases": [c.id for c in su.val_cases],
                               "data_index": str(su.index_path.resolve())})

    def run(self) -> int:
        """The step loop: train steps, logs, validation and checkpoints; returns the last step."""
        cfg, di, end = self.cfg, self.su.di, self.end
        interactive = di.main and sys.stderr.isatty()
        self.net.train()
        self.t0, step = time.time(), self.start_step
        terms_acc: dict[str, float] = {}
        with _progress(interactive) as progress:
            task = progress.add_task("train", total=end, completed=step, info="")
            while step < end:
                batch = _batch_to_torch(self.sampler.next_batch(), self.su.device)
                terms = forward_loss(self.net, batch, cfg, self.precision)
                self.opt.zero_grad(set_to_none=True)
                terms.total.backward()
                self.opt.step()
                self.sched.step()
                step += 1
                for k, v in terms.as_floats().items():
                    terms_acc[k] = terms_acc.get(k, 0.0) + v
                if step % cfg.log_every == 0 or step == end:
                    n = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
                    avg = {k: v / n for k, v in terms_acc.items()}
                    terms_acc = {}
                    rate = (time.time() - self.t0) / max(1, step - self.start_step)
                    info = " ".join(f"{k}={v:.3f}" for k, v in avg.items())
                    progress.update(task, completed=step, info=info)
                    self.log.write(event="train", step=step, lr=self.sched.get_last_lr()[0],
                                   s_per_step=rate, **avg)
                    if di.main and not interactive:
                        print(f"step {step}/{end} {info} lr={self.sched.get_last_lr()[0]:.2e} "
                              f"{rate:.2f}s/step", flush=True)
                epoch_end = step % cfg.steps_per_epoch == 0
                if (epoch_end and (step // cfg.steps_per_epoch) % cfg.val_every == 0
                        and self.su.val_cases or step == end and self.su.val_cases):
                    self._validate(step)
                if di.main and (step % cfg.ckpt_every == 0 or step == end):
                    self.checkpoint(step, self.su.out / "last.pt")
        return step

    def _validate(self, step: int) -> None:
        """Rank 0 validates, logs, and keeps best.pt; the other ranks wait for it."""
        di = self.su.di
        if di.main:
            v = validate(self.model, self.su.val_cases, self.su.preprocess, device=self.su.device)
            self.log.write(event="val", step=step, **v)
            score = v.get("selection_score") or 0.0
            if score > self.best:
                self.best = score
                self.checkpoint(step, self.su.out / "best.pt", metrics=v)
            print(f"val step {step}: score {score:.4f} (best {self.best:.4f}) "
                  f"VB {v.get('mean_vertebra_dice')} IVD {v.get('mean_disc_dice')} "
                  f"far-FP max {v.get('far_fp_max')} kp median "
                  f"{v.get('keypoint_error_median_mm')} mm", flush=True)
        if di.world > 1:
            dist.barrier()

    def finish(self, step: int) -> dict:
        """Ranks agree on the final weights; the summary is logged and returned."""
        di, model = self.su.di, self.model
        if di.world > 1:
            # DDP keeps parameters identical (averaged gradients, same updates); BatchNorm running
            # statistics are broadcast from rank 0 only at the start of each forward, so the last
            # forward leaves each rank with its own. Take rank 0's, which is what last.pt holds.
            for buf in model.buffers():
                dist.broadcast(buf, src=0)
        digest = state_digest(model)
        identical = True
        if di.world > 1:
            digests = [None] * di.world
            dist.all_gather_object(digests, digest)
            identical = len(set(digests)) == 1
        summary = {"event": "end", "step": step, "best_mean_dice": self.best,
                   "weights_sha256": digest, "ranks_identical": identical,
                   "wall_s": time.time() - self.t0}
        self.log.write(**summary)
        if di.world > 1:
            dist.barrier()
            dist.destroy_process_group()
        return summary


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns the final summary (also the last line of log.jsonl).

    Setup (device, ranks, every training case read), the resume point, the trainer (model,
    optimiser, schedule, batch stream: the same draws for the same seed and step), the step
    loop, and the finish (ranks agree on the weights)."""
    su = _setup(cfg)
    trainer = _Trainer(cfg, su, _resume_point(cfg, su.out, su.di))
    return trainer.finish(trainer.run())
