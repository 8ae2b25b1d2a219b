"""Everything a benchmark run needs before the workers start: the models (exports, INT8, the
v0.1 form, engines), the data and the latency input, the GEMM peak and the counted FLOPs, and one
worker spec per variant that can run here (a reason for each that cannot)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import settings as S
from benchmarks.variants import Variant
from scar_runtime.core.errors import ScarError

Triple = tuple[str, str, str]  # (backend, precision, device)


def log(msg: str) -> None:
    print(f"bench: {msg}", flush=True)


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _openvino_reason() -> str | None:
    """Why the OpenVINO rows cannot run here, or None."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed (pip install 'scar-net[openvino]')"
    return None


def _cuda_torch() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def prepare(args, st: S.Settings, chosen: list[Variant], threads: int, workdir: Path) -> dict:
    """Models, data, latency input, INT8, GEMM peak, FLOPs, and one spec per runnable variant."""
    from benchmarks import models
    from benchmarks.data import latency_input, plan_data
    from benchmarks.machine import machine_info

    ms = models.resolve(args.checkpoint, args.onnx, args.onnx_fp16,
                        default_ckpt=S.DEFAULT_CHECKPOINT, default_onnx=S.DEFAULT_ONNX,
                        default_fp16=S.DEFAULT_ONNX_FP16)
    machine = machine_info(threads)
    want = {v.triple for v in chosen}
    models.ensure_exports(ms, args.cache_dir, want_fp16=any(p == "fp16" for _, p, _ in want),
                          log=log)
    cfg = ms.meta.preprocess
    data = plan_data(args.data, max_cases=st.max_cases)
    _note_foreign_index(ms, data)
    lat = latency_input(data.volume_image, cfg, size=st.size, n=st.latency_slices)
    lat_path = workdir / "latency_input.npy"
    np.save(lat_path, lat)

    skipped: dict[Triple, str] = {}
    _prepare_v01_form(args, st, ms, want, skipped)
    _openvino_skips(want, skipped)
    _prepare_int8(args, st, ms, data, want, skipped)
    roofline = _roofline(st, ms, data, threads)
    gpu = _GpuSupport.probe(want)

    specs, variants = [], []
    for v in chosen:
        reason, model = _skip_reason_and_model(v, skipped.get(v.triple), gpu, ms, args)
        if reason is not None:
            variants.append({"key": v.key, "skip": reason, "backend": v.backend,
                             "precision": v.precision, "device": v.device})
            continue
        spec = _worker_spec(v, args, st, ms, data, model, threads, workdir, lat_path)
        specs.append(spec)
        variants.append({"key": v.key, "backend": v.backend, "precision": v.precision,
                         "device": v.device, "batches": spec["batches"], "notes": list(v.notes),
                         "phases": spec["phases"],
                         "model_name": Path(model).name if model else
                         (ms.checkpoint.name if ms.checkpoint else None)})
    return {"models": ms, "machine": machine, "data": data, **roofline, "specs": specs,
            "variants": variants}


def _note_foreign_index(ms, data) -> None:
    """A note when the data index is not the one the model was trained with."""
    if ms.meta.data_index_sha256 and data.index is not None:
        from scar_runtime.evaluation.dataset import index_hash

        if index_hash(data.index) != ms.meta.data_index_sha256:
            data.notes.append(f"{data.index} is not the index the model was trained with "
                              "(hash differs): its val split may overlap the training data")


def _prepare_v01_form(args, st: S.Settings, ms, want: set[Triple],
                      skipped: dict[Triple, str]) -> None:
    key = ("onnxruntime", "fp32v01", "cpu")
    if key not in want:
        return
    if not st.v01_form:
        skipped[key] = "quick mode: the v0.1-form comparison (an extra export) is in the full run"
    elif ms.checkpoint is None or not _torch_available():
        skipped[key] = ("the v0.1 form is exported from the checkpoint: pass --checkpoint "
                        "(needs torch)")
    else:
        from benchmarks import models

        models.ensure_v01_form(ms, args.cache_dir, log=log)


