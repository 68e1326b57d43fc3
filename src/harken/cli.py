"""The `harken` command line: serve, transcribe, models, eval.

`transcribe` and `eval` run through the same front door as the server (`TranscriptionService`,
driven by `SyncService` in this process) or send the audio to a server (`--server`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from harken import __version__
from harken.cli_files import (
    collect_inputs,
    describe,
    local_recogniser,
    local_renderer,
    output_targets,
    parse_formats,
    remote_recogniser,
    remote_renderer,
    score_all,
    transcribe_all,
)
from harken.progress import probe_seconds

if TYPE_CHECKING:
    from harken.config import Settings
    from harken.engine.types import Task
    from harken.service.sync import SyncService
    from harken.service.transcription import LoadedModel

app = typer.Typer(
    name="harken",
    help="Self-hosted speech recognition: a server for the MiMo ASR and OpenAI audio APIs.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_print_version, is_eager=True,
            help="Print harken's version and exit.",
        ),
    ] = False,
) -> None:  # fmt: skip
    """Self-hosted speech recognition: a server for the MiMo ASR and OpenAI audio APIs."""


# --- options several commands share
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="A TOML settings file (like HARKEN_CONFIG).")
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model or alias, from `harken models` (default: the configured default)",
    ),
]
ServerOption = Annotated[
    str | None,
    typer.Option("--server", "-s", help="A harken server's URL: send the audio there instead."),
]
ApiKeyOption = Annotated[
    str | None, typer.Option(envvar="HARKEN_API_KEY", help="The server's API key (--server).")
]


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(config: Path | None, **overrides: Any) -> Settings:
    from harken.config import Settings

    if config is not None and not config.is_file():
        raise typer.BadParameter(f"no such file: {config}", param_hint="--config")
    return Settings.load(config, **{k: v for k, v in overrides.items() if v is not None})


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default: 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: 8000)")] = None,
    config: ConfigOption = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Default model (default: whisper-base)")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Model workers (default: 1)")] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="Allow a non-loopback bind with no keys")
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    on_ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Run on Ray Serve: HARKEN_RAY_ADDRESS's cluster, or a local one (needs the "
            "ray extra)",
        ),
    ] = False,
) -> None:
    """Run the HTTP server."""
    from harken.api import create_app
    from harken.api.serving import build_server
    from harken.catalog import Catalog, WeightsUnavailable
    from harken.service.memory import keep_freed_memory

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = load_settings(
        config, host=host, port=port, default_model=model, workers=workers,
        insecure_no_auth=insecure_no_auth or None,
    )  # fmt: skip
    if model is not None and model not in settings.preload:
        settings.preload = [model]
    if settings.reuse_memory:
        keep_freed_memory()  # before the threads that run the model exist
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
    if on_ray:
        serve_on_ray(settings)
        return
    # uvicorn re-raises the signal it stopped on once it has drained; with a handler of our own
    # that is a no-op, so a graceful SIGTERM exits 0 (what systemd and Kubernetes expect).
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    application = create_app(settings)
    build_server(application, settings, log_level=log_level).run()


def serve_on_ray(settings: Settings) -> None:
    try:
        from harken.api import ray_serve
    except ImportError as exc:
        typer.echo(f"--ray needs Ray Serve ({exc}): pip install 'harken[ray]'", err=True)
        raise typer.Exit(1) from exc
    try:
        ray_serve.serve_on_ray(settings)
    except ValueError as exc:
        typer.echo(f"Cannot start on Ray: {exc}", err=True)
        raise typer.Exit(2) from exc
    except ConnectionError as exc:
        typer.echo(
            f"Cannot reach the Ray cluster at {settings.ray_address}: {exc} (is it running, and "
            "does this machine have its token? README: More than one machine)",
            err=True,
        )
        raise typer.Exit(1) from exc


@app.command()
def version() -> None:
    """Print harken's version (as `harken --version`)."""
    typer.echo(__version__)


# --- the model in this process
def refuse_config_with_server(config: Path | None, server: str | None) -> None:
    if config is not None and server:
        raise typer.BadParameter(
            "a settings file sets up the model in this process; with --server the server's "
            "own settings apply: drop --config or --server",
            param_hint="--config",
        )


@contextlib.contextmanager
def local_model(
    config: Path | None, model: str | None
) -> Iterator[tuple[SyncService, LoadedModel]]:
    """The service in this process with `model` loaded; usage errors name the option to fix."""
    from harken.errors import HarkenError, ModelNotFound
    from harken.service.memory import keep_freed_memory
    from harken.service.sync import SyncService

    # No per-request deadline here: a long file takes as long as it takes.
    settings = load_settings(config, request_timeout_seconds=0)
    if settings.reuse_memory:
        keep_freed_memory()
    with SyncService(settings) as service:
        try:
            loaded = service.model(model)
        except ModelNotFound as exc:
            raise typer.BadParameter(
                f"unknown model {model!r}: `harken models` lists the models and aliases",
                param_hint="--model",
            ) from exc
        except (HarkenError, ValueError) as exc:
            raise typer.BadParameter(describe(exc.__cause__ or exc), param_hint="--model") from exc
        yield service, loaded


