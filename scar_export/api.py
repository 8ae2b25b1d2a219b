"""``scar export`` as a Python function: checkpoint -> ONNX (+ parity JSON, + TensorRT engine).

Order of work, so that a mistake costs seconds, not a 40 s export:

1. check the options and every output path (exists without ``force``, folder missing or not
   writable, the checkpoint itself) and, with ``engine``, that TensorRT and a GPU are there;
2. load the checkpoint (missing, corrupt, another architecture: one-line ``ModelError``);
3. export (dynamo), add the scar functions (``custom_ops``), write the metadata;
4. write the model to a nameless temp file beside ``out``, run the parity check on it, write
   ``MODEL.parity.json``; only a model that passes is moved into place (a failing one leaves the
   JSON saying why, and a one-line error);
5. with ``engine``: build the plan from the written model, write it and its JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from scar_runtime.backends.precision import parity_record_path
from scar_runtime.core.atomic import (
    atomic_write_bytes,
    atomic_write_text,
    atomic_write_unnamed,
    check_output_folder,
    check_output_path,
)
from scar_runtime.core.errors import ConfigError, ModelError
from scar_runtime.model_meta import ModelMetadata
from scar_runtime.pipeline.preprocess import PreprocessConfig

TRAINING_SUMMARY_KEYS = ("mean_dice", "mean_vertebra_dice", "mean_disc_dice",
                         "identification_rate", "n_cases")


def _check_outputs(paths: list[Path], *, force: bool, ckpt: Path) -> None:
    for p in paths:
        check_output_path(p, force=force, inputs=[ckpt])
        check_output_folder(p)


def training_summary(ckpt: dict) -> dict:
    """step, epoch and the scalar validation summary recorded in the checkpoint."""
    metrics = ckpt.get("metrics") or {}
    extra = ckpt.get("extra") or {}
    return {"step": int(ckpt.get("step", 0)), "epoch": int(ckpt.get("epoch", 0)),
            "val": {k: metrics[k] for k in TRAINING_SUMMARY_KEYS if k in metrics},
            "val_cases": list(extra.get("val_cases") or [])}


def export_checkpoint(ckpt_path: Path | str, out: Path | str, *, custom_ops: bool = False,
                      fp16: bool = False, engine: bool = False, opset: int | None = None,
                      force: bool = False, log: Callable[[str], None] = print) -> dict:
    """Export ``ckpt_path`` to ``out`` (.onnx); returns a summary (paths, parity, timings)."""
    from scar_export import parity as P
    from scar_export.engine import check_available, engine_paths
    from scar_export.onnx_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

    ckpt_path, out = Path(ckpt_path), Path(out)
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"--opset {opset} is not supported (valid: {MIN_OPSET}..{MAX_OPSET})")
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"-o {out}: the model file must end in .onnx")
    parity_json = parity_record_path(out)
    outputs = [out, parity_json]
    if engine:
        outputs += list(engine_paths(out))
    _check_outputs(outputs, force=force, ckpt=ckpt_path)
    gpu = check_available() if engine else None

    from scar_export.model import export_module, load_model, reference_module
    from scar_export.onnx_export import export_onnx, save_onnx, set_metadata

    model, ckpt = load_model(ckpt_path)
    precision = "fp16" if fp16 else "fp32"
    log(f"exporting {ckpt_path} ({model.config.size}, step {ckpt.get('step')}) to ONNX opset "
        f"{opset}, {precision}{', custom ops' if custom_ops else ''} ...")
    t0 = time.time()
    proto = export_onnx(export_module(model, fp16=fp16, custom_ops=custom_ops), opset=opset,
                        custom_ops=custom_ops)
    export_s = time.time() - t0
    if custom_ops and not any(n.domain == "scar" for n in proto.graph.node):
        log("note: this model has neither MCCA nor AT: there are no custom ops to emit")
        custom_ops = False
    meta = ModelMetadata(preprocess=PreprocessConfig.from_dict(ckpt["preprocess"]),
                         model_config=model.config.to_dict(), precision=precision,
                         custom_ops=custom_ops,
                         data_index_sha256=str(ckpt.get("data_index_sha256") or ""),
                         training=training_summary(ckpt))
    set_metadata(proto, meta)
    reference = reference_module(model)
    summary: dict = {"model": str(out), "parity_json": str(parity_json),
                     "export_seconds": round(export_s, 1)}

    def write(tmp: Path) -> None:
        save_onnx(proto, tmp)
        log(f"exported in {export_s:.0f} s; checking parity with PyTorch on real slices ...")
        result = P.run_parity(tmp, reference, ckpt, precision=precision)
        result.update(model=out.name, custom_ops=custom_ops, opset=opset,
                      export_seconds=round(export_s, 1))
        atomic_write_text(parity_json, P.dumps(result), force=force)
        summary["parity"] = result
        if not result["passed"]:
            raise ModelError(f"parity check failed ({'; '.join(result['failures'])}); "
                             f"{out} was not written, details in {parity_json}")

    # The model is written and checked in a nameless file (O_TMPFILE): killed during the parity
    # check, by SIGKILL even, the export leaves no 12 MB temp file behind.
    atomic_write_unnamed(out, write, force=force, inputs=[ckpt_path])
    par = summary["parity"]
    log(f"parity ({par['data']['source']} slices, sizes "
        f"{', '.join(f'{h}x{w}' for h, w in P.SIZES)}, batches 1 and 4): max_abs_diff "
        f"{par['max_abs_diff']:.2e}, label_agreement {par['label_agreement']:.5f}"
        + (f", dice_difference {par['dice_difference']:.3f} points" if fp16 else ""))
    if par["data"]["source"] != "val":
        log(f"note: {par['data']['fallback_reason']}; the parity check used the sample volume")
    log(f"wrote {out} and {parity_json}")
    if engine:
        from scar_export.engine import build_engine, engine_json

        plan_path, json_path = engine_paths(out)
        log(f"building the TensorRT engine on {gpu['name']} ...")
        plan, emeta = build_engine(out, custom_ops=custom_ops, preprocess=ckpt["preprocess"],
                                   gpu=gpu)
        atomic_write_bytes(plan_path, plan, force=force)
        atomic_write_text(json_path, engine_json(emeta), force=force)
        summary.update(engine=str(plan_path), engine_json=str(json_path))
        log(f"wrote {plan_path} and {json_path}")
    return summary
