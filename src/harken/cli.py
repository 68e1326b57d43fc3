"""The `harken` command line."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from harken import __version__

app = typer.Typer(
    name="harken",
    help="Self-hosted speech recognition: a server for the MiMo ASR and OpenAI audio APIs.",
    no_args_is_help=True,
    add_completion=False,
)


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(config: Path | None, **overrides: Any) -> Any:
    import os

    from harken.config import Settings

    if config is not None:
        if not config.is_file():
            raise typer.BadParameter(f"no such file: {config}", param_hint="--config")
        os.environ["HARKEN_CONFIG"] = str(config)
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: 8000]")] = None,
    config: Annotated[Path | None, typer.Option(help="A TOML settings file")] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Default model [default: whisper-base]")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Model workers")] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="Allow a non-loopback bind with no keys")
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Run the HTTP server."""
    import uvicorn

    from harken.api import create_app
    from harken.catalog import Catalog, WeightsUnavailable

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = load_settings(
        config, host=host, port=port, default_model=model, workers=workers,
        insecure_no_auth=insecure_no_auth or None,
    )  # fmt: skip
    if model is not None and model not in settings.preload:
        settings.preload = [model]
    open_to_network = not is_loopback(settings.host) and not settings.insecure_no_auth
    if open_to_network and not settings.all_api_keys():
        typer.echo(
            f"Refusing to listen on {settings.host} with no API key: anyone on the network "
            "could use this server. Set HARKEN_API_KEYS (or api_keys_file), or pass "
            "--insecure-no-auth if that is what you want.",
            err=True,
        )
        raise typer.Exit(2)
    # Fail fast on missing weights, before the port opens.
    try:
        Catalog(settings).resolve(settings.default_model).weights(settings)
    except (WeightsUnavailable, ValueError) as exc:
        typer.echo(f"Cannot start: {exc}", err=True)
        raise typer.Exit(1) from exc
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )


@app.command()
def version() -> None:
    """Print harken's version."""
    typer.echo(__version__)


def main() -> None:
    app()