# --- transcribe
@app.command()
def transcribe(
    files: Annotated[
        list[Path], typer.Argument(metavar="FILE", help="Audio files or folders of them")
    ],
    model: ModelOption = None,
    language: Annotated[
        str, typer.Option("--language", "-l", help="ISO 639-1 code, or auto to detect")
    ] = "auto",
    formats: Annotated[
        str,
        typer.Option(
            "--format", "-f", help="txt, srt, vtt, json or verbose_json; several: -f srt,vtt"
        ),
    ] = "txt",
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir", "-o",
            help="Write one file per input and format here (default: stdout for one file and "
            "format, else .)",
        ),
    ] = None,
    translate: Annotated[
        bool, typer.Option("--translate", help="English text from any language")
    ] = False,
    words: Annotated[
        bool, typer.Option("--word-timestamps", help="Word times (needs -f verbose_json)")
    ] = False,
    prompt: Annotated[str | None, typer.Option(help="Context that biases decoding")] = None,
    server: ServerOption = None,
    api_key: ApiKeyOption = None,
    config: ConfigOption = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress", help="Progress bar (default: when stderr is a terminal)"
        ),
    ] = None,
) -> None:  # fmt: skip
    """Transcribe audio files, in this process or on a server; one output per input and format."""
    refuse_config_with_server(config, server)
    fmts = parse_formats(formats)
    if words and "verbose_json" not in fmts:
        raise typer.BadParameter(
            "word timestamps only fit verbose_json: add it, e.g. -f verbose_json or "
            f"-f {formats},verbose_json",
            param_hint="--word-timestamps",
        )
    inputs = collect_inputs(files)
    targets = output_targets(inputs, fmts, output_dir, to_folder=files[0].is_dir())
    seconds = [probe_seconds(path) for path, _ in inputs]
    task: Task = "translate" if translate else "transcribe"
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if server:
            run = remote_renderer(server, api_key, model, language, fmts, task, words, prompt)
        else:
            service, loaded = stack.enter_context(local_model(config, model))
            run = local_renderer(service, loaded, language, fmts, task, words, prompt)
        failures = transcribe_all(run, inputs, seconds, targets, progress, server)
    if len(inputs) > 1 or targets is not None:
        total = sum(seconds)
        elapsed = time.monotonic() - started
        typer.echo(
            f"{len(inputs) - failures} of {len(inputs)} files, {total:.1f} s of audio "
            f"in {elapsed:.1f} s ({total / max(elapsed, 1e-6):.1f}× real time)",
            err=True,
        )
    if failures:
        raise typer.Exit(1)


# --- models
@app.command()
def models(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """List the model catalog, the aliases of each model, and where its weights are."""
    from harken.catalog import Catalog

    rows = Catalog(load_settings(config)).listing()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        typer.echo(row["name"] + (" (default)" if row["default"] else ""))
        if row["aliases"]:
            typer.echo(f"  aliases: {', '.join(row['aliases'])}")
        typer.echo(f"  {row['description']} [{row['backend']}]")
        typer.echo(f"  weights: {row['weights']}")


# --- eval
@app.command("eval")
def evaluate_command(
    manifest: Annotated[Path, typer.Argument(help="JSON Lines: path, text, language per line")],
    model: ModelOption = None,
    language: Annotated[
        list[str] | None,
        typer.Option("--language", "-l", help="Only these languages (repeatable)"),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many clips")] = None,
    detect_language: Annotated[
        bool,
        typer.Option(
            "--detect-language", help="Let the model detect the language, not the manifest's"
        ),
    ] = False,
    details: Annotated[bool, typer.Option(help="Also print every clip's score")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    server: ServerOption = None,
    api_key: ApiKeyOption = None,
    config: ConfigOption = None,
) -> None:
    """Word error rate (CER for zh/ja/ko) of a model on a manifest, per language.

    Both sides are normalised the way Whisper's evaluations do (case, punctuation, numbers)."""
    from harken.evaluation import ManifestError, read_manifest, report, table

    refuse_config_with_server(config, server)
    if not manifest.is_file():
        raise typer.BadParameter(f"no such file: {manifest}", param_hint="MANIFEST")
    try:
        items = read_manifest(manifest, languages=language, limit=limit)
    except ManifestError as exc:
        raise typer.BadParameter(str(exc), param_hint="MANIFEST") from exc
    if not items:
        raise typer.BadParameter("the manifest has no clips that match the filters")

    with contextlib.ExitStack() as stack:
        if server:
            recognise, knows = remote_recogniser(server, api_key, model, detect_language)
            model_name = model or "the server's default"
        else:
            service, loaded = stack.enter_context(local_model(config, model))
            recognise, knows = local_recogniser(service, loaded, detect_language)
            model_name = loaded.entry.name
        started = time.monotonic()
        scores, skipped = score_all(items, recognise, knows, server)
        elapsed = time.monotonic() - started
    if skipped:
        typer.echo(
            f"skipped clips in languages {model_name} does not know: {', '.join(sorted(skipped))}",
            err=True,
        )
    if not scores:
        raise typer.BadParameter("the model knows none of the manifest's languages")
    if as_json:
        typer.echo(json.dumps(report(model_name, scores, elapsed), ensure_ascii=False, indent=2))
        return
    if details:
        for c in scores:
            typer.echo(f"{c.item.id}  {c.metric.upper()} {c.rate:6.1%}  {c.hypothesis.strip()}")
        typer.echo("")
    for line in table(model_name, scores, elapsed):
        typer.echo(line)


def main() -> None:
    app()
