"""Scale-out benchmark: harken on Ray Serve with one and two replicas (one core each), against
plain `harken serve` with one core, at 16 clients on the same clips in the same run.

A local two-node Ray cluster (`ray.cluster_utils.Cluster`, one CPU per node, as in
tests/test_ray_serve.py) runs the replicas; every request goes through Ray's HTTP proxy. The
plain server gets the settings a one-core replica gets (`replica_settings`: one CTranslate2
thread, one worker). Neither is pinned to a core: Ray's `num_cpus` is a reservation, not a
pinning, so the plain server is left the same freedom. Prints throughput (audio seconds per
wall second), p50/p95 latency, errors, 429s, WER, the cores the server kept busy (replicas
and Ray's proxy) and the audio done per CPU second, and the ratios the issue asks for: two
replicas over one (near-linear: ≥ 1.8), and one replica over the plain server (the proxy's cost:
≥ 0.9); plus the cluster's start-up time and each replica's peak RSS.

    .venv/bin/python benchmarks/scale.py                     # tiny.en, 16 clients, 64 requests
    .venv/bin/python benchmarks/scale.py --model whisper-base --requests 48

Needs the `ray` extra. Timings on a shared machine are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import wait_healthy  # noqa: E402
from load import Server, percentile, pick_clips, run_level  # noqa: E402


def ray_pids(title_prefix: bytes) -> list[int]:
    """The local cluster's processes whose titles start so (Ray names them by their actor)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(title_prefix):
                pids.append(int(entry.name))
    return pids


def proc_status(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RayDeployment:
    """The shape `load.run_level` measures: a URL, CPU seconds used, peak RSS (per replica)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.replicas = ray_pids(b"ray::ServeReplica:harken")
        self.proxies = ray_pids(b"ray::ProxyActor")

    def cpu_seconds(self) -> float:
        """The replicas' CPU time and the proxy's: what serving through Ray costs."""
        return sum(proc_cpu_seconds(pid) for pid in self.replicas + self.proxies)

    def peak_rss_mb(self) -> float:
        return max(proc_status(pid, "VmHWM") for pid in self.replicas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64, help="per configuration")
    parser.add_argument("--cap", type=float, default=300.0, help="seconds per configuration")
    parser.add_argument("--max-clip-seconds", type=float, default=30.0)
    parser.add_argument("--home", type=Path, default=Path.home() / ".cache" / "harken")
    args = parser.parse_args()

    from ray import serve

    from harken.api.ray_serve import (
        APP_NAME,
        harken_application,
        replica_settings,
    )
    from harken.config import Settings
    from tests.ray_cluster import two_node_serve

    clips = pick_clips(args.max_clip_seconds, "en")
    print(
        f"{len(clips)} clips, {sum(c.duration for c in clips):.1f} s of audio; model "
        f"{args.model}, {args.clients} clients, {args.requests} requests per configuration, "
        f"cpus {os.cpu_count()}",
        flush=True,
    )
    settings = Settings(home=args.home, default_model=args.model, preload=[args.model])
    one_core = replica_settings(settings.model_copy(update={"ray_cpus_per_replica": 1}))
    results: list[tuple[str, dict[str, Any]]] = []

    def measure(label: str, target: Any) -> None:
        r = run_level(target, args.model, clips, args.clients, args.requests, args.cap)
        results.append((label, r))
        print(f"{label}: {r['audio'] / r['wall']:.2f} audio-s/s", flush=True)

    # Plain harken serve, one core's settings.
    plain_config = {
        "cpu_threads": str(one_core.cpu_threads),
        "workers": str(one_core.workers),
        "threads_per_worker": str(one_core.threads_per_worker),
    }
    server = Server(args.model, args.home, plain_config)
    try:
        measure("plain harken serve, 1 core", server)
    finally:
        server.stop()

    started = time.perf_counter()
    startup: dict[str, float] = {}
    with two_node_serve() as url:
        startup["cluster (2 nodes) + Serve"] = time.perf_counter() - started
        for replicas in (1, 2):
            t0 = time.perf_counter()
            config = settings.model_copy(
                update={"ray_replicas": replicas, "ray_cpus_per_replica": 1}
            )
            serve.run(harken_application(config), name=APP_NAME, route_prefix="/")
            wait_healthy(url, lambda: True, timeout=300)
            startup[f"deploy {replicas} replica(s), models loaded"] = time.perf_counter() - t0
            measure(f"Ray Serve, {replicas} replica(s) × 1 core", RayDeployment(url))

    def tput(r: dict[str, Any]) -> float:
        return float(r["audio"] / r["wall"])

    def per_cpu(r: dict[str, Any]) -> float:
        """Audio seconds per CPU second used: the cost, whatever share of the cores others left."""
        return tput(r) / r["busy"]

    header = (
        "| configuration | clients | requests | throughput (audio-s/s) | p50 s | p95 s "
        "| errors | 429s | WER | cores busy | audio-s per CPU-s | peak RSS MB (per replica) |"
    )
    print()
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for label, r in results:
        print(
            f"| {label} | {r['clients']} | {r['requests']} | {tput(r):.2f} "
            f"| {percentile(r['latencies'], 0.5):.2f} | {percentile(r['latencies'], 0.95):.2f} "
            f"| {r['errors']} | {r['rejected']} | {r['wer']:.3f} | {r['busy']:.2f} "
            f"| {per_cpu(r):.2f} | {r['rss']:.0f} |"
        )
    plain, one, two = (r for _, r in results)
    print()
    print(f"2 replicas / 1 replica: {tput(two) / tput(one):.2f} (target ≥ 1.8)")
    print(f"1 replica / plain harken serve (Ray's proxy cost): {tput(one) / tput(plain):.2f}"
          " (target ≥ 0.90)")  # fmt: skip
    print(f"the same per CPU second (proxy included): {per_cpu(one) / per_cpu(plain):.2f}")
    print(f"cores busy, 2 replicas / 1 replica: {two['busy'] / one['busy']:.2f}")
    for what, seconds in startup.items():
        print(f"start-up, {what}: {seconds:.1f} s")


if __name__ == "__main__":
    main()
