"""The downstream figure: the Classification Accuracy Score ratio on CIFAR-10 cat vs dog, with the
best generators a CPU-sized sweep finds, end to end through the real CLI.

  1. a WGAN-GP sweep on the CIFAR-10 cats and one on the dogs (search_spaces/wgangp.py, 32 px),
  2. search_spaces/classifier.py pulling both `@best` generators: its two warm starts only, the
     real-only GoogLeNet and the synthetic-only one with the same hyperparameters, each its full
     budget (FIFO), then both tested on CIFAR-10's 2,000 real test images.

Prints each sweep's wall time, each generator's fid_final (standard Inception) and the classifier
figures: test_acc real-only, test_acc synthetic-only, CAS ratio. Sized to finish in about 30 min
on 2 CPU cores; --gpu for a larger size.
Run from the repository root: python bench/cas.py   (it works in a temporary directory; asserts nothing)
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10-catdog"

CPU = dict(gan=["--quick", "--num-samples", "4", "--set", "steps_per_eval=60", "--set", "num_evals=3",
                "--set", "ref_samples=1000", "--set", "final_fid_samples=500"],
           classifier=["--num-samples", "2", "--set", "steps_per_eval=150", "--set", "num_evals=4",
                       "--set", "batch_size=64", "--set", "val_fraction=0.1"])
GPU = dict(gan=["--num-samples", "16", "--set", "resolution=32", "--set", "steps_per_eval=500", "--set", "num_evals=10"],
           classifier=["--num-samples", "8", "--set", "steps_per_eval=500", "--set", "num_evals=10"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="a GPU-sized run")
    size = GPU if parser.parse_args().gpu else CPU
    if not DATA.is_dir():
        sys.exit(f"needs CIFAR-10 cat/dog at {DATA} (see ../shared/data/README.md)")
    workdir = Path(tempfile.mkdtemp(prefix="bench-cas-"))
    print(f"working directory {workdir}", flush=True)
    quick = "--quick" in size["gan"]
    suffix = "-quick" if quick else ""
    for cls, name in (("cat", "cats"), ("dog", "dogs")):
        _run(workdir, "search_spaces/wgangp.py", "--data", f"{DATA}:{cls}", "--name", name, *size["gan"])
    generators = f"cat=models:/cats{suffix}-generator@best,dog=models:/dogs{suffix}-generator@best"
    _run(workdir, "search_spaces/classifier.py", "--name", "bench-catdog", "--set", f"generators={generators}",
         "--set", f"data={DATA}", "--set", f"test_data={DATA / 'test'}", *size["classifier"])
    _figures(workdir, suffix)


def _run(workdir: Path, space: str, *args: str) -> None:
    start = time.perf_counter()
    env = {**os.environ, "SWEEPER_OFFLINE": os.environ.get("SWEEPER_OFFLINE", "1")}
    result = subprocess.run([sys.executable, "-m", "sweeper", "run", str(ROOT / space), *args], cwd=workdir,
                            env=env, capture_output=True, text=True)
    summary = result.stdout[result.stdout.rfind("\ntrials:"):].strip()
    print(f"--- {space} {' '.join(args)}\n{summary}\nexit {result.returncode}, wall {time.perf_counter() - start:.0f} s",
          flush=True)
    if result.returncode != 0:
        sys.exit(result.stderr[-3000:])


def _figures(workdir: Path, suffix: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'sweeps' / 'mlflow.db'}")
    for name in ("cats", "dogs"):
        version = client.get_model_version_by_alias(f"{name}{suffix}-generator", "best")
        print(f"{name}: version {version.version}, fid_final {float(version.tags['fid_final']):.1f} "
              f"({version.tags['sweeper.fid_final_extractor']}, {version.tags['sweeper.final_fid_samples']} generated "
              f"vs {version.tags['sweeper.ref_samples']} real)")
    experiment = client.get_experiment_by_name("bench-catdog")
    parent = client.search_runs([experiment.experiment_id], "tags.`sweeper.kind` = 'ClassifierConfig'")[0]
    for key in ("test_acc_real_only", "test_acc_synthetic_only", "cas_ratio"):
        print(f"{key}: {parent.data.metrics.get(key, float('nan')):.3f}")
    print(f"test images: {parent.data.params['n_test']}; train {parent.data.params['n_train']}, "
          f"val {parent.data.params['n_val']}")


if __name__ == "__main__":
    main()
