"""Bad input, one kind per row: `python -m sweeper run ...` (in-process, through sweeper.cli.main)
answers exit code 2 and one stderr line `sweeper: error: ...` naming the culprit, before anything
starts, and leaves nothing behind: no sweeps/ (MLflow store, Tune storage), no cache entry, no
__pycache__ next to the search-space file. Every row is a real run command (no --dry-run), so a check
that moved after Ray's start would be caught by the tripwire on ray.init."""
import socket

import numpy as np
import pytest
from PIL import Image

import sweeper.cli
from sweeper.definition import Sweep
from sweeper.kinds.gan import GAN
from trainables.config import GANConfig

HEADER = "from ray import tune\nfrom sweeper import Sweep\nfrom trainables.config import GANConfig\n"
QUICK = ("resolution=32, g_width=8, d_width=8, batch_size=4, steps_per_eval=2, num_evals=1, "
         "fid_samples=8, ref_samples=8, final_fid_samples=8")


def _space_file(space: str = '{"g_lr": tune.loguniform(1e-5, 1e-3)}', body: str | None = None) -> str:
    return HEADER + (body if body is not None else f'sweep = Sweep("bad", GANConfig({QUICK}), space={space}, num_samples=2)\n')


def _images(folder, n, cls="cat"):
    (folder / cls).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / cls / f"{i}.png")
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


