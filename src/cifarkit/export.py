"""`cifarkit export`: a trained model in a form other programs load without cifarkit or pickle.

Two formats:

- ``safetensors`` (default): the weights as safetensors plus a JSON of the architecture, which
  `cifarkit predict` loads back.
- ``onnx``: one self-describing ``model.onnx`` for onnxruntime and other ONNX runtimes. Its input
  ``images`` is uint8 (N, 32, 32, 3), channels last, exactly as the competition pickle stores the
  pixels, with any batch size N; the scaling to [0, 1], the per-channel normalization and the
  change to channels-first happen inside the graph. It has two outputs: ``logits`` (N, C) float32,
  the raw scores of the one model (no test-time augmentation), and ``probabilities`` (N, C), their
  softmax. Class names, normalization and the source weights are in the model's metadata.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import torch
from torch import nn

from cifarkit.errors import CifarkitError, OutputError
from cifarkit.evaluate.loading import TrainedModel, load_trained
from cifarkit.fsio import write_bytes, write_json
from cifarkit.models.registry import count_parameters
from cifarkit.schema import to_dict

FORMATS = ("safetensors", "onnx")
ONNX_FILE = "model.onnx"
ONNX_INPUT, ONNX_OUTPUTS = "images", ("logits", "probabilities")


def export_run(run_dir, out=None, weights: str = "auto", format: str = "safetensors") -> Path:
    """Export a run's weights (or a weights file / export folder) into the folder `out`."""
    if format not in FORMATS:
        raise CifarkitError(f"unknown export format '{format}'; choose one of {', '.join(FORMATS)}")
    if format == "onnx":
        _require_onnx()                      # before the model is loaded: fail fast and clearly
    trained = load_trained(run_dir, weights, "cpu")
    out = Path(out) if out else Path(run_dir) / "export"
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file; give a folder to export into")
    if format == "onnx":
        write_bytes(out / ONNX_FILE, onnx_bytes(trained))
        return out
    from safetensors.torch import save
    tensors = {k: v.detach().contiguous().clone() for k, v in trained.model.state_dict().items()}
    write_bytes(out / "model.safetensors", save(tensors))
    write_json(out / "model.json", {
        "format": "cifarkit-export-v1",
        "source": trained.source,
        "parameters": count_parameters(trained.model),
        "recipe": to_dict(trained.recipe),
        "normalization": {"mean": list(trained.mean), "std": list(trained.std), "classes": trained.classes},
    })
    return out


class PixelsToLogits(nn.Module):
    """uint8 (N, H, W, 3) pixels -> (logits, probabilities), normalizing as cifarkit's loader does."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The same operations in the same order as DeviceLoader: /255, then (x - mean) / std.
        x = images.permute(0, 3, 1, 2).to(torch.float32).div(255)
        logits = self.model((x - self.mean) / self.std).float()
        return logits, logits.softmax(dim=-1)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (torch's ONNX exporter is built on it)
    except ImportError:
        raise CifarkitError("ONNX export needs the onnx and onnxscript packages: "
                            "pip install 'cifarkit[onnx]'") from None


def onnx_bytes(trained: TrainedModel) -> bytes:
    """The serialized ONNX model of `trained` (see the module docstring for its inputs and outputs)."""
    _require_onnx()
    import onnx

    wrapper = PixelsToLogits(trained.model, trained.mean, trained.std).to("cpu", torch.float32).eval()
    wrapper = wrapper.to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)   # batch 2: a batch of 1 would be fixed at 1
    batch = torch.export.Dim("batch", min=1)
    # torch's exporter prints its progress; an export is one line of cifarkit output.
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        try:
            program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=[ONNX_INPUT],
                                        output_names=list(ONNX_OUTPUTS), dynamic_shapes={"images": {0: batch}},
                                        optimize=True, verbose=False)
        except Exception as e:           # the exporter's own errors are many classes; say which model
            raise CifarkitError(f"ONNX export of {trained.source} failed: {str(e).splitlines()[0][:300]}") from None
    proto = program.model_proto
    metadata = {
        "cifarkit_format": "cifarkit-onnx-v1",
        "source": trained.source,
        "recipe": trained.recipe.name,
        "arch": trained.recipe.model.arch,
        "parameters": str(count_parameters(trained.model)),
        "classes": json.dumps(trained.classes),
        "mean": json.dumps(list(trained.mean)),
        "std": json.dumps(list(trained.std)),
        "input": "images: uint8 (N, 32, 32, 3), channels last, RGB, as the competition pickle",
        "outputs": "logits: float32 (N, C), one model, no test-time augmentation; probabilities: their softmax",
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()
