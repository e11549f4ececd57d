"""The one shell and the one escaper of lstm-onnx's HTML pages (the `--html` report and the lesson): a
self-contained page whose head asks for nothing (the icon is empty data), and text from a model file made
fit for HTML (control characters written out by `safe_text`, then markup escaped)."""

from __future__ import annotations

import html

from toolkit.text import safe_text

PAGE_END = "</body></html>\n"


def esc(value: object, limit: int | None = 300) -> str:
    """Text from a file, fit for HTML: control characters written out, markup and quotes escaped; cut to
    `limit` characters (None: whole, for the JSON a page's script reads back)."""
    return html.escape(safe_text(value, limit=limit), quote=True)


def page_start(title: str, style: str) -> str:
    """A page's head with its title and inline style, and the opening of its body."""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            '<meta name="viewport" content="width=device-width"><link rel="icon" href="data:,">'
            f"<style>{style}</style></head><body>\n")
