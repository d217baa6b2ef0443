"""cluster.yaml, checked offline the way `ray up` checks it before it touches a cloud (Ray's own
defaults and validator: `prepare_config` then `validate_config` against ray/autoscaler/ray-schema.json,
as in ray.autoscaler._private.commands._bootstrap_config), plus the properties a sweep on the cluster
relies on. The commented GCP variant at the end of the file is uncommented, laid over the AWS config
(it replaces the top-level sections it names) and checked the same way. No network, no cloud."""
import configparser
import copy
import ipaddress
import json
import re
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"
README = CLUSTER_YAML.parent / "README.md"
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


def start_command(config: dict, needle: str, key: str = "head_start_ray_commands") -> str:
    found = [c for c in config[key] if needle in c]
    assert len(found) == 1, f"expected one {key} command with {needle!r}, found {found}"
    return found[0]


def all_commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [c for key in keys for c in config.get(key, [])]


# NAME=value words (a value in double quotes may hold $(...) with spaces and single quotes).
ASSIGNMENT = re.compile(r'\b([A-Z_][A-Z0-9_]*)=("[^"]*"|\S+)')
SECRET_FILE = re.compile(r'"\$\(cat (\S+)\)"')
LISTEN_FLAG = re.compile(r"--([\w-]*host)[ =](\$\([^)]*\)|\S+)")
ALL_INTERFACES = {"0.0.0.0", "::", "[::]", "*", "''", '""'}


def environment_of(command: str, program: str) -> dict[str, str]:
    """The NAME=value assignments that prefix `program` in `command` (its environment, unexpanded)."""
    head, sep, _ = command.partition(program)
    assert sep, f"{program!r} not in {command}"
    prefix = re.search(r"((?:[A-Z_][A-Z0-9_]*=(?:\"[^\"]*\"|\S+)\s+)*)(?:setsid\s+)?(?:nohup\s+)?$", head)
    return dict(ASSIGNMENT.findall(prefix.group(1)))


def mlflow_server_words(config: dict) -> list[str]:
    """The arguments of the head's `mlflow server`, up to its output redirection."""
    command = start_command(config, "mlflow server")
    return command.split("mlflow server", 1)[1].split(">", 1)[0].split()


def mlflow_auth_ini(config: dict) -> tuple[str, configparser.ConfigParser]:
    """(its path, its contents) of the auth config the head's mlflow command writes, by running the
    command's own printf."""
    command = start_command(config, "mlflow server")
    written = re.search(r"(printf '[^']*')\s*>\s*(\S+);", command)
    assert written, f"the mlflow command writes no auth config with printf: {command}"
    text = subprocess.run(["bash", "-c", written.group(1)], capture_output=True, text=True, check=True).stdout
    ini = configparser.ConfigParser()
    ini.read_string(text)
    return written.group(2), ini


def readme_secret_command() -> str:
    """The README's line that creates the MLflow password file."""
    lines = [line for line in README.read_text().splitlines() if "openssl rand" in line]
    assert len(lines) == 1, f"README: expected one command creating the MLflow password, found {lines}"
    return lines[0]


def synced_from(config: dict, remote_file: str) -> str | None:
    """The local path that file_mounts copies to `remote_file` on every node (None: none does)."""
    for remote, local in config["file_mounts"].items():
        if remote_file == remote or remote_file.startswith(remote.rstrip("/") + "/"):
            return local.rstrip("/") + remote_file[len(remote.rstrip("/")):] if local != "." else None
    return None


def listen_problems(config: dict) -> list[str]:
    """Every --*host flag in any command that listens on all interfaces, and an mlflow server whose
    --host is not the head's own address."""
    problems = [f"{flag}={value}" for command in all_commands(config)
                for flag, value in LISTEN_FLAG.findall(command) if value.strip("'\"") in ALL_INTERFACES | {""}]
    words = mlflow_server_words(config)
    host = re.search(r"--host[ =](\$\([^)]*\)|\S+)", start_command(config, "mlflow server"))
    if not host or not host.group(1).startswith("$(hostname -I"):
        problems.append(f"mlflow server --host: {host.group(1) if host else 'absent'} ({' '.join(words)})")
    return problems


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


@pytest.mark.parametrize("cloud", CONFIGS)
def test_nothing_listens_on_all_interfaces(cloud):
    config = CONFIGS[cloud]
    assert listen_problems(config) == []
    # The same check finds a server opened to everyone.
    broken = copy.deepcopy(config)
    broken["head_start_ray_commands"] = [c.replace("$(hostname -I | awk '{print $1}') --port", "0.0.0.0 --port")
                                         for c in config["head_start_ray_commands"]]
    problems = listen_problems(broken)
    assert len(problems) == 2 and all("host" in p and "0.0.0.0" in p for p in problems), problems


def test_the_mlflow_host_expression_is_one_address_of_this_machine():
    """Run here, the --host expression gives one address this machine can bind, neither loopback
    (workers could not reach it) nor a wildcard."""
    if not shutil.which("hostname") or subprocess.run(["hostname", "-I"], capture_output=True).returncode:
        pytest.skip("no `hostname -I` here (Linux's net-tools/inetutils)")
    expression = re.search(r"--host\s+(\$\([^)]*\))", start_command(AWS, "mlflow server")).group(1)
    value = subprocess.run(["bash", "-c", f"echo {expression}"], capture_output=True, text=True, check=True).stdout
    address = ipaddress.ip_address(value.strip())
    assert not (address.is_unspecified or address.is_loopback), address
    with socket.socket(socket.AF_INET6 if address.version == 6 else socket.AF_INET) as s:
        s.bind((str(address), 0))  # only an address of one of this machine's interfaces binds


