"""Time fast94's training step with other ways of computing the small-map weight gradient.

    python benchmarks/weight_grad_ab.py --rounds 5 --json benchmarks/results/explorations/weight-grad-variants-cpu.json
    python benchmarks/weight_grad_ab.py --variant im2col_cat --variant im2col --rounds 12 \
        --set 'augment.resize_schedule=[]' --json benchmarks/results/explorations/im2col-reused-buffer-step-cpu.json

`model.cpu_kernels` computes the 3x3 convolutions' weight gradient on the 7x7 and 3x3 maps as one
matrix multiply with an im2col, copied into a buffer kept per map shape (models/cpu_kernels.py).
`im2col_cat` is how it built the im2col before: nine shifted views concatenated into a new tensor.
The other variants avoid other costs: the transposed operand passed as a view, the im2col built for
25 images at a time (so it stays in cache), nine matrix multiplies on shifted rows of the padded
maps (no im2col at all), and one strided copy (`unfold`). Each variant is checked against PyTorch's
weight gradient first, then one step of each is timed in turn per round (one trainer, the variant
swapped in before its step), with the minor page faults of each step and the yardstick before
and after. fast94's first epochs train at 24x24, and the timed step is the first epoch's: `--set
'augment.resize_schedule=[]'` times a 32x32 step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

import torch  # noqa: E402
from throughput import random_trainer, timed_step  # noqa: E402

import cifarkit.models.cpu_kernels as cpu_kernels  # noqa: E402
from cifarkit.bench import matmul_gflops, yardstick_key  # noqa: E402
from cifarkit.config import load_recipe  # noqa: E402
from cifarkit.exits import run_command  # noqa: E402
from cifarkit.fsio import check_can_write, write_json  # noqa: E402
from cifarkit.runinfo import run_record  # noqa: E402

IM2COL = cpu_kernels._im2col_weight_grad


def _concatenated_columns(padded, h, w):
    """The nine shifted (h, w) windows of padded maps side by side: (N, H, W, 9 * C), (dy, dx, c)."""
    return torch.cat([padded[:, dy:dy + h, dx:dx + w, :] for dy in range(3) for dx in range(3)], dim=3)


def im2col_cat(x, grad):
    """The module's im2col before it reused one buffer: nine shifted views concatenated into a new
    tensor on every call."""
    n, c, h, w = x.shape
    k = grad.shape[1]
    padded = cpu_kernels._padded_rows(x)
    cols = _concatenated_columns(padded, h, w)
    grad_rows = grad.permute(0, 2, 3, 1).reshape(n * h * w, k).t().contiguous()
    dw = grad_rows @ cols.reshape(n * h * w, 9 * c)
    return dw.view(k, 3, 3, c).permute(0, 3, 1, 2)


def im2col_view(x, grad):
    """`im2col_cat` with the output gradient passed transposed as a view, not copied."""
    n, c, h, w = x.shape
    k = grad.shape[1]
    padded = cpu_kernels._padded_rows(x)
    cols = _concatenated_columns(padded, h, w)
    dw = grad.permute(0, 2, 3, 1).reshape(n * h * w, k).t() @ cols.reshape(n * h * w, 9 * c)
    return dw.view(k, 3, 3, c).permute(0, 3, 1, 2)


def im2col_chunked(x, grad, images: int = 25):
    """The im2col of `images` images at a time, accumulated in fp32."""
    n, c, h, w = x.shape
    k = grad.shape[1]
    padded, rows = cpu_kernels._padded_rows(x), grad.permute(0, 2, 3, 1)
    dw = torch.zeros(k, 9 * c, dtype=torch.float32)
    for i in range(0, n, images):
        part = padded[i:i + images]
        m = part.shape[0]
        cols = _concatenated_columns(part, h, w)
        dw += (rows[i:i + images].reshape(m * h * w, k).t() @ cols.reshape(m * h * w, 9 * c)).float()
    return dw.to(x.dtype).view(k, 3, 3, c).permute(0, 3, 1, 2)


def shifted_matmuls(x, grad):
    """Nine matrix multiplies on the padded maps flattened to rows: a tap (dy, dx) is the same rows
    shifted by (dy - 1) * (W + 2) + dx - 1, and the zero border of the padded gradient makes the
    rows that wrap around contribute nothing."""
    n, c, h, w = x.shape
    k = grad.shape[1]
    x_rows = cpu_kernels._padded_rows(x).reshape(-1, c)
    g_rows = cpu_kernels._padded_rows(grad).reshape(-1, k)
    row = w + 2
    lo, hi = row + 1, g_rows.shape[0] - row - 1
    g_t = g_rows[lo:hi].t()
    dw = torch.empty(k, 3, 3, c, dtype=x.dtype)
    for dy in range(3):
        for dx in range(3):
            shift = (dy - 1) * row + dx - 1
            dw[:, dy, dx, :] = g_t @ x_rows[lo + shift:hi + shift]
    return dw.permute(0, 3, 1, 2)


def unfold_copy(x, grad):
    """The im2col as one strided copy of `unfold` views, in the weight's (c, dy, dx) order."""
    n, c, h, w = x.shape
    k = grad.shape[1]
    cols = cpu_kernels._padded_rows(x).unfold(1, 3, 1).unfold(2, 3, 1).reshape(n * h * w, c * 9)
    return (grad.permute(0, 2, 3, 1).reshape(n * h * w, k).t() @ cols).view(k, c, 3, 3)