GOOD = _space_file()
DEFINE_BY_RUN = HEADER + f'''
def space(trial):
    trial.suggest_float("g_lr", 1e-3, 1e-5, log=True)

sweep = Sweep("bad", GANConfig({QUICK}), space=space)
'''
# (id, files to create {name: text, or a function of the folder}, argv after `run`, env, fragments of the line)
CASES = [
    # the search-space file
    ("missing-file", {}, ["nope.py"], {}, ["nope.py", "not found"]),
    ("file-is-a-folder", {"spaces": lambda p: p.mkdir()}, ["spaces"], {}, ["spaces", "is a folder"]),
    ("file-not-python", {"space.txt": "sweep = 1\n"}, ["space.txt"], {}, ["space.txt", "not a Python file"]),
    ("syntax-error", {"space.py": HEADER + "sweep = Sweep(\n"}, ["space.py"], {}, ["space.py:4", "SyntaxError"]),
    ("import-error", {"space.py": "import no_such_module_xyz\n" + GOOD}, ["space.py"], {},
     ["space.py:1", "no_such_module_xyz"]),
    ("no-sweep", {"space.py": HEADER + "x = 1\n"}, ["space.py"], {}, ["space.py", "defines no `sweep"]),
    ("sweep-is-a-dict", {"space.py": HEADER + "sweep = {'name': 'x'}\n"}, ["space.py"], {},
     ["space.py", "`sweep` is a dict, expected Sweep(...)"]),
    ("inverted-range", {"space.py": _space_file('{"g_lr": tune.loguniform(1e-3, 1e-5)}')}, ["space.py"], {},
     ["space.g_lr", "empty range"]),
    ("empty-range", {"space.py": _space_file('{"beta1": tune.uniform(0.5, 0.5)}')}, ["space.py"], {},
     ["space.beta1", "empty range"]),
    ("empty-choice", {"space.py": _space_file('{"loss": tune.choice([])}')}, ["space.py"], {},
     ["space.loss", "nothing to choose from"]),
    # ray.tune refuses it while the file builds the dict: the line names the key
    ("log-range-with-0", {"space.py": _space_file('{"weight_decay": tune.loguniform(0, 1e-3)}')}, ["space.py"], {},
     ["space.py:4", "LogUniform"]),
    ("unknown-key-in-space", {"space.py": _space_file('{"nope": tune.choice([1, 2])}')}, ["space.py"], {},
     ["space.nope", "unknown config key"]),
    ("space-value-refused", {"space.py": _space_file('{"d_norm": tune.choice(["none", "bogus"])}')}, ["space.py"],
     {}, ["space.d_norm", "bogus"]),
    ("prepared-key-searched", {"space.py": _space_file('{"resolution": tune.choice([32, 64])}')}, ["space.py"], {},
     ["space.resolution", "cannot be searched"]),
    ("define-by-run-bad-suggest", {"space.py": DEFINE_BY_RUN}, ["space.py"], {}, ["'g_lr'", "low <= high"]),
    # --set and the other options
    ("set-unknown-key", {"space.py": GOOD}, ["space.py", "--set", "nope=1"], {}, ["--set nope", "unknown config key"]),
    ("set-no-equals", {"space.py": GOOD}, ["space.py", "--set", "z_dim"], {}, ["'z_dim'", "key=value"]),
    ("set-bad-type", {"space.py": GOOD}, ["space.py", "--set", "batch_size=abc"], {},
     ["batch_size=abc", "expected int"]),
    ("set-nan", {"space.py": GOOD}, ["space.py", "--set", "gp_weight=nan"], {}, ["gp_weight", "finite", "nan"]),
    ("set-inf", {"space.py": GOOD}, ["space.py", "--set", "ema_start_kimg=inf"], {}, ["ema_start_kimg", "inf"]),
    ("set-zero-size", {"space.py": GOOD}, ["space.py", "--set", "batch_size=0"], {}, ["batch_size", ">= 1", "0"]),
    ("set-negative-size", {"space.py": GOOD}, ["space.py", "--set", "z_dim=-8"], {}, ["z_dim", "-8"]),
    ("set-zero-rate", {"space.py": GOOD}, ["space.py", "--set", "d_lr=0"], {}, ["d_lr", "(0, 1)", "0"]),
    ("set-negative-weight", {"space.py": GOOD}, ["space.py", "--set", "weight_decay=-0.1"], {},
     ["weight_decay", "-0.1"]),
    ("set-out-of-range", {"space.py": GOOD}, ["space.py", "--set", "beta1=1.5"], {}, ["beta1", "1.5"]),
    ("set-unknown-choice", {"space.py": GOOD}, ["space.py", "--set", "loss=wasserstein"], {},
     ["loss", "wasserstein"]),
    ("set-fid-samples-1", {"space.py": GOOD}, ["space.py", "--set", "fid_samples=1"], {},
     ["fid_samples", ">= 2", "covariance"]),
    ("set-resolution-for-arch", {"space.py": GOOD}, ["space.py", "--set", "arch=resnet", "--set", "resolution=256"],
     {}, ["resolution", "256", "resnet"]),
    ("set-illegal-combination", {"space.py": GOOD}, ["space.py", "--set", "loss=wgan-gp", "--set", "d_norm=batch"],
     {}, ["d_norm", "wgan-gp"]),
    ("set-searched-key", {"space.py": GOOD}, ["space.py", "--set", "g_lr=1e-4"], {}, ["--set g_lr", "searched"]),
    ("zero-trials", {"space.py": GOOD}, ["space.py", "--num-samples", "0"], {}, ["num_samples", "0"]),
    ("bad-name", {"space.py": GOOD}, ["space.py", "--name", "a b"], {}, ["name", "'a b'"]),
    # data
    ("data-missing", {"space.py": GOOD}, ["space.py", "--data", "no/such/folder"], {}, ["no/such/folder"]),
    ("data-empty-folder", {"space.py": GOOD, "empty": lambda p: p.mkdir()}, ["space.py", "--data", "empty"], {},
     ["empty", "no image files"]),
    ("data-one-image", {"space.py": GOOD, "one": lambda p: _images(p, 1)}, ["space.py", "--data", "one"], {},
     ["one", "1 image", "at least 2"]),
    ("data-undecodable", {"space.py": GOOD, "broken": lambda p: [_images(p, 0), (p / "cat" / "a.png").write_text("x"),
                                                              (p / "cat" / "b.png").write_bytes(b"")]},
     ["space.py", "--data", "broken"], {}, ["broken", "no usable images"]),
    ("data-corrupt-zip", {"space.py": GOOD, "photos.zip": "this is not a zip"}, ["space.py", "--data", "photos.zip"],
     {}, ["photos.zip", "cannot read archive"]),
    ("data-unknown-class", {"space.py": GOOD, "pets": lambda p: _images(p, 3)}, ["space.py", "--data", "pets:dragon"],
     {}, ["'dragon'", "pets", "cat"]),
    ("data-known-name-offline", {"space.py": GOOD}, ["space.py", "--data", "afhq-cat"], {"SWEEPER_OFFLINE": "1", "SWEEPER_DATASETS": ""},
     ["afhq", "SWEEPER_OFFLINE=1"]),
    ("data-toy-unknown-class", {"space.py": GOOD}, ["space.py", "--data", "toy-faces:dragon"], {}, ["'dragon'"]),
    ("system-metrics-interval", {"space.py": GOOD}, ["space.py"], {"SWEEPER_SYSTEM_METRICS_S": "often"},
     ["SWEEPER_SYSTEM_METRICS_S", "often"]),
    # a population (PBT, PB2)
    ("pbt-mutates-architecture", {"space.py": HEADER + "from sweeper import PBT\n" + f'sweep = Sweep("bad", GANConfig({QUICK}), '
                                  'space={"g_lr": tune.loguniform(1e-5, 1e-3)}, scheduler=PBT(mutations={"z_dim": [64, 128]}))\n'},
     ["space.py"], {}, ["scheduler.mutations['z_dim']", "cannot change in the middle of a run"]),
    ("pbt-bad-mutation", {"space.py": HEADER + "from sweeper import PBT\n" + f'sweep = Sweep("bad", GANConfig({QUICK}), '
                          'space={"g_lr": tune.loguniform(1e-5, 1e-3)}, scheduler=PBT(mutations={"g_lr": 1e-4}))\n'},
     ["space.py"], {}, ["scheduler.mutations['g_lr']", "a list of at least 2 values or a Range"]),
    ("pb2-bad-bound", {"space.py": HEADER + "from sweeper import PB2\n" + f'sweep = Sweep("bad", GANConfig({QUICK}), '
                       'space={"g_lr": tune.loguniform(1e-5, 1e-3)}, scheduler=PB2(bounds={"g_lr": (1e-3, 1e-5)}))\n'},
     ["space.py"], {}, ["scheduler.bounds['g_lr']", "low < high"]),
    ("pbt-budget-in-kimg", {"space.py": HEADER + "from sweeper import PBT\n" + f'sweep = Sweep("bad", GANConfig({QUICK}), '
                            'space={"g_lr": tune.loguniform(1e-5, 1e-3)}, scheduler=PBT())\n'},
     ["space.py", "--budget", "100kimg"], {}, ["budget: 100kimg", "device time"]),
    # where things go
    ("tracking-unreachable", {"space.py": GOOD}, ["space.py"], {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}"},
     ["MLFLOW_TRACKING_URI=http://127.0.0.1:", "does not answer"]),
    ("storage-unknown-scheme", {"space.py": GOOD}, ["space.py", "--storage", "foo://x"], {},
     ["--storage foo://x", "unknown scheme"]),
    ("storage-is-a-file", {"space.py": GOOD, "results": "not a folder"}, ["space.py", "--storage", "results"], {},
     ["--storage results", "is a file"]),
    ("storage-env-under-a-file", {"space.py": GOOD, "results": "not a folder"}, ["space.py"],
     {"SWEEPER_STORAGE": "results/sweeps"}, ["SWEEPER_STORAGE=results/sweeps", "is a file"]),
    # resume (argv starting with "resume" is that command, not run's FILE)
    ("resume-of-nothing", {}, ["resume"], {}, ["resume: no sweep in", "ray_results"]),
    ("resume-unknown-name", {}, ["resume", "nosuchsweep"], {}, ["no sweep named 'nosuchsweep'"]),
    ("resume-bad-storage", {}, ["resume", "--storage", "foo://x"], {}, ["--storage foo://x", "unknown scheme"]),
]


