"""All of harken's configuration, in one settings object.

Values come from (highest first): arguments passed to `Settings(...)`, `HARKEN_*` environment
variables, a TOML file (`Settings.load(path)`, or `HARKEN_CONFIG=/path/harken.toml`), then the
defaults below. No other module reads the environment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _default_home() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "harken"


class ModelConfig(BaseModel):
    """One model the operator adds to the catalog (or an override of a built-in one)."""

    path: Path | None = Field(
        default=None, description="A local CTranslate2 Whisper model directory."
    )
    hub: str | None = Field(
        default=None, description="A hub repository id or faster-whisper size name (needs network)."
    )
    backend: Literal["faster-whisper", "upstream"] = "faster-whisper"
    compute_type: str | None = None
    beam_size: int | None = None

    # --- a model served by a remote endpoint (`upstream = ...` implies backend "upstream")
    upstream: str | None = Field(
        default=None, description="Base URL of a remote recogniser, e.g. https://host/v1."
    )
    dialect: Literal["mimo-chat", "openai-chat", "openai-audio"] = "openai-audio"
    upstream_model: str | None = Field(
        default=None, description="The model name the upstream expects (default: this name)."
    )
    api_key_env: str | None = Field(
        default=None, description="The environment variable holding the upstream's key."
    )
    connect_timeout_seconds: float = Field(default=10.0, gt=0.0)
    timeout_seconds: float = Field(default=300.0, gt=0.0)  # one upstream call, all of it
    concurrency: int = Field(default=4, ge=1)  # calls in flight to this upstream at once
    retries: int = Field(default=3, ge=0)  # after 429, 5xx, timeouts, dropped connections
    retry_backoff_seconds: float = Field(default=0.5, ge=0.0)  # first wait; doubles, jittered
    max_retry_wait_seconds: float = Field(default=30.0, ge=0.0)  # a longer Retry-After fails
    # One call's request body at most (None: MiMo's 10 MB, OpenAI's 25 MB) and the longest
    # piece of audio one call carries; longer audio is cut at pauses into pieces.
    max_body_mb: float | None = Field(default=None, ge=0.1)
    max_piece_seconds: float = Field(default=30.0, ge=5.0)
    # openai-audio: ask for verbose_json (segment times); false for upstreams with json only.
    timestamps: bool = True
    # Languages the upstream knows (ISO 639-1); None: every one harken knows.
    languages: list[str] | None = None

    @model_validator(mode="after")
    def _upstream_backend(self) -> ModelConfig:
        if self.upstream is not None:
            self.backend = "upstream"
        elif self.backend == "upstream":
            raise ValueError("backend 'upstream' needs `upstream = \"https://host/v1\"`")
        return self

    def upstream_api_key(self) -> str | None:
        """The upstream's key, from the environment variable `api_key_env` (never the file)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None


