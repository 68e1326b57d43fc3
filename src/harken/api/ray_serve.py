"""harken on Ray Serve: the whole app as the ingress deployment, N replicas behind Ray's proxy.

Each replica is one `create_app(settings)`: its own models, scheduler and batcher, on
`ray_cpus_per_replica` cores that CTranslate2's threads match exactly (Ray reserves the cores;
harken must not start more threads than that). Ray's proxy sends each request to the less busy
of two replicas it samples, autoscales on ongoing requests, and replaces a replica whose process
dies. Three ways in, one deployment:

- `harken serve --ray` (`serve_on_ray`): connects to `ray_address` or starts a local cluster;
- `serve run` / `serve deploy` with a Serve config whose `import_path` is
  `harken.api.ray_serve:build_app` (its `args` are harken settings, as in a TOML file);
- `serve.run(harken_application(settings))` from Python (the tests).

Needs the `ray` extra (`pip install 'harken[ray]'`); nothing else in harken imports this module.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve.deployment import Application
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from harken.api.app import create_app
from harken.config import Settings
from harken.service.memory import keep_freed_memory

log = logging.getLogger(__name__)

APP_NAME = "harken"
REPLICA_HEADER = "x-harken-replica"
# The environment of Serve's controller, which its proxies inherit (Ray reads both at start):
PROXY_ENV = {
    # The proxy's middleware: Ray's own refusals in the contract's error body (api/ray_proxy).
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "harken.api.ray_proxy:proxy_middlewares",
    # A proxy sends every request to a replica on its own node until that one is full, and a
    # harken replica takes its whole queue: the other nodes would idle. Route by queue length
    # over all replicas instead (an upload is small beside the CPU time it costs).
    "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",
}
CONTROLLER_OPTIONS = {"runtime_env": {"env_vars": PROXY_ENV}}
# Requests a replica takes beyond its decode slots and queue: /health, /metrics, /v1/models and
# the refusals themselves, so that harken (not Ray) is the one that answers "full" with a 429.
_LIGHT_REQUESTS = 16


def replica_settings(settings: Settings) -> Settings:
    """The settings one replica runs with: CTranslate2 threads = the replica's cores, never more.

    Keys from `api_keys_file` travel as values: the file need not exist on every node."""
    cpus = settings.ray_cpus_per_replica
    workers = min(settings.workers, cpus)
    return settings.model_copy(
        update={
            "cpu_threads": cpus,
            "workers": workers,
            "threads_per_worker": cpus // workers,
            "api_keys": settings.all_api_keys(),
            "api_keys_file": None,
        }
    )


def deployment_options(settings: Settings) -> dict[str, Any]:
    """Ray's deployment options from harken's settings (`HARKEN_RAY_*`)."""
    replica = replica_settings(settings)
    # A replica takes as much as its own scheduler admits (decoding + queued), so an overloaded
    # replica answers 429 itself; Ray's router then holds at most `max_queue` more, and past that
    # its own refusal is turned into the same 429 by the proxy middleware.
    capacity = replica.active_jobs + replica.max_queue
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": settings.ray_cpus_per_replica},
        "max_ongoing_requests": capacity + _LIGHT_REQUESTS,
        "max_queued_requests": max(1, replica.max_queue),
        "graceful_shutdown_timeout_s": settings.shutdown_grace_seconds,
    }
    if settings.ray_min_replicas is None and settings.ray_max_replicas is None:
        options["num_replicas"] = settings.ray_replicas
    else:
        low = settings.ray_min_replicas if settings.ray_min_replicas is not None else 1
        high = settings.ray_max_replicas if settings.ray_max_replicas is not None else max(low, 1)
        if high < low:
            raise ValueError(
                f"ray_max_replicas ({high}) is below ray_min_replicas ({low}): raise the maximum"
            )
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "initial_replicas": max(low, 1),
            # A replica is "full" when its batch is: one decode slot per ongoing request.
            "target_ongoing_requests": replica.active_jobs,
            **settings.ray_autoscaling,
        }
    return options


class ReplicaHeaderMiddleware:
    """Names the replica that served each response (`X-Harken-Replica`)."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named_send)


@serve.deployment(name=APP_NAME)
@serve.ingress()
class HarkenReplica:
    """One replica: harken's whole app, built in the replica's own process."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = Settings(**settings)
        self.name = serve.get_replica_context().replica_tag
        if self.settings.reuse_memory:
            keep_freed_memory()  # before the threads that run the model exist

    async def __serve_build_asgi_app__(self) -> FastAPI:
        app = create_app(self.settings)
        # Ready only once the models are in: Ray sends no request to a replica still loading.
        # (The app's own lifespan preloads again; the models are then already there.)
        await app.state.service.preload()
        if app.state.service.load_error:
            raise RuntimeError(app.state.service.load_error)
        app.add_middleware(ReplicaHeaderMiddleware, replica=self.name)
        return app


def harken_application(settings: Settings) -> Application:
    """The Serve application for `settings`: the replica class with Ray's options bound."""
    values = replica_settings(settings).model_dump(mode="json")
    # serve.deployment turns the class into a Deployment; its stubs do not say so.
    return HarkenReplica.options(**deployment_options(settings)).bind(values)  # type: ignore[attr-defined]


def build_app(args: dict[str, Any]) -> Application:
    """The Serve config's `import_path` target: `args` are harken settings (as in a TOML file),
    over the `HARKEN_*` environment of the node that builds the application."""
    return harken_application(Settings(**args))


def serve_on_ray(settings: Settings) -> None:
    """`harken serve --ray`: deploy on `ray_address` (or a new local cluster) and wait for a
    signal; the application goes away with the command (a local cluster too)."""
    stop = threading.Event()

    def stop_once(signum: int, frame: Any) -> None:
        # The first signal (even during deployment) removes the application; a second one
        # stops at once.
        stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.default_int_handler)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop_once)
    ray.init(address=settings.ray_address, logging_level=logging.WARNING)
    try:
        serve.start(
            http_options={"host": settings.host, "port": settings.port},
            controller_options=CONTROLLER_OPTIONS,
        )
        serve.run(harken_application(settings), name=APP_NAME, route_prefix="/")
        log.info("harken on Ray Serve: http://%s:%d", settings.host, settings.port)
        stop.wait()
        log.info("removing the harken application from the cluster")
        serve.delete(APP_NAME)
        if settings.ray_address is None:
            serve.shutdown()
    finally:
        ray.shutdown()