@pytest.fixture
def workdir(tmp_path, tmp_path_factory, monkeypatch):
    """A fresh cwd, an empty cache, no tracking server, and a tripwire on Ray's start."""
    cache = tmp_path_factory.mktemp("empty-cache")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWEEPER_CACHE", str(cache))
    monkeypatch.setenv("SWEEPER_OFFLINE", "1")
    for name in ("MLFLOW_TRACKING_URI", "SWEEPER_STORAGE", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)

    def ray_started(*args, **kwargs):
        raise AssertionError("Ray was started: the bad input was not refused before anything started")
    monkeypatch.setattr("ray.init", ray_started)
    return tmp_path, cache


def _everything(root) -> set:
    return {p.relative_to(root) for p in root.rglob("*")}


@pytest.mark.parametrize("files, argv, env, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_before_anything_starts(workdir, monkeypatch, capsys, files, argv, env, fragments):
    root, cache = workdir
    for name, content in files.items():
        content(root / name) if callable(content) else (root / name).write_text(content)
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(port=_free_port()))
    before = _everything(root)

    code = sweeper.cli.main(argv if argv[:1] == ["resume"] else ["run", *argv])

    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("sweeper: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    assert _everything(root) == before  # no sweeps/, mlflow.db, ray_results, mlruns, __pycache__
    assert list(cache.iterdir()) == []  # nothing cached, not even half-way


def test_too_few_images_for_batch_and_reference_stats_train_with_a_warning(workdir, capsys):
    root, _ = workdir
    sweep = Sweep("few", GANConfig(data=str(_images(root / "few", 3)), resolution=32, batch_size=32, ref_samples=1024))
    prepared = GAN.prepare(sweep)
    assert len(prepared.data) == 3
    err = capsys.readouterr().err
    assert "3 images, fewer than batch_size 32" in err and "3 images, fewer than ref_samples 1024" in err


OWN_CONFIG = '''
from dataclasses import dataclass

from sweeper import Sweep
from trainables.config import Config


@dataclass(frozen=True)
class Broken(Config):
    x: float = 0.0
    num_evals: int = 1
    seed: int = 0

    def validate(self):
        return 1 / 0  # a bug, not bad input


sweep = Sweep("broken", Broken(), trainable=lambda cfg, report, restore_from=None: None, metric="loss", mode="min")
'''


def test_an_internal_error_keeps_its_traceback_and_exit_1(workdir, capsys):
    root, cache = workdir
    (root / "space.py").write_text(OWN_CONFIG)
    before = _everything(root)
    assert sweeper.cli.main(["run", "space.py"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "ZeroDivisionError" in err and "sweeper: error" not in err
    assert _everything(root) == before and list(cache.iterdir()) == []
