"""Progress of a run over audio files, on stderr: audio time done of the total, the speed in
multiples of real time, and the wall time, each labelled."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text


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


class ElapsedColumn(ProgressColumn):
    """`0:42 elapsed`: wall time, labelled so that it is not read as audio time."""

    def render(self, task: Task) -> Text:
        return Text(f"{clock(task.elapsed or 0.0)} elapsed", style="progress.elapsed")


def make_progress(enabled: bool | None) -> Progress:
    """A progress bar on stderr; by default only when stderr is a terminal."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), AudioTimeColumn(), SpeedColumn(),
        ElapsedColumn(), console=console,
        disable=not console.is_terminal if enabled is None else not enabled,
    )  # fmt: skip


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
