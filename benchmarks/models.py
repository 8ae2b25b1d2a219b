"""The model under test in every form the benchmark runs, prepared once and cached.

* the checkpoint (``--checkpoint``; PyTorch rows, FP16 export, FLOP count);
* the FP32 ONNX (``--onnx``; or exported from the checkpoint into the cache);
* the FP16 ONNX (``--onnx-fp16``, or ``scarnet_small_fp16.onnx`` beside the default model, or
  exported from the checkpoint with ``scar export``'s own FP16 module and FP32 islands);
* the INT8 ONNX: ``onnxruntime.quantization.quantize_static``, QDQ, calibrated on TRAIN slices
  (no ``quant_pre_process``: it fails on the dynamic-shape model, see FIELD_NOTES);
* TensorRT engines (only with TensorRT and a GPU).

Cache files are named by the SHA-256 of their source model and the settings that shape them, so
a changed model or setting makes a new file and a stale one is never reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scar_runtime.backends import read_model_metadata
from scar_runtime.core.atomic import atomic_write
from scar_runtime.core.errors import ConfigError, ModelError
from scar_runtime.core.hashing import file_sha256


def _norm(d) -> object:
    return json.loads(json.dumps(d, sort_keys=True))


@dataclass
class ModelSet:
    checkpoint: Path | None
    onnx: Path | None  # FP32
    onnx_fp16: Path | None = None
    onnx_int8: Path | None = None
    onnx_v01: Path | None = None  # the v0.1 export form (49-tap dynamic conv), for comparison
    meta: object = None  # ModelMetadata of the FP32 model
    ckpt_info: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    prep_s: dict = field(default_factory=dict)  # seconds spent exporting / quantising
    int8_info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        def p(x):
            return str(x) if x else None

        return {"checkpoint": p(self.checkpoint), "onnx": p(self.onnx),
                "onnx_fp16": p(self.onnx_fp16), "onnx_int8": p(self.onnx_int8),
                "onnx_v01_form": p(self.onnx_v01),
                "checkpoint_info": self.ckpt_info, "preparation_s": self.prep_s,
                "int8": self.int8_info, "notes": self.notes,
                "model_config": self.meta.model_config if self.meta else None,
                "preprocess": self.meta.preprocess.to_dict() if self.meta else None,
                "training": self.meta.training if self.meta else None}


def missing_model_message(default_ckpt: Path, default_onnx: Path) -> str:
    return ("no model to benchmark: pass --checkpoint CKPT.pt (from `scar train`) and/or --onnx "
            "MODEL.onnx (from `scar export`); the defaults "
            f"{default_ckpt.relative_to(default_ckpt.parents[2])} and "
            f"{default_onnx.name} are not there")


def resolve(checkpoint: Path | None, onnx: Path | None, onnx_fp16: Path | None, *,
            default_ckpt: Path, default_onnx: Path, default_fp16: Path) -> ModelSet:
    """Explicit paths must exist; defaults are used when present. One-line errors."""
    for flag, p in (("--checkpoint", checkpoint), ("--onnx", onnx), ("--onnx-fp16", onnx_fp16)):
        if p is not None and not Path(p).is_file():
            raise ConfigError(f"{flag} {p}: no such file")
    if checkpoint is None and onnx is None:
        checkpoint = default_ckpt if default_ckpt.is_file() else None
        onnx = default_onnx if default_onnx.is_file() else None
        if onnx_fp16 is None and default_fp16.is_file():
            onnx_fp16 = default_fp16
        if checkpoint is None and onnx is None:
            raise ConfigError(missing_model_message(default_ckpt, default_onnx))
    return ModelSet(checkpoint=Path(checkpoint) if checkpoint else None,
                    onnx=Path(onnx) if onnx else None,
                    onnx_fp16=Path(onnx_fp16) if onnx_fp16 else None)


def checkpoint_info(path: Path) -> dict:
    from scar_train.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    return {"step": int(ck.get("step", 0)), "epoch": int(ck.get("epoch", 0)),
            "model_config": ck["model_config"], "preprocess": ck["preprocess"],
            "data_index_sha256": str(ck.get("data_index_sha256") or ""),
            "metrics": {k: v for k, v in (ck.get("metrics") or {}).items()
                        if isinstance(v, int | float)}}


def check_same_model(meta, info: dict, where: str) -> None:
    """Refuse an ONNX model that was not exported from the checkpoint: the report compares
    backends on ONE model, so a mismatch would make every difference meaningless."""
    diffs = []
    if _norm(meta.model_config) != _norm(info["model_config"]):
        diffs.append("model_config")
    if meta.data_index_sha256 and info["data_index_sha256"] and \
            meta.data_index_sha256 != info["data_index_sha256"]:
        diffs.append("training data index")
    step = (meta.training or {}).get("step")
    if step is not None and int(step) != info["step"]:
        diffs.append(f"training step ({step} vs {info['step']})")
    if _norm(meta.preprocess.to_dict()) != _norm(info["preprocess"]):
        diffs.append("preprocessing")
    if diffs:
        raise ConfigError(f"{where} was not exported from the checkpoint (different "
                          f"{', '.join(diffs)}): pass the matching --checkpoint/--onnx pair")


# ------------------------------------------------------------------------------------- exports


def export_from_checkpoint(ckpt: Path, out: Path, *, fp16: bool, fast_forms: bool = True
                           ) -> float:
    """``scar export``'s own export path (module, dynamo export, metadata, single file), without
    its parity check (the benchmark measures accuracy itself); returns seconds.
    ``fast_forms=False``: the v0.1 graph (the traced 49-tap dynamic conv)."""
    from scar_export.api import training_summary
    from scar_export.model import export_module, load_model
    from scar_export.onnx_export import export_onnx, save_onnx, set_metadata
    from scar_runtime.model_meta import ModelMetadata
    from scar_runtime.pipeline.preprocess import PreprocessConfig

    t0 = time.time()
    model, ck = load_model(ckpt)
    proto = export_onnx(export_module(model, fp16=fp16), fast_forms=fast_forms)
    meta = ModelMetadata(preprocess=PreprocessConfig.from_dict(ck["preprocess"]),
                         model_config=model.config.to_dict(),
                         precision="fp16" if fp16 else "fp32",
                         data_index_sha256=str(ck.get("data_index_sha256") or ""),
                         training=training_summary(ck))
    set_metadata(proto, meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: save_onnx(proto, tmp), force=True)
    return time.time() - t0


def _cached_export(ms: ModelSet, out: Path, *, fp16: bool, log, fast_forms: bool = True
                   ) -> Path:
    """Export the checkpoint to ``out`` unless a cached copy is there (the name holds its hash)."""
    precision = ("fp16" if fp16 else "fp32") + ("" if fast_forms else "_v01")
    if not out.is_file():
        log(f"exporting {ms.checkpoint} to ONNX {precision.upper()} (cached as {out.name}) ...")
        ms.prep_s[f"export_{precision}_s"] = round(
            export_from_checkpoint(ms.checkpoint, out, fp16=fp16, fast_forms=fast_forms), 1)
    return out


def ensure_v01_form(ms: ModelSet, cache: Path, *, log) -> None:
    """The checkpoint exported the v0.1 way (49-tap Slice/Mul/Add dynamic conv), cached: the
    baseline of the export-form speed-up, measured in the same run."""
    ck_hash = file_sha256(ms.checkpoint)[:16]
    ms.onnx_v01 = _cached_export(ms, cache / f"fp32-v01-{ck_hash}.onnx", fp16=False, log=log,
                                 fast_forms=False)


def ensure_exports(ms: ModelSet, cache: Path, *, want_fp16: bool, log) -> None:
    """Fill in the FP32 (and FP16) ONNX from the checkpoint where not given; check the pair."""
    if ms.checkpoint is not None:
        ms.ckpt_info = checkpoint_info(ms.checkpoint)
        ck_hash = file_sha256(ms.checkpoint)[:16]
    if ms.onnx is None:
        out = _cached_export(ms, cache / f"fp32-{ck_hash}.onnx", fp16=False, log=log)
        ms.onnx = out
        ms.notes.append(f"FP32 ONNX exported from the checkpoint ({out})")
    ms.meta = read_model_metadata(ms.onnx)
    if ms.checkpoint is not None:
        check_same_model(ms.meta, ms.ckpt_info, str(ms.onnx))
    if ms.onnx_fp16 is not None:
        m16 = read_model_metadata(ms.onnx_fp16)
        if m16.precision != "fp16":
            raise ConfigError(f"--onnx-fp16 {ms.onnx_fp16} is a {m16.precision} model")
        if ms.checkpoint is not None:
            check_same_model(m16, ms.ckpt_info, str(ms.onnx_fp16))
    elif want_fp16 and ms.checkpoint is not None:
        ms.onnx_fp16 = _cached_export(ms, cache / f"fp16-{ck_hash}.onnx", fp16=True, log=log)


# ---------------------------------------------------------------------------------------- INT8


def _slice_reader(slices: np.ndarray):
    """An onnxruntime.quantization CalibrationDataReader over (N, 1, H, W), one slice a call."""
    from onnxruntime.quantization import CalibrationDataReader

    class SliceReader(CalibrationDataReader):
        def __init__(self):
            self.rewind()

        def get_next(self):
            i = next(self._it, None)
            return None if i is None else {"image": np.ascontiguousarray(slices[i:i + 1])}

        def rewind(self):  # some ORT versions call it between calibration passes
            self._it = iter(range(slices.shape[0]))

    return SliceReader()


@contextlib.contextmanager
def _quiet_quantizer():
    """The quantiser logs 'consider pre-processing' warnings on the root logger: we know."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def io_convs(path: Path, out_channels: tuple[int, ...]) -> list[str]:
    """Names of the Conv nodes that read the graph input or produce ``out_channels`` channels
    (the class logits and key-point heatmap heads): kept in FP32, the usual first/last-layer
    rule (they are a few % of the FLOPs and set the output numerics)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    inputs = {i.name for i in g.input}
    weights = {t.name: list(t.dims) for t in g.initializer}
    return [n.name for n in g.node if n.op_type == "Conv" and (
        n.input[0] in inputs or (weights.get(n.input[1]) or [None])[0] in out_channels)]


def quantize_int8(fp32: Path, out: Path, slices: np.ndarray, *, op_types: tuple[str, ...],
                  exclude: list[str] | None = None) -> float:
    """Static QDQ quantisation: per-channel INT8 weights, UINT8 activations (the U8S8 form ONNX
    Runtime recommends on x86/VNNI), MinMax ranges from ``slices``, nodes in ``exclude`` left in
    FP32; returns seconds."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    reader = _slice_reader(slices)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def write(tmp: Path) -> None:
        with _quiet_quantizer():
            quantize_static(str(fp32), str(tmp), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(op_types), per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=list(exclude or []))
        _keep_metadata(fp32, tmp)

    atomic_write(out, write, force=True)
    return time.time() - t0


