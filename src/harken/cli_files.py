"""Files for the command line: which audio files it was given, where each output goes, and the
two ways to transcribe them: in this process through the service, or on a harken server.

Both ways give the same bodies: in-process the service's segments go through the server's own
renderers; with `--server` the server renders them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from harken.engine import TranscriptionOptions
from harken.errors import HarkenError
from harken.formats import FORMATS, render, transcript_text
from harken.progress import make_progress, probe_seconds

if TYPE_CHECKING:
    from harken.engine.types import Task
    from harken.evaluation import ManifestItem
    from harken.service.sync import SyncService
    from harken.service.transcription import LoadedModel

AUDIO_SUFFIXES = frozenset({".wav", ".wave", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a",
                            ".aac", ".mp4", ".webm", ".mka", ".mkv", ".mov", ".wma"})  # fmt: skip
OUTPUT_SUFFIXES = {"text": ".txt", "srt": ".srt", "vtt": ".vtt", "json": ".json",
                   "verbose_json": ".json"}  # fmt: skip

# (audio file, seconds done so far in it) → one body per format
Renderer = Callable[[Path, Callable[[float], None]], dict[str, Any]]


_PARAM_HINTS = {"model": "--model", "language": "--language"}


def describe(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    return str(message or exc)


def usage_error(exc: Exception) -> typer.BadParameter:
    """A request error as a usage error (exit 2) naming the option to change."""
    param = getattr(exc, "param", None)
    return typer.BadParameter(describe(exc), param_hint=_PARAM_HINTS.get(param or ""))


def parse_formats(value: str) -> list[str]:
    """`-f srt,vtt,txt` as response formats (`txt` is `text`), in order, each once."""
    formats: list[str] = []
    for name in value.split(","):
        fmt = {"txt": "text"}.get(name.strip().lower(), name.strip().lower())
        if fmt not in FORMATS:
            raise typer.BadParameter(
                f"{name.strip()!r} is not one of txt, srt, vtt, json, verbose_json",
                param_hint="--format",
            )
        if fmt not in formats:
            formats.append(fmt)
    if {"json", "verbose_json"} <= set(formats):
        raise typer.BadParameter(
            "json and verbose_json would both write NAME.json: pick one", param_hint="--format"
        )
    return formats


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


def output_targets(
    inputs: list[tuple[Path, Path]], formats: list[str], output_dir: Path | None, to_folder: bool
) -> list[dict[str, Path]] | None:
    """Each input's output file per format; None: print the one output on stdout (one file,
    one format, no folder given)."""
    if output_dir is None and len(inputs) == 1 and len(formats) == 1 and not to_folder:
        return None
    base = output_dir or Path(".")
    targets = [
        {fmt: base / name.with_suffix(OUTPUT_SUFFIXES[fmt]) for fmt in formats}
        for _, name in inputs
    ]
    every = [str(t) for outputs in targets for t in outputs.values()]
    clashes = sorted({t for t in every if every.count(t) > 1})
    if clashes:
        raise typer.BadParameter(
            f"several inputs would write {', '.join(clashes)}; pass them from different "
            "folders or one at a time"
        )
    return targets


def local_options(
    service: SyncService, model: LoadedModel, language: str | None, task: Task = "transcribe",
    prompt: str | None = None, words: bool = False,
) -> TranscriptionOptions:  # fmt: skip
    """The service's options from the command line's; usage errors name the option."""
    from harken.languages import language_code

    try:
        options = TranscriptionOptions(
            language=language_code(language), task=task, prompt=prompt, word_timestamps=words
        )
        service.check(model, options)
    except HarkenError as exc:
        raise usage_error(exc) from exc
    return options


def local_renderer(
    service: SyncService, model: LoadedModel, language: str, formats: list[str], task: Task,
    words: bool, prompt: str | None,
) -> Renderer:  # fmt: skip
    options = local_options(service, model, language, task, prompt, words)

    def run(path: Path, advance: Callable[[float], None]) -> dict[str, Any]:
        segments, info = service.transcribe(
            model, path.read_bytes(), options, on_segment=lambda segment: advance(segment.end)
        )
        return {f: render(f, segments, info, task=task, words=words)[0] for f in formats}

    return run


def remote_renderer(
    server: str, api_key: str | None, model: str | None, language: str, formats: list[str],
    task: Task, words: bool, prompt: str | None,
) -> Renderer:  # fmt: skip
    from harken.client import Client

    client = Client(server, api_key)

    def run(path: Path, advance: Callable[[float], None]) -> dict[str, Any]:
        bodies = {}
        for fmt in formats:  # one request a format: the server renders each
            if task == "translate":
                result = client.translate(path, model=model, prompt=prompt, response_format=fmt)  # type: ignore[arg-type]
            else:
                result = client.transcribe(
                    path, model=model, language=language, prompt=prompt,
                    response_format=fmt,  # type: ignore[arg-type]
                    timestamp_granularities=(
                        ["segment", "word"] if words and fmt == "verbose_json" else None
                    ),
                )  # fmt: skip
            bodies[fmt] = result.raw
        return bodies

    return run


Recogniser = tuple[Callable[["ManifestItem"], str], Callable[[str], bool]]


def local_recogniser(service: SyncService, model: LoadedModel, detect: bool) -> Recogniser:
    """`harken eval` in this process: the text of a clip, and which languages the model knows."""

    def recognise(item: ManifestItem) -> str:
        language = None if detect else item.language
        options = local_options(service, model, language)
        segments, _ = service.transcribe(model, item.path.read_bytes(), options)
        return transcript_text(segments)

    return recognise, model.knows


def remote_recogniser(
    server: str, api_key: str | None, model: str | None, detect: bool
) -> Recogniser:
    """`harken eval --server`: the server says which languages its model lacks, per clip."""
    from harken.client import Client

    client = Client(server, api_key)

    def recognise(item: ManifestItem) -> str:
        language = None if detect else item.language
        return client.transcribe(item.path, model=model, language=language).text

    return recognise, lambda language: True


def unreachable(server: str, exc: Exception) -> typer.Exit:
    """One line for a server that can't be reached: which one, and what to check."""
    typer.echo(
        f"Cannot reach the harken server at {server} ({describe(exc) or type(exc).__name__}): "
        "check the URL and port, and that `harken serve` is running there.",
        err=True,
    )
    return typer.Exit(1)


