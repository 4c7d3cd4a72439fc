"""ONNX export: onnxruntime on the CPU gives cifarkit's own predictions from uint8 NHWC pixels.

Tolerance for logits: 1e-4 absolute + 1e-4 relative. Both sides compute in float32, but
onnxruntime (MLAS) and torch (oneDNN) sum the convolutions in a different order; each of the
~10-20 layers then differs by a few float32 roundings: at most 5.4e-7 measured on the full-size
seed000, seed002, seed004 and fast94 nets (random weights, 200 synthetic images). 1e-4 leaves two orders of magnitude for other CPUs, yet a wrong
normalization constant, a channel-order mistake or a missing layer moves logits by 1e-2 or more.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cifarkit.cli import main
from cifarkit.errors import CifarkitError
from fakes import fake_images

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the test extra: pip install -e '.[test]'")
pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript: pip install -e '.[onnx]'")

ATOL = RTOL = 1e-4

# A tiny speed-run net in float32 (bf16 autocast would make cifarkit's predict the less exact side).
TINY_FAST = ["--recipe", "fast94", "--set", "data.verify=false", "--set", "data.val_size=100",
             "--set", "data.train_subset=256", "--set", "model.widths=[8,16,16]", "--set", "train.batch_size=64",
             "--set", "train.micro_batch=0", "--set", "train.precision=fp32", "--seed", "0"]


def runtime(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def sample_images(n: int = 1000, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """n class-like synthetic images: (NCHW for cifarkit, NHWC as in the competition pickle)."""
    nchw = fake_images(np.arange(n) % 10, 10, seed)
    return nchw, np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def fast_run(fake_cifar, tmp_path_factory):
    run = tmp_path_factory.mktemp("onnx") / "fast"
    assert main(["train", *TINY_FAST, "--epochs", "2", "--data-dir", str(fake_cifar), "--out", str(run),
                 "--no-eval"]) == 0
    return run


@pytest.fixture(scope="module")
def fast_export(fast_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx-export")
    assert main(["export", str(fast_run), "--format", "onnx", "--weights", "final", "--out", str(out)]) == 0
    return out / "model.onnx"


def test_onnx_matches_cifarkit_predict_on_1000_images(fast_run, fast_export):
    from cifarkit.evaluate.loading import load_trained
    from cifarkit.evaluate.predict import predict_array
    from cifarkit.data.loader import normalized_batches
    from cifarkit.evaluate.inference import infer

    nchw, nhwc = sample_images()
    sess = runtime(fast_export)
    logits, probs = sess.run(["logits", "probabilities"], {"images": nhwc})

    trained = load_trained(fast_run, "final", "cpu")
    own_probs = predict_array([trained], nchw, tta="none", device=torch.device("cpu"))
    assert (probs.argmax(1) == own_probs.argmax(1)).all()
    np.testing.assert_allclose(probs, own_probs, atol=ATOL, rtol=RTOL)

    batches = normalized_batches(nchw, mean=trained.mean, std=trained.std, batch_size=500)
    own_logits = infer(trained.model, batches, mode="none", output="logits").numpy()
    np.testing.assert_allclose(logits, own_logits, atol=ATOL, rtol=RTOL)
    # The model learned something, so agreeing on top-1 is not agreeing on a constant.
    assert len(np.unique(logits.argmax(1))) >= 5


def test_onnx_takes_any_batch_size_and_only_nhwc_uint8(fast_export):
    sess = runtime(fast_export)
    (inp,) = sess.get_inputs()
    assert inp.name == "images" and inp.type == "tensor(uint8)"
    assert inp.shape[1:] == [32, 32, 3] and not isinstance(inp.shape[0], int)
    _, nhwc = sample_images(9)
    whole = sess.run(["logits"], {"images": nhwc})[0]
    for batch in (1, 2, 9):
        parts = [sess.run(["logits"], {"images": nhwc[i:i + batch]})[0] for i in range(0, 9, batch)]
        np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception):                 # channels first is refused, not misread
        sess.run(["logits"], {"images": np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))})
    with pytest.raises(Exception):
        sess.run(["logits"], {"images": nhwc.astype(np.float32)})


def test_onnx_metadata_names_the_classes_and_normalization(fast_run, fast_export):
    meta = runtime(fast_export).get_modelmeta().custom_metadata_map
    summary_classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert json.loads(meta["classes"]) == summary_classes
    assert meta["recipe"] == "fast94" and meta["arch"] == "fastnet"
    from cifarkit.evaluate.loading import load_trained
    trained = load_trained(fast_run, "final", "cpu")
    assert json.loads(meta["mean"]) == pytest.approx(list(trained.mean))
    assert json.loads(meta["std"]) == pytest.approx(list(trained.std))


@pytest.mark.parametrize("recipe, overrides", [
    ("seed000", ["model.stem_width=8", "model.widths=[8,16]", "model.blocks=[1,1]"]),         # SE
    ("seed004", ["model.stem_width=8", "model.widths=[16,16,32,32]"]),                         # CBAM (004's form)
    ("seed001", ["model.stem_width=8", "model.widths=[8,16,16,32]"]),                          # avg4 pool
    ("fast96", ["model.widths=[8,16,16]"]),                                                    # residual fastnet
])
def test_every_architecture_exports_and_matches_torch(recipe, overrides):
    from cifarkit.config import load_recipe
    from cifarkit.evaluate.loading import TrainedModel
    from cifarkit.export import PixelsToLogits, onnx_bytes
    from cifarkit.models.registry import build_model

    r = load_recipe(recipe, overrides)
    torch.manual_seed(0)
    model = build_model(r.model, 10).eval()
    for m in model.modules():                       # non-trivial BN statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    trained = TrainedModel(model, r, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), [str(i) for i in range(10)], "test")
    sess = ort.InferenceSession(onnx_bytes(trained), providers=["CPUExecutionProvider"])
    _, nhwc = sample_images(64)
    logits = sess.run(["logits"], {"images": nhwc})[0]
    with torch.no_grad():
        expected = PixelsToLogits(model, trained.mean, trained.std)(torch.from_numpy(nhwc))[0].numpy()
    np.testing.assert_allclose(logits, expected, atol=ATOL, rtol=RTOL)


def test_safetensors_stays_the_default(fast_run, tmp_path):
    assert main(["export", str(fast_run), "--out", str(tmp_path / "st")]) == 0
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == ["model.json", "model.safetensors"]


def test_missing_onnx_packages_is_one_clear_error(fast_run, tmp_path, monkeypatch, capsys):
    import builtins
    real_import = builtins.__import__

    def no_onnxscript(name, *args, **kwargs):
        if name == "onnxscript":
            raise ImportError("No module named 'onnxscript'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxscript)
    assert main(["export", str(fast_run), "--format", "onnx", "--out", str(tmp_path / "x")]) == 1   # environment
    err = capsys.readouterr().err
    assert err.startswith("cifarkit: error: ONNX export needs") and "cifarkit[onnx]" in err
    assert not (tmp_path / "x").exists()


def test_bad_export_targets_are_one_line_errors(fast_run, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert main(["export", str(fast_run), "--format", "onnx", "--out", str(afile)]) == 9      # output in the way
    assert afile.read_text() == "keep me"
    assert main(["export", str(tmp_path / "nope"), "--format", "onnx"]) == 5                 # not a run
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("cifarkit: error: ") for line in err) and len(err) == 2


def test_export_run_refuses_an_unknown_format(fast_run):
    from cifarkit.export import export_run
    with pytest.raises(CifarkitError, match="unknown export format"):
        export_run(fast_run, format="tflite")
