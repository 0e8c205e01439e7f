"""Errors a user can cause. Each names the problem and the fix; the CLI prints them as one line."""

from __future__ import annotations


class MedSegAnyError(Exception):
    """A problem the user can fix. ``str(error)`` is one line: what is wrong, then what to do."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem.rstrip(".")
        self.fix = fix.rstrip(".")
        super().__init__(f"{self.problem}. {self.fix}." if self.fix else f"{self.problem}.")


class VolumeError(MedSegAnyError):
    """The image file or volume cannot be used (missing, not an image, 2D, 4D without a frame...)."""


class PromptError(MedSegAnyError):
    """A box or point is invalid (outside the volume, degenerate, on several slices...)."""


class ModelError(MedSegAnyError):
    """A model cannot be found, verified or loaded."""


class OutputError(MedSegAnyError):
    """A result cannot be written where the user asked."""