def transcribe_all(
    run: Renderer,
    inputs: list[tuple[Path, Path]],
    seconds: list[float],
    targets: list[dict[str, Path]] | None,
    progress: bool | None,
    server: str | None,
) -> int:
    """Every input through `run`, written to its targets (or stdout); the number that failed."""
    import httpx

    failures = 0
    with make_progress(progress) as bar:
        job = bar.add_task("", total=sum(seconds) or None)
        done = 0.0
        for index, ((path, _), duration) in enumerate(zip(inputs, seconds, strict=True)):
            bar.update(job, description=path.name)

            def advance(position: float, offset: float = done) -> None:
                bar.update(job, completed=offset + position)

            try:
                bodies = run(path, advance)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise unreachable(server or "", exc) from exc
            except Exception as exc:
                failures += 1
                bar.console.print(f"[red]{path}: {describe(exc)}[/red]", highlight=False)
                continue
            finally:
                done += duration
                bar.update(job, completed=done)
            if targets is None:
                [body] = bodies.values()
                sys.stdout.write(body_text(body))
                sys.stdout.flush()
                continue
            for fmt, target in targets[index].items():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(body_text(bodies[fmt]), encoding="utf-8")
                bar.console.print(f"{path} → {target}", highlight=False)
    return failures


def body_text(body: Any) -> str:
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, indent=2)
    return text if text.endswith("\n") else text + "\n"


def score_all(
    items: list[Any], recognise: Callable[[Any], str], knows: Callable[[str], bool],
    server: str | None,
) -> tuple[list[Any], set[str]]:  # fmt: skip
    """Every clip the model knows the language of, scored; and the languages skipped."""
    import httpx

    from harken.client import HarkenAPIError
    from harken.errors import HarkenError
    from harken.evaluation import score_clip

    skipped = {i.language for i in items if not knows(i.language)}
    items = [i for i in items if knows(i.language)]
    durations = [i.duration if i.duration is not None else probe_seconds(i.path) for i in items]
    scores = []
    with make_progress(None) as bar:
        job = bar.add_task("eval", total=sum(durations) or None)
        for item, seconds in zip(items, durations, strict=True):
            bar.update(job, description=item.id)
            try:
                scores.append(score_clip(item, recognise(item), seconds))
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise unreachable(server or "", exc) from exc
            except (HarkenError, HarkenAPIError) as exc:
                if getattr(exc, "code", None) != "unsupported_language":
                    typer.echo(f"{item.path}: {describe(exc)}", err=True)
                    raise typer.Exit(1) from exc
                skipped.add(item.language)  # the server's model does not know it
            bar.advance(job, seconds)
    return scores, skipped
