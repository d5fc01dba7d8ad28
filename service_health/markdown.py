"""What every markdown artifact needs from the data it shows. Pure."""

from __future__ import annotations


def cell(text: str) -> str:
    """A markdown table cell: no pipes or line breaks from the data."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
