"""The one shape every module's Logic result has (issue 16: "one Logic shape").

Each module's Logic offers, per operation, an image-level method (SimpleITK images,
``Segment`` objects, RAS points, plain numbers) and a node-level method (MRML nodes and
segment IDs); both return one typed result object with the members below. The CLI
writes ``to_dict()`` as its JSON, the Slicer widget shows ``summary_text()`` and calls
``add_to_scene()``, reports and CSV files use ``table_rows()``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class StepResult(Protocol):
    """What every Logic result offers (a dataclass in each module implements it)."""

    #: Warnings a user must see (printed by the CLI, shown in Slicer and in the report).
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content of the step's ``<step>.json``; every key carries its unit (``_mm``, ``_ml`` ...)."""

    def table_rows(self) -> list[dict[str, Any]]:
        """Rows ``{"metric": str, "value": number or str, "unit": str}`` for table nodes, CSV and reports."""

    def summary_text(self) -> str:
        """A few lines for the terminal and the module panel: the verdict first, every figure with its unit."""

    def add_to_scene(self, scene, reference_node=None, name: str | None = None) -> dict[str, Any]:
        """Create the MRML output nodes (new nodes only, never over inputs); returns them by role."""


def rows(items) -> list[dict[str, Any]]:
    """``[(metric, value, unit), ...]`` -> table rows, the one conversion used by every module."""
    return [{"metric": str(m), "value": v, "unit": str(u)} for m, v, u in items]
