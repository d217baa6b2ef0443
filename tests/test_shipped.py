"""Driver-only files reach a trial through the object store, never by the driver's path."""
import hashlib

import pytest
import ray

from sweeper.kinds.shipped import ship


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=1, include_dashboard=False, address="local")
    yield
    ray.shutdown()


def test_a_shipped_file_lands_in_the_nodes_own_cache_by_content_hash(ray_local, tmp_path):
    source = tmp_path / "driver-only" / "weights.pth"
    source.parent.mkdir()
    source.write_bytes(b"weights" * 1000)
    shipped = ship(source)
    node_cache = tmp_path / "node-cache"

    @ray.remote(runtime_env={"env_vars": {"SWEEPER_CACHE": str(node_cache)}})
    def on_a_node(shipped_file):
        path = shipped_file.local_path()
        return path, open(path, "rb").read()

    source.unlink()  # the driver's copy is gone: the node must not need it
    path, content = ray.get(on_a_node.remote(shipped))
    assert path.startswith(str(node_cache)) and path.endswith(".pth")
    assert content == b"weights" * 1000 and hashlib.sha256(content).hexdigest() == shipped.sha256
    assert ship(None) is None
