"""How fast this CPU multiplies and convolves in fp32 and in bf16: the measurement behind
`train.precision: auto` (bf16 only where the hardware has native bf16).

    python benchmarks/precision_speed.py --json benchmarks/results/precision-speed-cpu.json

Times a square matrix multiply (as cifarkit's yardstick times it: best of three single calls after
an untimed one) and fast94's widest 3x3 convolution (forward and both gradients, channels-last,
bf16 through autocast as in training, best of `--rounds` after an untimed call) in each precision,
on all of torch's threads. The JSON records the GFLOP/s of each, the bf16/fp32
ratios, whether torch sees native bf16, and the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cifarkit.bench import matmul_gflops  # noqa: E402
from cifarkit.device import cpu_has_native_bf16  # noqa: E402
from cifarkit.exits import run_command  # noqa: E402
from cifarkit.fsio import check_can_write, write_json  # noqa: E402
from cifarkit.runinfo import run_record  # noqa: E402

PRECISIONS = ("fp32", "bf16")
# fast94's second block: 250 images (a micro-batch), 64 -> 256 channels on 16x16 maps
CONV = {"batch": 250, "in_channels": 64, "out_channels": 256, "size": 16}


def best_seconds(fn, rounds: int) -> float:
    fn()                                            # kernel selection, allocation
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def conv_gflops(precision: str, rounds: int) -> float:
    """Forward, input gradient and weight gradient of one 3x3 convolution, as a training step runs it."""
    generator = torch.Generator().manual_seed(0)
    c = CONV
    x = torch.randn(c["batch"], c["in_channels"], c["size"], c["size"], generator=generator)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(c["out_channels"], c["in_channels"], 3, 3, generator=generator, requires_grad=True)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = F.conv2d(x, weight, padding=1)
        y.backward(torch.ones_like(y))

    forward = 2 * c["batch"] * c["size"] ** 2 * c["in_channels"] * c["out_channels"] * 9
    return 3 * forward / best_seconds(step, rounds) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of the convolution")
    parser.add_argument("--matmul-size", type=int, default=1024,
                        help="n of the n x n multiply (an emulated bf16 one of 2048 takes about a minute)")
    args = parser.parse_args()
    check_can_write(args.json)
    result = {"threads": torch.get_num_threads(), "native_bf16": cpu_has_native_bf16(),
              "matmul_size": args.matmul_size, "conv": CONV, "matmul_gflops": {}, "conv_train_gflops": {}}
    for name in PRECISIONS:
        result["matmul_gflops"][name] = matmul_gflops(torch.device("cpu"), 1, precision=name, n=args.matmul_size)
        result["conv_train_gflops"][name] = conv_gflops(name, args.rounds)
        print(f"{name}: matmul {result['matmul_gflops'][name]:.1f} GFLOP/s, "
              f"conv (forward + gradients) {result['conv_train_gflops'][name]:.1f} GFLOP/s", flush=True)
    result["bf16_over_fp32"] = {kind: result[kind]["bf16"] / result[kind]["fp32"]
                                for kind in ("matmul_gflops", "conv_train_gflops")}
    write_json(args.json, {**result, **run_record("cpu")})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(run_command("precision_speed", main))
