"""cluster.yaml, checked offline the way `ray up` checks it before it touches a cloud (Ray's own
defaults and validator: `prepare_config` then `validate_config` against ray/autoscaler/ray-schema.json,
as in ray.autoscaler._private.commands._bootstrap_config), plus the properties a sweep on the cluster
relies on. The commented GCP variant at the end of the file is uncommented, laid over the AWS config
(it replaces the top-level sections it names) and checked the same way. No network, no cloud."""
import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
TEXT = CLUSTER_YAML.read_text()
PINNED = ("ray", "torch", "torchvision")  # what setup must never install or replace
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")"}


def _gcp_variant(text: str) -> dict:
    block = re.search(r"^# >>> gcp\n(.*?)^# <<< gcp$", text, re.S | re.M)
    assert block, "cluster.yaml: the commented GCP variant ('# >>> gcp' ... '# <<< gcp') is missing"
    lines = block.group(1).splitlines()
    bad = [line for line in lines if line != "#" and not line.startswith("# ")]
    assert not bad, f"cluster.yaml: GCP variant lines must be commented with '# ': {bad[:3]}"
    return yaml.safe_load("\n".join(line[2:] for line in lines))


AWS = yaml.safe_load(TEXT)
CONFIGS = {"aws": AWS, "gcp": {**AWS, **_gcp_variant(TEXT)}}
BUCKET_SCHEME = {"aws": "s3://", "gcp": "gs://"}