VARIANTS = {"im2col": IM2COL, "im2col_cat": im2col_cat, "im2col_view": im2col_view, "im2col_chunked": im2col_chunked,
            "shifted_matmuls": shifted_matmuls, "unfold_copy": unfold_copy}


def torch_weight_grad(x, grad):
    """PyTorch's own weight gradient of a 3x3 'same' convolution, in fp32."""
    weight = torch.zeros(grad.shape[1], x.shape[1], 3, 3)
    return torch.ops.aten.convolution_backward(grad.float(), x.float(), weight, None, [1, 1], [1, 1], [1, 1],
                                               False, [0, 0], 1, [False, True, False])[1]


def check_variants(variants: dict = VARIANTS, images: int = 50, tolerance: float = 2e-2) -> dict:
    """Each variant's bf16 gradient against PyTorch's fp32 one on fast94's 7x7 and 3x3 shapes (the
    largest error relative to the largest entry); a variant that disagrees stops the script."""
    generator = torch.Generator().manual_seed(0)
    errors = {}
    for name, fn in variants.items():
        worst = 0.0
        for size in (7, 3):
            x, g = (torch.randn(images, 256, size, size, generator=generator).bfloat16()
                    .contiguous(memory_format=torch.channels_last) for _ in range(2))
            ref, got = torch_weight_grad(x, g), fn(x, g).float()
            worst = max(worst, ((got - ref).abs().max() / ref.abs().max()).item())
        if not worst <= tolerance:
            raise SystemExit(f"weight_grad_ab: error: {name} differs from PyTorch's weight gradient by {worst:.3g}")
        errors[name] = worst
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="fast94")
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS),
                        help="variants to time (default: all)")
    parser.add_argument("--set", action="append", default=[],
                        help="recipe override, e.g. 'augment.resize_schedule=[]' to time a 32x32 step of fast94, "
                             "whose first epochs (and so the step timed here) train at 24x24")
    parser.add_argument("--rounds", type=int, default=5, help="rounds counted, after one warm-up round")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    check_can_write(args.json)            # now, not after the minutes of timing
    names = args.variant or list(VARIANTS)
    errors = check_variants()
    recipe = load_recipe(args.recipe, ["device=cpu", "model.cpu_kernels=true", *args.set])
    trainer, batches = random_trainer(recipe, torch.device("cpu"), len(names) * (args.rounds + 1) + 1)
    before = matmul_gflops(torch.device("cpu"))
    seconds = {name: [] for name in names}
    faults = {name: [] for name in names}
    try:
        for round_ in range(args.rounds + 1):
            for name in names:
                cpu_kernels._im2col_weight_grad = VARIANTS[name]
                x, y = next(batches)
                step_seconds, step_faults = timed_step(trainer, x, y, round_)
                if round_:
                    seconds[name].append(step_seconds)
                    faults[name].append(step_faults)
    finally:
        cpu_kernels._im2col_weight_grad = IM2COL
    after = matmul_gflops(torch.device("cpu"))
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    first = names[0]
    write_json(args.json, {"recipe": args.recipe, "overrides": args.set, "rounds": args.rounds, "variants": names,
                           "max_relative_error_vs_torch": errors, "step_seconds": seconds,
                           "minor_page_faults_per_step": faults,
                           "median_step_seconds": medians,
                           f"ratio_to_{first}": {n: m / medians[first] for n, m in medians.items()},
                           yardstick_key(torch.device("cpu")): {"before": before, "after": after}, **run_record("cpu")})
    for name, m in medians.items():
        print(f"{name}: median step {m:.3f} s ({m / medians[first]:.3f} x {first})")


if __name__ == "__main__":
    sys.exit(run_command("weight_grad_ab", main))
