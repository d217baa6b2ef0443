"""Every shipped search-space file runs anywhere: `python -m sweeper run FILE --dry-run` from an empty
folder, as a new user would, with a fresh HOME and cache, offline, and only the dataset mirror
(SWEEPER_DATASETS) to resolve the known names the files use. Each file in its own process, a few at once."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA

SHIPPED = sorted(p for p in (REPO / "search_spaces").rglob("*.py") if p.name != "__init__.py")
# The classifier pulls its generators from the model registry: on a fresh machine that is the one
# thing missing, and the dry run says so once the data (checked first) has resolved.
NEEDS_GENERATORS = {REPO / "search_spaces" / "classifier.py"}


def _dry_run(path: Path, home: Path) -> subprocess.CompletedProcess:
    workdir = home / path.stem
    workdir.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(REPO),
           "SWEEPER_OFFLINE": "1", "SWEEPER_DATASETS": str(SHARED_DATA)}
    return subprocess.run([sys.executable, "-m", "sweeper", "run", str(path), "--dry-run"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the dataset mirror {SHARED_DATA} is absent (see ../shared/data/README.md)")
    home = tmp_path_factory.mktemp("fresh-home")
    # Each run is mostly imports (torch, Ray, MLflow): one core each.
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        results = dict(zip(SHIPPED, pool.map(lambda p: _dry_run(p, home), SHIPPED)))
    return results, home


def test_every_shipped_file_is_found():
    names = {p.relative_to(REPO / "search_spaces").as_posix() for p in SHIPPED}
    assert {"wgangp.py", "dcgan.py", "sngan.py", "classifier.py"} <= names
    assert sum(n.startswith("seeds/") for n in names) >= 5


@pytest.mark.parametrize("path", SHIPPED, ids=[p.relative_to(REPO).as_posix() for p in SHIPPED])
def test_a_shipped_file_dry_runs_on_a_fresh_machine(dry_runs, path):
    results, home = dry_runs
    result = results[path]
    if path in NEEDS_GENERATORS:
        assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
        assert result.stderr.startswith("sweeper: error: generators.cat: models:/cats-generator@best does not "
                                        "resolve"), result.stderr
    else:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "mlflow:" in result.stdout  # the resolved sweep was printed
    assert list((home / path.stem).iterdir()) == []  # a dry run writes nothing where it runs


def test_the_classifier_data_resolves_to_cifar10_cats_and_dogs(monkeypatch):
    # What the classifier's dry run cannot reach past its missing generators: its data and test data.
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the dataset mirror {SHARED_DATA} is absent (see ../shared/data/README.md)")
    from sweeper.driver.loader import load_sweep
    from trainables.classifier import ClassifierConfig
    from trainables.data import source_classes

    monkeypatch.setenv("SWEEPER_DATASETS", str(SHARED_DATA))
    config = load_sweep(REPO / "search_spaces" / "classifier.py").config
    for source in (config.data, config.test_data, ClassifierConfig().data):
        assert "shared" not in source
        assert source_classes(source) == ("cat", "dog"), source