def _openvino_skips(want: set[Triple], skipped: dict[Triple, str]) -> None:
    ov_reason = _openvino_reason()
    for p in ("fp32", "fp32roi", "bf16", "int8"):
        if ov_reason and ("openvino", p, "cpu") in want:
            skipped[("openvino", p, "cpu")] = ov_reason
    if not ov_reason and ("openvino", "bf16", "cpu") in want:
        from scar_runtime.backends.openvino import cpu_capabilities

        caps = cpu_capabilities()
        if "BF16" not in caps:
            skipped[("openvino", "bf16", "cpu")] = (
                f"this CPU has no native BF16 (OpenVINO reports {', '.join(caps)}): BF16 would "
                "run as FP32 or emulated")


def _prepare_int8(args, st: S.Settings, ms, data, want: set[Triple],
                  skipped: dict[Triple, str]) -> None:
    """The INT8 QDQ model, calibrated on TRAIN slices (else the shipped sample), cached."""
    if ("onnxruntime", "int8", "cpu") not in want and ("openvino", "int8", "cpu") not in want:
        return
    from benchmarks import models
    from benchmarks.data import calibration_slices, latency_input, sample_image
    from scar_runtime.evaluation.dataset import index_hash

    cfg = ms.meta.preprocess
    if data.train_cases:
        source = f"TRAIN cases of {data.index}"
        ckey = {"index_sha256": index_hash(data.index),
                "train_cases": [c.id for c in data.train_cases]}

        def make_calib():
            return calibration_slices(data.train_cases, cfg, size=st.size, n=st.calib_slices)
    else:
        source = "the shipped sample volume (no train cases available; it is a val case)"
        ckey = {"sample": sample_image().name}

        def make_calib():
            return (latency_input(sample_image(), cfg, size=st.size, n=st.calib_slices),
                    [f"sample/{sample_image().name}"])
    ckey.update(n=st.calib_slices, size=st.size, preprocess=cfg.to_dict())
    try:
        models.ensure_int8(ms, args.cache_dir, make_calib=make_calib, calib_key=ckey,
                           calib_source=source, op_types=st.int8_op_types,
                           keep_io_fp32=st.int8_keep_io_fp32, log=log)
    except Exception as e:  # quantisation is fragile across ORT versions: report, go on
        for b in ("onnxruntime", "openvino"):
            skipped.setdefault((b, "int8", "cpu"), f"quantisation failed: {e}")


def _roofline(st: S.Settings, ms, data, threads: int) -> dict:
    """The GEMM peak (a fresh process), the counted GFLOP and the reference volume's grid."""
    from benchmarks.machine import count_gflop, gemm_peak_subprocess
    from scar_runtime.io import load_volume
    from scar_runtime.pipeline.preprocess import plan_grid

    log(f"measuring the FP32 matrix-multiply peak ({threads} thread"
        f"{'' if threads == 1 else 's'}) ...")
    peak = gemm_peak_subprocess(threads)
    gflop, gnote = None, "FlopCounterMode: conv, matmul, attention; 2 FLOP per MAC; " \
                         "element-wise ops not counted"
    ref = load_volume(data.volume_image)
    grid = plan_grid(ref.shape[:2], ref.inplane_spacing, ms.meta.preprocess)
    if _torch_available():
        gflop = count_gflop(ms.meta.model_config,
                            [(st.size, st.size), tuple(grid.out_shape)])
    else:
        gnote = "not counted: torch is not installed"
    return {"peak": peak, "gflop": gflop, "gflop_note": gnote, "grid": list(grid.out_shape)}


@dataclass
class _GpuSupport:
    torch_cuda: bool
    ort_cuda: bool
    trt_reason: str | None  # why TensorRT cannot run here, or None

    @classmethod
    def probe(cls, want: set[Triple]) -> _GpuSupport:
        cuda_torch = _cuda_torch()
        import onnxruntime as ort

        ort_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        trt_reason = None
        if any(b == "tensorrt" for b, _, _ in want):
            try:
                from scar_export.engine import check_available

                check_available()
            except ImportError as e:
                trt_reason = f"scar_export is not installed ({e})"
            except ScarError as e:
                trt_reason = str(e)
        return cls(cuda_torch, ort_cuda, trt_reason)


