"""Named remote datasets against a real local HTTP server: download, verify, extract, cache."""

import hashlib
import io
import logging
import pickle
import tarfile
import threading
import time
import zipfile
from collections import OrderedDict
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.data import remote
from trainables.data.imageset import DatasetError
from trainables.data.remote import RemoteDataset, RemoteFile, fetch, register, resolve_name

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Server:
    """Serves `root` on 127.0.0.1 and records every requested path; `on_request(path)`, where set,
    runs in the handler before the answer (a test can hold a download there)."""

    def __init__(self, root: Path):
        self.root, self.requests, self.on_request = root, [], None
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                server.requests.append(self.path)
                if server.on_request is not None:
                    server.on_request(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path):
    (tmp_path / "www").mkdir()
    s = Server(tmp_path / "www")
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _online(tmp_path, monkeypatch):
    # Each test gets its own cache and registry; downloads are allowed (from 127.0.0.1 only).
    monkeypatch.setenv("SWEEPER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SWEEPER_OFFLINE", "0")
    monkeypatch.delenv("SWEEPER_DATA_MIRROR", raising=False)
    monkeypatch.setattr(remote, "REGISTRY", dict(remote.REGISTRY))


def png_bytes(rng) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def cat_dog_files(seed=0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {f"cats/train/{c}/{i}.png": png_bytes(rng) for c in ("cat", "dog") for i in range(3)}


def write_archive(path: Path, files: dict[str, bytes]) -> str:
    """Write a .zip or .tar.gz holding `files`; return its sha256."""
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz") as t:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cache_leftovers(tmp_path) -> list[str]:
    """Everything under the cache except lock files."""
    cache = tmp_path / "cache"
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock")


def serve_cats(server, tmp_path, archive="cats.tar.gz", name="cats", **kw) -> tuple[RemoteDataset, dict]:
    files = cat_dog_files()
    digest = write_archive(server.root / archive, files)
    kw.setdefault("root", "cats/train")
    dataset = register(RemoteDataset(name, (RemoteFile(f"{server.url}/{archive}", digest),), **kw))
    return dataset, {k[len("cats/train/"):]: v for k, v in files.items()}


@pytest.mark.parametrize("archive", ["cats.tar.gz", "cats.zip"])
def test_fetch_extracts_then_reuses_the_cache_without_network(server, tmp_path, monkeypatch, archive):
    dataset, expected = serve_cats(server, tmp_path, archive)
    folder = fetch(dataset)
    assert folder == tmp_path / "cache" / "datasets" / "cats" / "extracted" / "cats" / "train"
    assert sorted(p.name for p in folder.iterdir()) == ["cat", "dog"]
    assert files_under(folder) == expected
    assert server.requests == [f"/{archive}"]
    assert cache_leftovers(tmp_path) == [f"datasets/cats/extracted/cats/train/{k}" for k in sorted(expected)]

    server.stop()
    assert fetch(dataset) == folder
    monkeypatch.setenv("SWEEPER_OFFLINE", "1")
    assert fetch(dataset) == folder
    assert len(server.requests) == 1


def test_several_archives_merge_into_one_tree(server, tmp_path):
    files = cat_dog_files()
    part1 = {k: v for k, v in files.items() if "/cat/" in k}
    part2 = {k: v for k, v in files.items() if "/dog/" in k}
    urls = [f"{server.url}/part1.tar.gz", f"{server.url}/part2.zip"]
    digests = [write_archive(server.root / "part1.tar.gz", part1), write_archive(server.root / "part2.zip", part2)]
    dataset = register(RemoteDataset("parts", tuple(map(RemoteFile, urls, digests))))
    folder = fetch(dataset)
    assert files_under(folder) == files


def test_checksum_mismatch_raises_and_leaves_nothing(server, tmp_path):
    dataset, _ = serve_cats(server, tmp_path)
    register(bad := RemoteDataset("cats", (RemoteFile(dataset.files[0].url, "0" * 64),), root="cats/train"))
    with pytest.raises(DatasetError, match=r"cats: checksum mismatch for cats.tar.gz: expected 0{64}, got [0-9a-f]{64}"):
        fetch(bad)
    assert not (tmp_path / "cache" / "datasets" / "cats").exists()
    assert cache_leftovers(tmp_path) == []


def test_offline_without_a_cached_copy_says_how_to_get_it(server, tmp_path, monkeypatch):
    dataset, _ = serve_cats(server, tmp_path)
    monkeypatch.setenv("SWEEPER_OFFLINE", "1")
    with pytest.raises(DatasetError, match="SWEEPER_OFFLINE") as error:
        fetch(dataset)
    assert dataset.files[0].url in str(error.value) and "\n" not in str(error.value)
    assert server.requests == []
    with pytest.raises(DatasetError, match=r"afhq is not in the cache .*https://www\.dropbox\.com/s/t9l9o3vsx2jai3z"):
        fetch(remote.REGISTRY["afhq"])
    assert not (tmp_path / "cache").exists()


def test_http_404_and_a_dead_host_name_the_url(server, tmp_path):
    missing = register(RemoteDataset("missing", (RemoteFile(f"{server.url}/nope.tar.gz", "0" * 64),)))
    with pytest.raises(DatasetError, match=f"HTTP 404 .*{server.url}/nope.tar.gz"):
        fetch(missing)
    dead = register(RemoteDataset("dead", (RemoteFile("http://127.0.0.1:9/x.tar.gz", "0" * 64),)))
    with pytest.raises(DatasetError, match="download failed for http://127.0.0.1:9/x.tar.gz"):
        fetch(dead)
    assert cache_leftovers(tmp_path) == []
    assert sorted(p.name for p in (tmp_path / "cache" / "datasets").iterdir()) == ["dead.lock", "missing.lock"]


def test_mirror_replaces_every_url(server, tmp_path, monkeypatch):
    (server.root / "mirror").mkdir()
    served, expected = serve_cats(server, tmp_path, archive="mirror/cats.tar.gz")
    dead_url = "http://127.0.0.1:9/cats.tar.gz?dl=1"
    dataset = register(RemoteDataset("cats", (RemoteFile(dead_url, served.files[0].sha256),), root="cats/train"))
    monkeypatch.setenv("SWEEPER_DATA_MIRROR", f"{server.url}/mirror")  # no trailing slash
    assert files_under(fetch(dataset)) == expected
    assert server.requests == ["/mirror/cats.tar.gz"]


def test_unpinned_file_is_trusted_on_first_use_then_verified(server, tmp_path, caplog):
    write_archive(server.root / "cats.tar.gz", cat_dog_files())
    original = (server.root / "cats.tar.gz").read_bytes()
    digest = hashlib.sha256(original).hexdigest()
    dataset = register(RemoteDataset("cats", (RemoteFile(f"{server.url}/cats.tar.gz", None),), root="cats/train"))
    home = tmp_path / "cache" / "datasets" / "cats"

    with caplog.at_level(logging.WARNING, logger="trainables.data.remote"):
        folder = fetch(dataset)
    assert digest in caplog.text and "no pinned sha256" in caplog.text
    assert (home / "cats.tar.gz.sha256").read_text().strip() == digest
    assert not (home / "cats.tar.gz").exists()

    write_archive(server.root / "cats.tar.gz", cat_dog_files(seed=1))  # upstream changes under us
    remote.shutil.rmtree(home / "extracted")
    with pytest.raises(DatasetError, match=f"checksum mismatch for cats.tar.gz: expected {digest}, got .*recorded"):
        fetch(dataset)
    assert (home / "cats.tar.gz.sha256").read_text().strip() == digest
    assert cache_leftovers(tmp_path) == ["datasets/cats/cats.tar.gz.sha256"]

    (server.root / "cats.tar.gz").write_bytes(original)
    assert fetch(dataset) == folder and len(server.requests) == 3


def test_cifar10_python_batches_become_png_folders(server, tmp_path):
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
                         b"labels": [int(x) for x in rng.integers(0, 10, 3)], b"batch_label": name.encode()}
    meta = {b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}
    # Like the real files: protocol 2, arrays referenced through numpy.core (numpy 1.x, Python 2).
    members = {f"cifar-10-batches-py/{k}": pickle.dumps(v, protocol=2).replace(b"numpy._core.", b"numpy.core.")
               for k, v in {**batches, "batches.meta": meta}.items()}
    digest = write_archive(server.root / "cifar-10-python.tar.gz", members)
    dataset = register(RemoteDataset("tiny-cifar", (RemoteFile(f"{server.url}/cifar-10-python.tar.gz", digest),),
                                     layout="cifar10-python"))

    folder = fetch(dataset)
    assert folder == tmp_path / "cache" / "datasets" / "tiny-cifar" / "images" / "train"
    assert sorted(p.name for p in folder.iterdir()) == sorted(CIFAR_CLASSES)
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        pngs = sorted((folder.parent / split).rglob("*.png"), key=lambda p: p.name)
        assert len(pngs) == 3 * len(names)
        index = 0
        for name in names:
            for row, label in zip(batches[name][b"data"], batches[name][b"labels"]):
                path = folder.parent / split / CIFAR_CLASSES[label] / f"{index:05d}.png"
                assert np.array_equal(np.asarray(Image.open(path)), row.reshape(3, 32, 32).transpose(1, 2, 0))
                index += 1
    assert cache_leftovers(tmp_path) == sorted(f"datasets/tiny-cifar/images/{p.parent.parent.name}/{p.parent.name}/{p.name}"
                                               for p in folder.parent.rglob("*.png"))


