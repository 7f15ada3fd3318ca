"""The files the stages write beside their output folders: metrics (`dvc metrics show`) and plots
(`dvc plots show`), declared as such in dvc.yaml (tests/test_dvc_yaml.py keeps the two equal). Each
stage's output folder is its params section's out_dir."""

from pathlib import Path

SEGMENT_STATS = Path("metrics/segment_stats.json")
CONTAMINATION = Path("metrics/contamination.json")  # split: train against dev and HumanEval
FINETUNE_METRICS = Path("metrics/finetune.json")
FINETUNE_PLOT = Path("plots/finetune.csv")  # the training curve
EVALUATE_METRICS = Path("metrics/metrics.json")
CONFIDENCE_PLOT = Path("plots/confidence.csv")  # the gate's precision against coverage
PASS_AT_K_PLOT = Path("plots/humaneval_pass_at_k.csv")  # HumanEval pass@k against k
ROBUSTNESS_PLOT = Path("plots/robustness.csv")  # each measure's score, nominal and under each perturbation

# stage -> (its metrics files, its plots files)
BY_STAGE = {
    "segment": ([SEGMENT_STATS], []),
    "split": ([CONTAMINATION], []),
    "finetune": ([FINETUNE_METRICS], [FINETUNE_PLOT]),
    "evaluate": ([EVALUATE_METRICS], [CONFIDENCE_PLOT, PASS_AT_K_PLOT, ROBUSTNESS_PLOT]),
}
