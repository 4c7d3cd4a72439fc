"""The words of `cifarkit --help` and of each command's help: the description and the examples."""

DESCRIPTION = """\
Train, evaluate and ship CIFAR-10/100 image classifiers under a parameter budget.

A recipe (a built-in name such as fast94 or seed002, or a YAML file) says everything about a run:
the model, the data split, the augmentation, the optimizer and the evaluation. `train` turns it
into a run directory; `evaluate` scores the run on the test set once, after selecting on the
validation split; `predict` writes a competition submission; `bench` measures time to accuracy.
"""

EXAMPLES = {
    "main": """\
examples:
  cifarkit recipes                                   # the built-in recipes
  cifarkit train --data-dir ../shared/datasets       # train fast94 into runs/fast94-s0/
  cifarkit predict runs/fast94-s0 --input cifar_test_nolabel.pkl --output submission.csv
""",
    "recipes": """\
examples:
  cifarkit recipes                                   # model, parameters and epochs of each recipe
  cifarkit recipes show seed002                      # the resolved recipe as YAML, to copy and edit
  cifarkit recipes show fast94 --set train.epochs=12 > my.yaml
""",
    "summary": """\
examples:
  cifarkit summary --recipe seed002                  # layer table, parameters, multiply-adds
  cifarkit summary --run runs/seed002-s0             # also accuracy per million parameters
""",
    "train": """\
examples:
  cifarkit train --data-dir ../shared/datasets                     # fast94, seed 0
  cifarkit train --recipe seed002 --seed 1 --set train.lr=0.05     # any recipe value can change
  cifarkit train --resume runs/seed002-s1                          # continue after an interruption
  cifarkit train --recipe fast94 --nproc 4                         # one run on 4 GPUs (DDP via torchrun)
""",
    "evaluate": """\
examples:
  cifarkit evaluate runs/seed002-s0                  # every model of the run, TTA, ensemble, plots
  cifarkit evaluate runs/seed002-s0 --tta none       # without test-time augmentation
""",
    "report": """\
examples:
  cifarkit report runs/seed002-s0                    # report.html (+ report_files/ with PNG and CSV)
  cifarkit report runs/seed002-s0 runs/seed002-s1 --out compare.html   # only the values that differ
""",
    "predict": """\
examples:
  cifarkit predict runs/fast94-s0 --input cifar_test_nolabel.pkl --output submission.csv
  cifarkit predict runs/seed000-s0 --weights ensemble --input cifar_test_nolabel.pkl --header ID,Labels
  cifarkit predict runs/fast94-s0 --input photo.png cat.jpg --json
""",
    "export": """\
examples:
  cifarkit export runs/fast94-s0                     # safetensors weights + model.json in runs/fast94-s0/export
  cifarkit export runs/seed002-s0 --weights best --out shipped/
  cifarkit export runs/fast94-s0 --format onnx       # model.onnx: uint8 (N, 32, 32, 3) in, logits out
""",
    "download": """\
examples:
  cifarkit download --data-dir data                  # fetch and verify CIFAR-10 into data/
  cifarkit download --dataset cifar100 --data-dir data --extract
""",
    "bench": """\
examples:
  cifarkit bench --recipe fast94 --seeds 5 --device cpu --data-dir ../shared/datasets
  cifarkit bench --recipe fast95 --seeds 25 --device cuda --out results/fast95-gpu.json
  cifarkit bench --recipe fast94 --seeds 1 --nproc 8       # images/s on 1, 2, 4 and 8 GPUs
""",
    "sweep": """\
examples:
  cifarkit sweep --recipe fast94 --space benchmarks/sweeps/fast94-cpu.yaml --trials 20 --data-dir ../shared/datasets
  cifarkit sweep --report fast94-fast94-cpu          # table, best.yaml, plots in runs/fast94-fast94-cpu/report/
  CUDA_VISIBLE_DEVICES=1 cifarkit sweep --recipe fast94 --space S.yaml --trials 100 \\
      --study s1 --storage postgresql://USER:PASSWORD@HOST/DB --worker 1    # one worker per GPU
""",
}
