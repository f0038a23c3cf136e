"""Render JSON-object scaffolding fields as readable text (design rule 3: never str(dict))."""

from __future__ import annotations

from typing import Any

# Demographic fields that read best as a bare value ("Age 37, male, Urban/Suburban").
_LEADING = ("age", "gender", "location")


def _humanise_key(key: str) -> str:
    return key.replace("_", " ").strip().capitalize()


def render_value(value: Any) -> str:
    """Readable text for any JSON value: lists join with commas, objects as 'Key: value'."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float, str)):
        return str(value).strip()
    if isinstance(value, list):
        return ", ".join(s for s in (render_value(v) for v in value) if s)
    if isinstance(value, dict):
        parts = []
        for key, item in value.items():
            text = render_value(item)
            if text:
                parts.append(f"{_humanise_key(key)}: {text}")
        return "; ".join(parts)
    return str(value)


def render_demographics(demographics: str | dict[str, Any] | None) -> str:
    """'Age 37, male, Urban/Suburban, Married, 2 children' from a demographics object or text."""
    if demographics is None:
        return ""
    if isinstance(demographics, str):
        return demographics.strip()
    lead: list[str] = []
    rest: list[str] = []
    for key in _LEADING:
        if key in demographics and render_value(demographics[key]):
            value = render_value(demographics[key])
            lead.append(f"Age {value}" if key == "age" else value)
    for key, value in demographics.items():
        if key in _LEADING:
            continue
        text = render_value(value)
        if text:
            rest.append(f"{_humanise_key(key)}: {text}" if isinstance(value, (dict, list, bool)) or not isinstance(value, str) else text)
    return ", ".join(lead + rest)


def render_financial_background(background: str | dict[str, Any] | None) -> str:
    """Financial background as prose, whether stored as text or as a JSON object."""
    if background is None:
        return ""
    if isinstance(background, str):
        return background.strip()
    return render_value(background)


def client_background(demographics: Any, financial_background: Any) -> str:
    """The `client_background` text of a training pair: demographics; financial background."""
    parts = [p for p in (render_demographics(demographics), render_financial_background(financial_background)) if p]
    return "; ".join(parts)


def md_cell(value: Any) -> str:
    """`value` as text safe inside a markdown table cell: backslashes and pipes escaped (a bare
    `|` would end the cell), whitespace runs and newlines flattened to one space. The one
    markdown escaper of the package."""
    return " ".join(str(value).replace("\\", "\\\\").replace("|", "\\|").split())
