"""What the benchmark measures: one table of variants (backend, precision, device), each with its
report label and notes, in report order; variants as data, as timm's ``default_cfgs``."""

from __future__ import annotations

from dataclasses import dataclass

from scar_runtime.core.errors import ScarError

_GPU_COPIES = "GPU timings include host<->device copies"


@dataclass(frozen=True)
class Variant:
    backend: str
    precision: str
    device: str
    label: str  # the report's name for it
    notes: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return variant_key(self.backend, self.precision, self.device)

    @property
    def triple(self) -> tuple[str, str, str]:
        return self.backend, self.precision, self.device


# Report order; the GPU ones are skipped with a reason where there is no GPU.
VARIANTS = (
    Variant("auto", "auto", "cpu", "Default path (scar infer, auto)",
            ("the default path, `scar infer` with no options: backend and precision picked by "
             "`auto` (measured in the worker, fresh cache), default batch, spine-first (since "
             "issue 28; the other rows segment the full field); end to end and peak RSS only",)),
    Variant("pytorch", "fp32", "cpu", "PyTorch eager FP32 (CPU)",
            ("PyTorch eager (torch.inference_mode), the exported module",)),
    Variant("onnxruntime", "fp32", "cpu", "ONNX Runtime FP32 (CPU)"),
    Variant("onnxruntime", "fp32v01", "cpu", "ONNX Runtime FP32, v0.1 export form (CPU)",
            ("the v0.1 export form of the same checkpoint (traced 49-tap Slice/Mul/Add dynamic "
             "conv): latency only, the baseline of the export-form speed-up",)),
    Variant("onnxruntime", "int8", "cpu", "ONNX Runtime INT8 static QDQ (CPU)",
            ("INT8: static QDQ (onnxruntime.quantization.quantize_static) calibrated on TRAIN "
             "slices",)),
    Variant("onnxruntime", "fp16", "cpu", "ONNX Runtime FP16 (CPU, cast-emulated)",
            ("FP16 on CPU is cast-emulated: ONNX Runtime inserts casts and computes in FP32, so "
             "this row checks FP16 numerics, not FP16 speed",)),
    Variant("openvino", "fp32", "cpu", "OpenVINO FP32 (CPU)",
            ("OpenVINO on the same FP32 ONNX file",)),
    Variant("openvino", "fp32roi", "cpu", "OpenVINO FP32, spine-first (CPU)",
            ("the spine-first path (scar_runtime/pipeline/roi.py): probe slices find the "
             "column's box and the network runs there only; per volume and Dice (its per-slice "
             "latency is OpenVINO FP32's); on a field under ~230 mm it is the full field",)),
    Variant("openvino", "bf16", "cpu", "OpenVINO BF16 (CPU)",
            ("OpenVINO BF16 inference precision, measured here without a gate record (users "
             "need a passed one)",)),
    Variant("openvino", "int8", "cpu", "OpenVINO INT8 static QDQ (CPU)",
            ("the same QDQ INT8 model as ONNX Runtime INT8, run by OpenVINO",)),
    Variant("pytorch", "fp32", "cuda", "PyTorch eager FP32 (CUDA)", (_GPU_COPIES,)),
    Variant("pytorch", "fp16", "cuda", "PyTorch eager FP16 (CUDA)", (_GPU_COPIES,)),
    Variant("onnxruntime", "fp32", "cuda", "ONNX Runtime FP32 (CUDA)", (_GPU_COPIES,)),
    Variant("onnxruntime", "fp16", "cuda", "ONNX Runtime FP16 (CUDA)", (_GPU_COPIES,)),
    Variant("tensorrt", "fp32", "cuda", "TensorRT FP32", (_GPU_COPIES,)),
    Variant("tensorrt", "fp16", "cuda", "TensorRT FP16",
            (f"{_GPU_COPIES}; FP16 is in the ONNX graph (TensorRT 11 is strongly typed)",)),
)
_LABELS = {v.triple: v.label for v in VARIANTS}

SHORT = {"pytorch": "PyTorch", "onnxruntime": "ORT", "tensorrt": "TensorRT", "openvino": "OV",
         "auto": "default"}


def variant_key(backend: str, precision: str, device: str) -> str:
    return f"{backend}-{precision}-{device}"


def label(backend: str, precision: str, device: str) -> str:
    return _LABELS.get((backend, precision, device),
                       f"{backend} {precision.upper()} ({device.upper()})")


def short_label(backend: str, precision: str, device: str) -> str:
    """Two-line label for plot axes."""
    extra = ", cast-emul." if (backend, precision, device) == ("onnxruntime", "fp16", "cpu") \
        else ""
    return f"{SHORT.get(backend, backend)} {precision.upper()}\n{device.upper()}{extra}"


def select_variants(spec: str | None) -> list[Variant]:
    """The variants ``--backends`` names (``backend-precision[-device]``, comma-separated), in
    report order; all of them without a spec."""
    if not spec:
        return list(VARIANTS)
    wanted = [w.strip().lower() for w in spec.split(",") if w.strip()]
    known = [v.key for v in VARIANTS]
    chosen = [v for v, k in zip(VARIANTS, known, strict=True)
              if any(k == w or k.startswith(w + "-") for w in wanted)]
    bad = [w for w in wanted if not any(k == w or k.startswith(w + "-") for k in known)]
    if bad:
        raise ScarError(f"--backends: unknown {', '.join(bad)} (valid: {', '.join(known)})")
    return chosen