@pytest.mark.parametrize("cloud", CONFIGS)
def test_mlflow_server_asks_for_a_password(cloud):
    config = CONFIGS[cloud]
    words = mlflow_server_words(config)
    assert "--app-name" in words and words[words.index("--app-name") + 1] == "basic-auth", words
    env = environment_of(start_command(config, "mlflow server"), "mlflow server")
    path, ini = mlflow_auth_ini(config)
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == path, (env, path)
    assert "admin_password" not in ini["mlflow"], "the password comes from the secret file, never the ini"
    assert ini["mlflow"]["default_permission"] in {"READ", "NO_PERMISSIONS"}
    # The users' database sits on the head's bind-mounted disk, beside the runs' database.
    users_db = re.fullmatch(r"sqlite:///(/\S+)/[^/]+\.db", ini["mlflow"]["database_uri"])
    mounts = [o.split()[-1].split(":")[1] for o in config["docker"].get("head_run_options", []) if o.startswith("-v ")]
    assert users_db and users_db.group(1) in mounts, (ini["mlflow"]["database_uri"], mounts)
    assert SECRET_FILE.fullmatch(env["MLFLOW_AUTH_ADMIN_PASSWORD"]), env
    assert env.get("MLFLOW_FLASK_SERVER_SECRET_KEY", "").startswith('"$('), "a static Flask key, generated"
    head_packages = [re.split(r"[<>=!~; ]", a)[0].lower() for args in pip_installs(
        {"available_node_types": {}, "head_setup_commands": config["head_setup_commands"]}) for a in args]
    assert {"mlflow[auth]", "flask-wtf"} & set(head_packages), f"the basic-auth app needs Flask-WTF: {head_packages}"


@pytest.mark.parametrize("cloud", CONFIGS)
def test_every_node_authenticates_with_the_synced_secret(cloud):
    """The server's admin and every node's Ray (so the driver and each trial) share one user and one
    password file; that file is synced by file_mounts from the one the README's command creates."""
    config = CONFIGS[cloud]
    _, ini = mlflow_auth_ini(config)
    server_secret = SECRET_FILE.fullmatch(environment_of(start_command(config, "mlflow server"), "mlflow server")
                                          ["MLFLOW_AUTH_ADMIN_PASSWORD"]).group(1)
    created = re.search(r"openssl rand [^>]*> (\S+?)\)?$", readme_secret_command().strip()).group(1)
    assert synced_from(config, server_secret) == created, (server_secret, created, config["file_mounts"])
    for key, needle in (("head_start_ray_commands", "ray start --head"), ("worker_start_ray_commands", "ray start")):
        env = environment_of(start_command(config, needle, key), "ray start")
        assert env.get("MLFLOW_TRACKING_USERNAME") == ini["mlflow"]["admin_username"], (key, env)
        password = SECRET_FILE.fullmatch(env.get("MLFLOW_TRACKING_PASSWORD", ""))
        assert password and password.group(1) == server_secret, (key, env)


@pytest.mark.parametrize("cloud", CONFIGS)
def test_no_literal_secret_in_any_command(cloud):
    for command in all_commands(CONFIGS[cloud]):
        for name, value in ASSIGNMENT.findall(command):
            if re.search(r"PASSWORD|SECRET|TOKEN", name):
                assert value.startswith('"$('), f"{name} is given a literal value in cluster.yaml: {command}"


def test_the_readme_job_keeps_credentials_out_of_its_runtime_env():
    """The job's runtime env (stored in the job table, shown by the dashboard) names the storage and
    the server, in the bucket of the server's artifacts, and no credential."""
    submit = re.search(r"ray job submit .*?--runtime-env-json '([^']*)'", README.read_text(), re.S)
    env_vars = json.loads(submit.group(1))["env_vars"]
    assert not {k for k in env_vars if re.search(r"PASSWORD|USERNAME|SECRET|TOKEN", k)}, env_vars
    artifacts = re.search(r"--artifacts-destination[ =](\w+://[^/\s]+)/", start_command(AWS, "mlflow server"))
    assert env_vars["SWEEPER_STORAGE"].startswith(artifacts.group(1) + "/"), (env_vars, artifacts.group(1))
    assert env_vars["MLFLOW_TRACKING_URI"].endswith(":5000")


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


def test_workers_reach_the_bucket():
    for name, node_type in worker_types(AWS).items():
        assert "IamInstanceProfile" in node_type["node_config"], f"{name}: workers need S3 access to the bucket"
    for name, node_type in worker_types(CONFIGS["gcp"]).items():
        assert node_type["node_config"].get("serviceAccounts"), f"{name}: workers need access to the bucket"


def _values(node) -> list[str]:
    if isinstance(node, dict):
        return [v for value in node.values() for v in _values(value)]
    if isinstance(node, list):
        return [v for value in node for v in _values(value)]
    return [node] if isinstance(node, str) else []


@pytest.mark.parametrize("cloud", CONFIGS)
def test_placeholders_cannot_pass_for_real_values(cloud):
    """An unfilled placeholder fails at the cloud (not a valid AMI id or bucket name) instead of
    launching or writing somewhere else."""
    config = CONFIGS[cloud]
    values = _values(config)
    placeholders = {p for v in values for p in re.findall(r"<[a-z-]+>|ami-REPLACE[\w-]*", v)}
    assert "<bucket>" in placeholders, placeholders
    if cloud == "aws":
        image = config["available_node_types"]["head"]["node_config"]["ImageId"]
        assert not re.fullmatch(r"ami-[0-9a-f]{8}(?:[0-9a-f]{9})?", image), f"a real AMI id is committed: {image}"
    for command in all_commands(config):
        for bucket in re.findall(r"\b(?:s3|gs)://([^/\s]+)", command):
            assert bucket == "<bucket>", f"a real bucket is committed: {bucket}"