# Lists from the environment are comma-separated ("a,b"); a JSON list ("[...]") works too.
CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HARKEN_", env_nested_delimiter="__", extra="ignore"
    )

    # --- server
    host: str = "127.0.0.1"
    port: int = 8000
    insecure_no_auth: bool = False
    api_keys: CommaList = Field(default_factory=list)
    api_keys_file: Path | None = None
    cors_origins: CommaList = Field(default_factory=list)

    # --- models
    home: Path = Field(default_factory=_default_home)
    default_model: str = "whisper-base"
    preload: CommaList = Field(default_factory=lambda: ["whisper-base"])
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(default_factory=dict)

    # --- engine (defaults measured on a 2-core AVX2 CPU; see README "Defaults")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = "default"
    cpu_threads: int = 0
    beam_size: int = 5

    # --- limits
    max_payload_mb: float = 10.0
    max_upload_mb: float = 25.0
    max_audio_seconds: float = 3 * 3600.0
    # Slow uploads (slowloris): the longest pause between body chunks, and the whole body's time.
    body_idle_timeout_seconds: float = 20.0
    body_timeout_seconds: float = 300.0
    # Connections, before a request reaches the app (api/serving.py): a new connection that sends
    # nothing is closed after `connection_idle_timeout_seconds`; a request's line and headers
    # must arrive within `header_timeout_seconds` of their first byte (408 past it: slowloris);
    # an idle kept-alive connection is closed after `keep_alive_timeout_seconds`; past
    # `max_connections` open at once, a new one gets a 503 and is closed.
    connection_idle_timeout_seconds: float = Field(default=10.0, gt=0.0)
    header_timeout_seconds: float = Field(default=10.0, gt=0.0)
    keep_alive_timeout_seconds: int = Field(default=5, ge=1)
    max_connections: int = Field(default=1000, ge=1)
    # The interactive API page at /docs (Swagger UI, served from this server, no CDN).
    docs: bool = True

    # --- long audio: cut at pauses found by Silero VAD (requests may override: chunking_strategy)
    vad_enabled: bool = True
    vad_threshold: float = Field(default=0.3, ge=0.0, le=1.0)
    vad_min_silence_ms: int = Field(default=500, ge=0)
    vad_speech_pad_ms: int = Field(default=200, ge=0)
    vad_max_piece_seconds: float = Field(default=120.0, ge=5.0, le=600.0)
    # Lift quiet stretches of speech to the loudest one's level in each window (a quiet speaker
    # beside a loud one is otherwise read as background).
    level_speech: bool = True
    # Mandarin text in "simplified" characters (as MiMo answers), "traditional", or "original"
    # (as the model wrote it); requests may override it.
    chinese_script: Literal["simplified", "traditional", "original"] = "simplified"

    # --- live transcription (/v1/realtime): sessions open at once (past it: an error and close
    # code 1008), the longest wait for a client event, a session's longest life, the largest
    # client event (an `input_audio_buffer.append` with its base64 audio).
    realtime_max_sessions: int = Field(default=16, ge=0)
    realtime_idle_timeout_seconds: float = Field(default=60.0, gt=0.0)
    realtime_max_session_seconds: float = Field(default=3600.0, gt=0.0)
    realtime_max_event_mb: float = Field(default=15.0, gt=0.0)
    # A short-lived token from POST /v1/realtime/client_secrets is valid this long by default.
    realtime_client_secret_seconds: int = Field(default=600, ge=10, le=7200)

    # --- scheduling (defaults measured with benchmarks/load.py; README "Why these defaults")
    # Model workers (CTranslate2 replicas of one copy of the weights); each runs one (batched)
    # call at a time. One of every core measured faster than two on a long recording alone, as
    # fast on a short one, and within 5% under load of 16 clients (README "Why these defaults").
    workers: int = Field(default=1, ge=1)
    threads_per_worker: int = Field(default=0, ge=0)  # 0: cpu_threads (0: every core) per worker
    batch_size: int = Field(default=8, ge=1)  # windows of different requests per model call; 1: off
    max_active: int = Field(default=0, ge=0)  # requests decoding at once; 0: workers × batch_size
    max_queue: int = 64
    request_timeout_seconds: float = Field(default=3600.0, ge=0.0)  # per-request deadline; 0: none
    shutdown_grace_seconds: float = 30.0
    # glibc keeps memory freed by model calls for the next one; given back after 10 s idle.
    reuse_memory: bool = True

    # --- Ray Serve (`harken serve --ray`, the `ray` extra; README "More than one machine")
    ray_address: str | None = None  # a running cluster ("auto", "ray://head:10001"); unset: local
    ray_replicas: int = Field(default=1, ge=1)  # a fixed count, unless min/max replicas are set
    ray_min_replicas: int | None = Field(default=None, ge=0)  # autoscaling on ongoing requests
    ray_max_replicas: int | None = Field(default=None, ge=1)
    ray_cpus_per_replica: int = Field(default=1, ge=1)  # = CTranslate2 threads per replica
    # Other keys of Ray's autoscaling_config (e.g. upscale_delay_s, downscale_delay_s).
    ray_autoscaling: dict[str, float] = Field(default_factory=dict)

    @field_validator("*", mode="before")
    @classmethod
    def _split_commas(cls, value: Any, info: Any) -> Any:
        if isinstance(value, str) and cls.model_fields[info.field_name].annotation == list[str]:
            if value.strip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = settings_cls.model_config.get("toml_file") or os.environ.get("HARKEN_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | None = None, **values: Any) -> Settings:
        """Settings with `config_file` read in place of HARKEN_CONFIG (the CLI's `--config`),
        without touching the environment; `values` win over everything else."""
        if config_file is None:
            return cls(**values)

        class FromFile(cls):  # type: ignore[valid-type, misc]
            model_config = SettingsConfigDict(toml_file=config_file)

        return FromFile(**values)  # type: ignore[no-any-return]

    @property
    def active_jobs(self) -> int:
        """Requests decoding at once: by default enough to fill every worker's batch."""
        return self.max_active or max(1, self.workers) * self.batch_size

    @property
    def max_payload_bytes(self) -> int:
        return int(self.max_payload_mb * 1024 * 1024)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def realtime_max_event_bytes(self) -> int:
        return int(self.realtime_max_event_mb * 1024 * 1024)

    def all_api_keys(self) -> list[str]:
        """Keys from `api_keys` plus one key a line from `api_keys_file` (# starts a comment)."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    keys.append(line)
        return keys
