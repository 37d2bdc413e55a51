"""Export a covidct checkpoint to ONNX (needs torch; run when a model is shipped, never at inference).

The exported graph is the float32 network in eval mode with batch norm folded into the convolutions (the
same inference copy :func:`covidct.models.inference.optimise_for_cpu` builds), a dynamic batch axis and the
checkpoint's own input size. The checkpoint's info (everything but the weights) goes into the ONNX
metadata under ``covidct_info``, so :mod:`covidct.models.onnx_runtime` needs neither torch nor the ``.pt``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from covidct.errors import ModelError
from covidct.models.onnx_runtime import INFO_KEY, INPUT_NAME, OUTPUT_NAME, sha256_file

OPSET = 18


def export_onnx(weights: str | Path, out: str | Path, opset: int = OPSET) -> dict:
    """Write the network of checkpoint ``weights`` to ``out`` (one self-contained .onnx file).

    Returns the model-card entry ``{"file", "sha256", "size_bytes", "opset", "input_shape", "exporter"}``.
    """
    import onnx

    from covidct.io.writers import atomic_write
    from covidct.models.checkpoint import load_model
    from covidct.models.inference import optimise_for_cpu

    net, info = load_model(weights)
    size = info.get("input_size")
    if not size or int((info.get("extra") or {}).get("spatial_dims", 2)) != 2:
        raise ModelError(f"{weights}: only fixed-size 2-D models are exported to ONNX")
    shape = [1, int(info["model"]["in_channels"]), *[int(s) for s in size]]
    if info.get("model", {}).get("name") in ("unet", "unetpp", "basicunet", "attention_unet", "segnet"):
        net = optimise_for_cpu(net).to(memory_format=torch.contiguous_format)
    net.eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        program = torch.onnx.export(net, (torch.zeros(shape),), dynamo=True, opset_version=opset,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: batch},), verbose=False, optimize=True)
    model = program.model_proto
    meta = {k: v for k, v in info.items() if k not in ("state_dict", "path")}
    onnx.helper.set_model_props(model, {INFO_KEY: json.dumps(meta, default=str)})
    model.producer_name = "covidct"
    onnx.checker.check_model(model)
    out = Path(out)
    atomic_write(out, lambda tmp: onnx.save_model(model, str(tmp), save_as_external_data=False))
    return {"file": out.name, "sha256": sha256_file(out), "size_bytes": out.stat().st_size, "opset": opset,
            "input_shape": ["batch", *shape[1:]], "exporter": f"torch.onnx dynamo (torch {torch.__version__})",
            "batch_norm_folded": True}

