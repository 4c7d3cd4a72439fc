"""Budget-aware hyperparameter sweeps with Optuna: space.py (SPACE.yaml), trial.py (one trial),
study.py (a worker: storage, sampler, pruner), report.py (table, best recipe, plots)."""