def ray_validate(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def head_type(config: dict) -> dict:
    return config["available_node_types"][config["head_node_type"]]


def worker_types(config: dict) -> dict:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def simple_commands(command: str) -> list[list[str]]:
    """A shell command line split into its simple commands (at &&, ||, ;, |, &, parentheses)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in commands + [current] if c]


def pip_installs(config: dict) -> list[list[str]]:
    """The arguments after `pip install` of every pip install in any setup command list."""
    lists = [config.get(key, []) for key in ("setup_commands", "head_setup_commands", "worker_setup_commands")]
    lists += [t.get("worker_setup_commands", []) for t in config["available_node_types"].values()]
    installs = []
    for command in (c for commands in lists for c in commands):
        for words in simple_commands(command):
            for i in range(len(words) - 1):
                if words[i].endswith("pip") and words[i + 1] == "install":
                    installs.append(words[i + 2:])
    return installs


def start_command(config: dict, needle: str) -> str:
    found = [c for c in config["head_start_ray_commands"] if needle in c]
    assert len(found) == 1, f"expected one head start command with {needle!r}, found {found}"
    return found[0]


@pytest.mark.parametrize("cloud", CONFIGS)
def test_ray_accepts_the_config(cloud):
    prepared = ray_validate(CONFIGS[cloud])
    assert prepared["provider"]["type"] == cloud
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


@pytest.mark.parametrize("breakage, error", [
    (lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=0), jsonschema.ValidationError),
    (lambda c: c.update(max_workers="4"), jsonschema.ValidationError),
    (lambda c: c.update(head_start_commands=[]), jsonschema.ValidationError),
    (lambda c: c["docker"].update(imag="rayproject/ray"), jsonschema.ValidationError),
    (lambda c: c.update(head_node_type="nonexistent"), ValueError),
    (lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=9), ValueError),
], ids=["misspelt-node-key", "string-count", "unknown-top-key", "misspelt-docker-key", "bad-head-type",
        "min-over-max"])
def test_ray_rejects_a_broken_copy(breakage, error):
    """The validator above is live: the same path refuses what `ray up` would refuse."""
    broken = copy.deepcopy(AWS)
    breakage(broken)
    with pytest.raises(error):
        ray_validate(broken)


def test_nothing_listens_on_all_interfaces():
    assert "0.0.0.0" not in TEXT


@pytest.mark.parametrize("cloud", CONFIGS)
def test_dashboard_is_bound_to_localhost(cloud):
    words = shlex.split(start_command(CONFIGS[cloud], "ray start --head"))
    hosts = [w.split("=", 1)[1] for w in words if w.startswith("--dashboard-host=")]
    hosts += [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--dashboard-host"]
    assert hosts == ["127.0.0.1"], "the dashboard (and job API) is reached through `ray dashboard` (SSH)"


@pytest.mark.parametrize("cloud", CONFIGS)
def test_mlflow_server_on_the_private_address_with_proxied_artifacts(cloud):
    config = CONFIGS[cloud]
    command = start_command(config, "mlflow server")
    host = re.search(r"--host\s+(\$\([^)]*\)|\S+)", command)
    assert host and host.group(1).startswith("$(hostname -I"), f"mlflow must bind the head's private address: {command}"
    assert re.search(r"--port[ =]5000\b", command)
    assert "--serve-artifacts" in command and "--no-serve-artifacts" not in command
    assert re.search(rf"--artifacts-destination[ =]{re.escape(BUCKET_SCHEME[cloud])}\S+", command)
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in command
    assert "nohup" in command and re.search(r"echo \$! > \S+\.pid", command), "started in the background, PID kept"
    # Its sqlite database sits in a directory the head's container bind-mounts from the host disk.
    store = re.search(r"--backend-store-uri[ =]sqlite:///(/\S+)/[^/\s]+\.db", command)
    assert store, command
    mounts = [o.split()[-1] for o in config["docker"].get("head_run_options", []) if o.startswith("-v ")]
    assert any(store.group(1) == m.split(":")[1] for m in mounts), (store.group(1), mounts)


@pytest.mark.parametrize("cloud", CONFIGS)
def test_gpu_workers_scale_from_zero(cloud):
    config = CONFIGS[cloud]
    assert config["idle_timeout_minutes"] > 0
    workers = worker_types(config)
    assert workers
    for name, node_type in workers.items():
        assert node_type["min_workers"] == 0, name
        assert node_type.get("max_workers", config["max_workers"]) >= 1, name
        if cloud != "aws":  # AWS fills resources in from the instance type; other clouds cannot
            assert node_type["resources"].get("GPU", 0) >= 1, name
    assert head_type(config)["resources"].get("GPU", 0) == 0, "trials ask for a GPU: none runs on the head"


@pytest.mark.parametrize("cloud", CONFIGS)
def test_setup_never_replaces_the_images_ray_or_torch(cloud):
    installs = pip_installs(CONFIGS[cloud])
    assert installs
    for args in installs:
        assert not {"-U", "--upgrade", "--force-reinstall", "-I", "--ignore-installed"} & set(args), args
        for arg in args:
            name = re.split(r"[\[<>=!~;@ ]", arg, maxsplit=1)[0].lower()
            assert name not in PINNED, f"setup installs {arg!r} itself: {args}"
    project = [args for args in installs if "-e" in args or "--editable" in args]
    assert len(project) == 1, installs
    args = project[0]
    if "--no-deps" in args:
        return
    flag = next((a for a in ("-c", "--constraint") if a in args), None)
    assert flag, f"the project install needs a constraint file (or --no-deps): {args}"
    constraints = args[args.index(flag) + 1]
    # The constraint file pins what is installed in the image, written before the install.
    writers = [c for c in CONFIGS[cloud]["setup_commands"] if f"> {constraints}" in c]
    assert writers, f"nothing writes {constraints}"
    assert re.search(r"pip (list --format=freeze|freeze)", writers[0])
    assert all(package in writers[0] for package in PINNED), writers[0]


def test_the_image_runs_the_ray_installed_here():
    """`ray up` and `ray job submit` run from this environment: the cluster must run the same Ray."""
    image = AWS["docker"]["image"]
    tag = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3\d+-(gpu|cu\d+)", image)
    assert tag, f"expected a rayproject/ray CUDA image with a pinned Ray version, got {image}"
    assert tag.group(1) == ray.__version__, f"cluster.yaml runs Ray {tag.group(1)}, this environment {ray.__version__}"


def test_storage_and_worker_credentials():
    assert "SWEEPER_STORAGE=s3://<bucket>/sweeps" in TEXT and "SWEEPER_STORAGE=gs://<bucket>/sweeps" in TEXT
    for name, node_type in worker_types(AWS).items():
        assert "IamInstanceProfile" in node_type["node_config"], f"{name}: workers need S3 access to the bucket"
    for name, node_type in worker_types(CONFIGS["gcp"]).items():
        assert node_type["node_config"].get("serviceAccounts"), f"{name}: workers need access to the bucket"


def test_placeholders_say_how_to_fill_them():
    assert "REPLACE" in AWS["available_node_types"]["head"]["node_config"]["ImageId"]
    assert "aws ec2 describe-images" in TEXT
    assert "gcloud compute images list" in TEXT
