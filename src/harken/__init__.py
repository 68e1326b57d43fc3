"""harken: a self-hosted speech-recognition server for the MiMo ASR and OpenAI audio APIs."""

__version__ = "0.1.0"
