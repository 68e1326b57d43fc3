"""A local two-node Ray cluster with Serve started, for the Ray tests and benchmarks/scale.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import ray
from ray import serve
from ray.cluster_utils import Cluster

from harken.api.ray_serve import CONTROLLER_OPTIONS
from tests.conftest import free_port


@contextlib.contextmanager
def two_node_serve() -> Iterator[str]:
    """Two nodes of one CPU each; Serve's proxy on a free loopback port. Yields its URL, and
    leaves no Ray process or temporary folder behind."""
    temp = tempfile.mkdtemp(prefix="harken-ray-")  # Ray's sockets and logs, removed after
    # The cluster also writes its address into the default temporary folder (`$RAY_TMPDIR/ray`,
    # whatever `temp_dir` says), and fails where that folder does not exist (a fresh machine).
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp
    os.makedirs(os.path.join(temp, "ray"))
    try:
        nodes = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "temp_dir": temp, "include_dashboard": False},
        )
    except BaseException:
        _restore(previous)
        shutil.rmtree(temp, ignore_errors=True)
        raise
    try:
        nodes.add_node(num_cpus=1)
        ray.init(address=nodes.address, logging_level="warning")
        port = free_port()
        serve.start(
            proxy_location="HeadOnly",
            http_options={"host": "127.0.0.1", "port": port},
            controller_options=CONTROLLER_OPTIONS,
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(Exception):  # a cluster that failed to start has no Serve
            serve.shutdown()
        ray.shutdown()
        nodes.shutdown()
        _restore(previous)
        shutil.rmtree(temp, ignore_errors=True)


def _restore(ray_tmpdir: str | None) -> None:
    if ray_tmpdir is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = ray_tmpdir
