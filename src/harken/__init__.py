"""harken: a self-hosted speech-recognition server for the MiMo ASR and OpenAI audio APIs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from harken.client import AsyncClient, Client, HarkenAPIError

__all__ = ["AsyncClient", "Client", "HarkenAPIError", "__version__"]


def __getattr__(name: str) -> Any:
    # The client is imported on first use, so `import harken` (the server, the CLI) stays light.
    if name in ("AsyncClient", "Client", "HarkenAPIError"):
        from harken import client

        return getattr(client, name)
    raise AttributeError(f"module 'harken' has no attribute {name!r}")
