"""Errors of the DG stage. Each message is one line a user can act on."""

from __future__ import annotations


class DGError(RuntimeError):
    """A demonstration-generation problem (bad config, template, provider failure, ...)."""


class LLMError(DGError):
    """The LLM provider failed after retries, or refused (auth, bad request)."""


class DemoBufferError(DGError, ValueError):
    """A demo buffer file that is missing, malformed, or does not fit the scenario."""