def test_cifar_pickles_may_only_hold_arrays(server, tmp_path):
    members = {"cifar-10-batches-py/batches.meta": pickle.dumps({b"label_names": OrderedDict()})}
    digest = write_archive(server.root / "evil.tar.gz", members)
    dataset = register(RemoteDataset("evil", (RemoteFile(f"{server.url}/evil.tar.gz", digest),), layout="cifar10-python"))
    with pytest.raises(DatasetError, match="evil: cannot read CIFAR batch batches.meta: refusing collections.OrderedDict"):
        fetch(dataset)
    assert cache_leftovers(tmp_path) == []


def test_archive_escaping_its_folder_is_refused(server, tmp_path):
    digest = write_archive(server.root / "escape.tar.gz", {"../escaped.txt": b"x"})
    dataset = register(RemoteDataset("escape", (RemoteFile(f"{server.url}/escape.tar.gz", digest),)))
    with pytest.raises(DatasetError, match="escape: cannot extract escape.tar.gz"):
        fetch(dataset)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert cache_leftovers(tmp_path) == []


def test_missing_root_folder_is_an_error(server, tmp_path):
    dataset, _ = serve_cats(server, tmp_path, root="cats/val")
    with pytest.raises(DatasetError, match="cats: the downloaded archives hold no folder 'cats/val'"):
        fetch(dataset)
    assert cache_leftovers(tmp_path) == []


