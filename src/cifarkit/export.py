"""`cifarkit export`: weights as safetensors plus a JSON of the architecture -- loadable without pickle."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save

from cifarkit.evaluate.loading import load_trained
from cifarkit.fsio import write_bytes, write_json
from cifarkit.models.registry import count_parameters
from cifarkit.schema import to_dict


def export_run(run_dir, out=None, weights: str = "auto") -> Path:
    trained = load_trained(run_dir, weights, "cpu")
    out = Path(out) if out else Path(run_dir) / "export"
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
