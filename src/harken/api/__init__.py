"""HTTP: the MiMo and OpenAI dialects of CONTRACT.md. No model code here."""

from harken.api.app import create_app

__all__ = ["create_app"]
