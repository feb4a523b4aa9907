"""Where messages enter a pipeline: `probe` (scheduled checks), `collect` (a drop
directory), `prioritize` (a job made next) and the `Reporter` API for applications."""

from .reporter import CommitError, Reporter

__all__ = ["CommitError", "Reporter"]