def _skip_reason_and_model(v: Variant, reason: str | None, gpu: _GpuSupport, ms,
                           args) -> tuple[str | None, Path | None]:
    """(why ``v`` cannot run here or None, the model file its worker loads)."""
    from benchmarks import models

    b, p, d = v.triple
    model = None
    if reason is None and d == "cuda":
        if b == "pytorch" and not gpu.torch_cuda:
            reason = "no CUDA GPU visible to torch (torch.cuda.is_available() is False)"
        elif b == "onnxruntime" and not gpu.ort_cuda:
            reason = ("this onnxruntime has no CUDAExecutionProvider (no GPU, or "
                      "onnxruntime-gpu not installed)")
        elif b == "tensorrt" and gpu.trt_reason:
            reason = gpu.trt_reason
    if reason is None and b == "pytorch":
        if ms.checkpoint is None:
            reason = "needs the checkpoint: pass --checkpoint CKPT.pt"
        elif not _torch_available():
            reason = "torch is not installed"
        elif p == "fp16" and d == "cpu":
            reason = "PyTorch FP16 on CPU is not benchmarked"
    if reason is None and p == "fp32roi" and args.quick:
        reason = ("quick mode: the quick reference volume's 224 x 224 mm field is segmented "
                  "whole by the spine-first path (a window could not save enough), so this row "
                  "would repeat OpenVINO FP32's; it is in the full run")
    if reason is None and b in ("onnxruntime", "tensorrt", "openvino", "auto"):
        model = {"fp32": ms.onnx, "fp16": ms.onnx_fp16, "int8": ms.onnx_int8,
                 "bf16": ms.onnx, "auto": ms.onnx, "fp32v01": ms.onnx_v01,
                 "fp32roi": ms.onnx}[p]
        if model is None:
            reason = ("no FP16 model: pass --onnx-fp16 MODEL.onnx (`scar export --fp16`) or "
                      "--checkpoint to export one" if p == "fp16" else f"no {p} model")
    if reason is None and b == "tensorrt":
        try:
            model = models.ensure_engine(model, args.cache_dir,
                                         preprocess=ms.meta.preprocess.to_dict(), log=log)
        except Exception as e:  # UNVERIFIED path: report the failure as the reason
            reason = f"TensorRT engine build failed: {e}"
    return reason, model


def _worker_spec(v: Variant, args, st: S.Settings, ms, data, model, threads: int,
                 workdir: Path, lat_path: Path) -> dict:
    """What :mod:`benchmarks.worker` runs for ``v`` (its JSON spec)."""
    batches, phases, env = list(st.batches), ["latency", "volume", "accuracy"], {}
    if v.backend == "auto":  # the default path: scar infer's batch, end to end, a fresh choice
        from scar_runtime.pipeline.segmenter import DEFAULT_BATCH

        batches, phases = [DEFAULT_BATCH], ["volume", "big_volume"]
        env = {"XDG_CACHE_HOME": str(workdir / "xdg-cache")}
    elif v.precision == "fp32v01":
        phases = ["latency"]
    elif v.precision == "fp32roi":  # the same network: per volume and Dice only
        phases = ["volume", "accuracy"]
    return {
        "variant": v.key, "backend": v.backend, "precision": v.precision, "device": v.device,
        "phases": phases, "env": env,
        "big_volume": list(st.big_volume) if st.big_volume else None,
        "runner": "torch" if v.backend == "pytorch" else "runtime",
        "checkpoint": str(ms.checkpoint) if ms.checkpoint else None,
        "model": str(model) if model else None, "threads": threads,
        "batches": batches, "warmup": st.warmup, "reps_batch1": st.reps_batch1,
        "reps_batchn": st.reps_batchn, "min_reps": st.min_reps,
        "volume_reps": st.volume_reps, "budget_s": st.worker_budget_s,
        "postprocess": not args.no_postprocess, "latency_input": str(lat_path),
        # spine-first (pipeline/roi.py) for scar infer's default path and its own row; the
        # other rows keep the full field, comparable with earlier runs
        "roi": v.backend == "auto" or v.precision == "fp32roi",
        "volume": {"case": data.volume_id, "image": str(data.volume_image)},
        "accuracy": {"index": str(data.index) if data.index else None,
                     "cases": [c.id for c in data.val_cases]},
        "out": str(workdir / f"{v.key}.json"),
    }