def _keep_metadata(src: Path, dst: Path) -> None:
    """The runtime needs the scar metadata: copy it over if the quantiser dropped any."""
    import onnx

    a = onnx.load(str(src), load_external_data=False)
    b = onnx.load(str(dst))
    have = {p.key for p in b.metadata_props}
    missing = {p.key: p.value for p in a.metadata_props if p.key not in have}
    if missing:
        onnx.helper.set_model_props(b, {**{p.key: p.value for p in b.metadata_props}, **missing})
        onnx.save_model(b, str(dst), save_as_external_data=False)


def ensure_int8(ms: ModelSet, cache: Path, *, make_calib, calib_key: dict, calib_source: str,
                op_types: tuple[str, ...], keep_io_fp32: bool, log) -> None:
    """The INT8 model in the cache, quantised on first use. ``make_calib()`` returns (slices,
    case ids) and is only called when quantising; ``calib_key`` identifies what it would return
    (index hash, candidate cases, count, size), so a cached model is found without loading data."""
    cfg = ms.meta.model_config
    exclude = io_convs(ms.onnx, (int(cfg.get("num_classes", 11)),
                                 int(cfg.get("num_keypoints", 10)))) if keep_io_fp32 else []
    key = hashlib.sha256(json.dumps({"onnx": file_sha256(ms.onnx), "ops": list(op_types),
                                     "exclude": exclude, "calibration": calib_key},
                                    sort_keys=True).encode()).hexdigest()[:16]
    out = cache / f"int8-{key}.onnx"
    side = out.with_suffix(".json")
    if out.is_file() and side.is_file():
        info = {**json.loads(side.read_text()), "cached": True}
    else:
        t0 = time.time()
        calib, used = make_calib()
        if calib.shape[0] == 0:
            raise ModelError("no calibration slices for INT8")
        calib_s = time.time() - t0
        log(f"quantising to INT8 with {calib.shape[0]} calibration slices (cached as "
            f"{out.name}) ...")
        q_s = quantize_int8(ms.onnx, out, calib, op_types=op_types, exclude=exclude)
        info = {"method": "onnxruntime.quantization.quantize_static, QDQ, MinMax, per-channel "
                          "INT8 weights, UINT8 activations",
                "op_types": list(op_types), "fp32_nodes": exclude,
                "fp32_nodes_rule": "first conv and the output heads kept in FP32" if exclude
                else None, "calibration_slices": int(calib.shape[0]),
                "calibration_size": list(calib.shape[2:]), "calibration_source": calib_source,
                "calibration_cases": used, "calibration_data_s": round(calib_s, 1),
                "quantize_s": round(q_s, 1), "source_onnx": str(ms.onnx), "cache": str(out)}
        side.write_text(json.dumps(info, indent=1))
        info["cached"] = False
        ms.prep_s["quantize_int8_s"] = round(calib_s + q_s, 1)
    ms.onnx_int8 = out
    ms.int8_info = info


# ------------------------------------------------------------------------------------ TensorRT


def ensure_engine(onnx_path: Path, cache: Path, *, preprocess: dict, log) -> Path:
    """Build (or reuse) a TensorRT engine for ``onnx_path``; needs TensorRT and a GPU.

    UNVERIFIED: written to scar_export.engine's TensorRT 11 code path, never run (no TensorRT
    on the machines this was written on)."""
    from scar_export.engine import build_engine, check_available, engine_json

    gpu = check_available()
    key = f"{file_sha256(onnx_path)[:16]}-{gpu['compute_capability']}"
    plan_path = cache / f"trt-{key}.engine"
    json_path = plan_path.with_name(plan_path.name + ".json")
    if not (plan_path.is_file() and json_path.is_file()):
        log(f"building a TensorRT engine from {onnx_path.name} ...")
        plan, meta = build_engine(onnx_path, custom_ops=False, preprocess=preprocess, gpu=gpu)
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        plan_path.write_bytes(plan)
        json_path.write_text(engine_json(meta))  # the sidecar the runtime's runner checks
    return plan_path

