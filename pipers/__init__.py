"""Pipers: the daemons of a durable message pipeline, and the base they share."""

from .base import UNCHANGED, Daemon, Options, Output, Piper

__all__ = ["UNCHANGED", "Daemon", "Options", "Output", "Piper"]