def test_concurrent_fetches_download_once(server, tmp_path, monkeypatch):
    # The overlap is forced, not left to timing: the server holds the first fetch's download (made
    # under the dataset's lock) until the second fetch has started and is waiting on that lock.
    dataset, expected = serve_cats(server, tmp_path)
    first_downloading, second_at_lock, release = threading.Event(), threading.Event(), threading.Event()

    def hold_the_first_download(path):
        if not first_downloading.is_set():
            first_downloading.set()
            release.wait(timeout=60)

    server.on_request = hold_the_first_download
    real_acquire = remote.FileLock.acquire

    def acquire(self, *args, **kwargs):  # a spy that passes through: the lock is filelock's own
        if threading.current_thread().name == "second":
            second_at_lock.set()
        return real_acquire(self, *args, **kwargs)

    monkeypatch.setattr(remote.FileLock, "acquire", acquire)
    results = {}

    def run():
        results[threading.current_thread().name] = fetch(dataset)

    first, second = threading.Thread(target=run, name="first"), threading.Thread(target=run, name="second")
    first.start()
    try:
        downloading = first_downloading.wait(timeout=30)
        if downloading:
            second.start()
        waited = second_at_lock.wait(timeout=10)
        time.sleep(0.2)  # it stays there: the lock is held by the first, whose download is held
        second_blocked = second.is_alive() and "second" not in results
    finally:
        release.set()
        first.join(timeout=60)
        if second.ident is not None:
            second.join(timeout=60)
    assert server.requests == ["/cats.tar.gz"]  # one download for both fetches
    assert downloading and waited and second_blocked  # and they did overlap
    assert results.keys() == {"first", "second"} and results["first"] == results["second"]
    assert files_under(results["first"]) == expected


def test_resolve_name():
    registry = remote.REGISTRY
    assert resolve_name("afhq-cat") == (registry["afhq"], "cat")
    assert resolve_name("afhq-dog") == (registry["afhq"], "dog")
    assert resolve_name("afhq") == (registry["afhq"], None)
    assert resolve_name("cifar10") == (registry["cifar10"], None)
    assert resolve_name("cifar10:dog") == (registry["cifar10"], "dog")
    assert resolve_name("cat-faces-64") == (registry["cat-faces-64"], None)
    for other in ("/some/path", "toy-faces", "toy-faces:cat", "C:\\photos", "afhq-cat:x", ""):
        assert resolve_name(other) is None
    mine = register(RemoteDataset("mine", (RemoteFile("http://example.invalid/m.zip", None),)))
    assert resolve_name("mine:cls") == (mine, "cls")


def test_builtin_entries_and_register_validation():
    registry = remote.REGISTRY
    cats = registry["cat-faces-64"]
    assert [f.name for f in cats.files] == [f"dataset-part{i}.tar.gz" for i in (1, 2, 3)]
    assert all(f.sha256 is None for f in cats.files)
    assert registry["afhq"].files[0].name == "afhq.zip" and registry["afhq"].root == "afhq/train"
    assert registry["cifar10"].layout == "cifar10-python" and len(registry["cifar10"].files[0].sha256) == 64
    for bad in ("", "a:b", "a/b", ".hidden"):
        with pytest.raises(DatasetError, match="bad dataset name"):
            register(RemoteDataset(bad, ()))
    with pytest.raises(DatasetError, match="unknown layout"):
        register(RemoteDataset("x", (), layout="mnist"))
