"""OpenVINO runner (CPU): FP32, or BF16 where the CPU has it natively and the gate passed.

The same ONNX file as ONNX Runtime (OpenVINO reads ONNX directly; the scar metadata arrive as
the model's ``framework`` rt_info). Compiled with the latency hint, one stream and
``INFERENCE_NUM_THREADS`` = the runtime's thread count; compiled blobs are cached in
``$XDG_CACHE_HOME/scar-net/openvino`` (``CACHE_DIR``), which makes the second start-up faster.

Precision (``INFERENCE_PRECISION_HINT``): ``fp32``; ``bf16`` only when OpenVINO reports ``BF16``
among the CPU's capabilities (otherwise it would silently compute in FP32 or emulate) and the
model's recorded parity gate passed (:mod:`scar_runtime.backends.precision`); ``auto`` picks
BF16 when both hold, else FP32. An INT8 (QDQ) model runs as given: its precision is the file's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scar_runtime.backends.base import Runner, check_io_names
from scar_runtime.backends.precision import check_precision, gate_passed, read_gate, require_gate
from scar_runtime.backends.threads import default_threads
from scar_runtime.core.errors import ConfigError, ModelError, import_extra
from scar_runtime.core.paths import user_cache_dir
from scar_runtime.model_meta import INPUT_NAME, OUTPUT_NAMES, ModelMetadata

OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def cache_dir() -> Path:
    return user_cache_dir() / "openvino"


def _openvino():
    return import_extra("openvino", "the OpenVINO backend needs openvino (pip install "
                                    "'scar-net[openvino]')")


def cpu_capabilities() -> list[str]:
    """What OpenVINO says this CPU computes natively (e.g. FP32, INT8, BF16); [] without it."""
    try:
        import openvino
    except ImportError:
        return []
    return list(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def bf16_gate_key() -> str:
    return "openvino-bf16"


class OpenVinoRunner(Runner):
    name = "openvino"

    def __init__(self, model: Path | str, *, precision: str = "fp32", threads: int | None = None,
                 require_gate_record: bool = True, use_cache: bool = True):
        """``require_gate_record=False`` lets the benchmark measure BF16 before any gate
        exists (it reports the Dice difference itself); users never get that."""
        super().__init__()
        self.model = Path(model)
        self.requested = check_precision(precision)
        self.precision = "fp32"
        self.threads = threads
        self.require_gate_record = require_gate_record
        self.use_cache = use_cache
        self.compiled = None
        self._request = None

    def _pick_precision(self, caps: list[str]) -> str:
        native = "BF16" in caps
        if self.requested == "fp32":
            return "fp32"
        if self.requested == "auto":
            return "bf16" if native and gate_passed(read_gate(self.model, bf16_gate_key())) \
                else "fp32"
        if not native:
            raise ConfigError(f"--precision bf16: this CPU has no native BF16 (OpenVINO reports "
                              f"{', '.join(caps) or 'nothing'}); use --precision fp32")
        if self.require_gate_record:
            require_gate(self.model, bf16_gate_key())
        return "bf16"

    def activate_impl(self) -> None:
        ov = _openvino()
        if not self.model.is_file():
            raise ModelError(f"{self.model}: no such model file")
        core = ov.Core()
        try:
            # the ONNX frontend only: Core.read_model would try every frontend on a bad file
            # (TensorFlow's prints its own error lines on stderr)
            from openvino.frontend import FrontEndManager

            fe = FrontEndManager().load_by_framework("onnx")
            model = fe.convert(fe.load(str(self.model)))
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with long texts
            raise ModelError(f"{self.model}: not a model OpenVINO can read "
                             f"({_last_line(e)})") from e
        self.metadata = ModelMetadata.from_props(_framework_props(model), where=str(self.model))
        check_io_names([i.get_any_name() for i in model.inputs],
                       [o.get_any_name() for o in model.outputs], str(self.model))
        channels = model.inputs[0].get_partial_shape()[1]
        self.metadata.check_input_channels(
            channels.get_length() if channels.is_static else None, str(self.model))
        self.precision = self._pick_precision(
            list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")))
        config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "INFERENCE_NUM_THREADS": int(self.threads or default_threads()),
                  "INFERENCE_PRECISION_HINT": OV_PRECISION[self.precision]}
        if self.use_cache:
            try:
                cache_dir().mkdir(parents=True, exist_ok=True)
                config["CACHE_DIR"] = str(cache_dir())
            except OSError:
                pass  # a read-only home: compile every time
        try:
            # from the path (not the read model) so that CACHE_DIR can skip the compilation
            self.compiled = core.compile_model(str(self.model), "CPU", config)
        except Exception as e:
            raise ModelError(f"{self.model}: OpenVINO could not compile it "
                             f"({_last_line(e)})") from e
        self._request = self.compiled.create_infer_request()
        self._outputs = [self.compiled.output(n) for n in OUTPUT_NAMES]

    @property
    def description(self) -> str:
        return f"openvino (cpu, {self.precision})"

    def infer_impl(self, image: np.ndarray) -> dict[str, np.ndarray]:
        res = self._request.infer({INPUT_NAME: image})  # copies the outputs (share_outputs=False)
        return {n: np.asarray(res[o]) for n, o in zip(OUTPUT_NAMES, self._outputs, strict=True)}

    def deactivate_impl(self) -> None:
        self._request = None
        self.compiled = None


def _last_line(e: Exception) -> str:
    """OpenVINO's messages start with source locations; the last line says what is wrong."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else type(e).__name__


def _framework_props(model) -> dict[str, str]:
    """ONNX ``metadata_props`` as OpenVINO keeps them (rt_info ``framework``)."""
    # RTMap is not a Mapping: ``in`` does not work on it, hence keys()
    try:
        info = model.get_rt_info()
        fw = info["framework"] if "framework" in list(info.keys()) else None
        return {} if fw is None else {k: fw[k].astype(str) for k in list(fw.keys())}
    except Exception:  # noqa: BLE001 - no rt_info: from_props says "not a scar-net model"
        return {}
