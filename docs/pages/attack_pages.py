"""The attack pages, from the attack registry (filled in below)."""

from __future__ import annotations


def render() -> dict[str, str]:
    return {}


def presets_table() -> str:
    return ""


def nav() -> str:
    return ""
