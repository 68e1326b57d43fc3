"""Turns validated requests into transcription jobs: decoding, limits, scheduling, usage."""
