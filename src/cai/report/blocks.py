"""The pieces a report is made of (headings, paragraphs, tables, plots, transcripts), rendered to Markdown
and to HTML from one description, so the two reports show the same figures.

HTML rendering escapes every text it is given (``html.escape`` with quotes): model output, prompts, file
names and model specs alike. Nothing a model writes can become markup, a script or a link in the page.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str
    note: bool = False  # a caveat, shown in italics


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[Any]]


@dataclass(frozen=True)
class Plot:
    file: str  # a PNG beside the report
    alt: str


@dataclass(frozen=True)
class Transcript:
    """One prompt's SL-CAI trajectory: the prompt, the first answer, then (principle, critique, revision)."""

    title: str
    prompt: str
    initial: str
    rounds: Sequence[tuple[str, str, str]] = field(default_factory=tuple)
    meta: str = ""


@dataclass(frozen=True)
class SideBySide:
    """One prompt's first answer and its final revision under each of several constitutions."""

    title: str
    prompt: str
    initial: str
    finals: Sequence[tuple[str, str]] = field(default_factory=tuple)  # (constitution, final revision)


Block = Heading | Para | Table | Plot | Transcript | SideBySide


def shorten(text: Any, width: int = 100) -> str:
    """``text`` on one line, at most ``width`` characters: cut at the last word boundary that fits and ended
    with "…" when shortened (a single word longer than ``width`` is cut inside it)."""
    flat = " ".join(str(text).split())
    if len(flat) <= width:
        return flat
    cut = flat[:width]  # width - 1 characters and the "…"; a space at width means the word before fits whole
    head = cut.rsplit(" ", 1)[0] if " " in cut else cut[:width - 1]
    return head.rstrip(" ,;:-")[:width - 1] + "…"


def cell(x: Any) -> str:
    """A table cell's text: floats to 3 decimals, None as '-'."""
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def to_markdown(blocks: Sequence[Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [f"_{b.text}_" if b.note else b.text, ""]
        elif isinstance(b, Table):
            lines += ["| " + " | ".join(b.header) + " |", "|" + "---|" * len(b.header),
                      *("| " + " | ".join(cell(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |"
                        for row in b.rows), ""]
        elif isinstance(b, Plot):
            lines += [f"![{b.alt}]({b.file})", ""]
        elif isinstance(b, (Transcript, SideBySide)):  # listed by title; the text is in report.html
            in_list = len(lines) > 1 and lines[-2].startswith("- ")
            lines[len(lines) - in_list:] = [f"- {b.title}", ""]
    shown = sum(isinstance(b, (Transcript, SideBySide)) for b in blocks)
    if shown:
        lines += [f"_The {shown} example transcripts listed are in full in report.html._", ""]
    return "\n".join(lines)


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _inline(text: str) -> str:
    """A paragraph's text, escaped, with its Markdown `code` spans as <code> (after escaping, so they hold
    text only)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _esc(text))


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{_esc(alt)}" src="data:image/png;base64,{data}"><figcaption>{_esc(alt)}' \
           '</figcaption></figure>'


def _pre(text: str) -> str:
    """Model text, escaped, in a <pre>; an empty one is said to be empty rather than shown as a blank box."""
    return f"<pre>{_esc(text)}</pre>" if text.strip() else "<pre class=\"empty\">(empty)</pre>"


def _transcript_html(t: Transcript) -> str:
    parts = [f"<details class=\"transcript\"><summary>{_esc(t.title)}</summary>"]
    if t.meta:
        parts.append(f"<p class=\"meta\">{_esc(t.meta)}</p>")
    parts.append(f"<div class=\"turn user\"><b>prompt</b><pre>{_esc(t.prompt)}</pre></div>")
    answer = "first answer" if t.rounds else "answer (no critique)"
    parts.append(f"<div class=\"turn model\"><b>{answer}</b>{_pre(t.initial)}</div>")
    for k, (principle, critique, revision) in enumerate(t.rounds, 1):
        parts.append(f"<div class=\"turn critique\"><b>round {k} critique ({_esc(principle)})</b>"
                     f"{_pre(critique)}</div>")
        parts.append(f"<div class=\"turn model\"><b>round {k} revision</b>{_pre(revision)}</div>")
    parts.append("</details>")
    return "".join(parts)


def _side_by_side_html(t: SideBySide) -> str:
    parts = [f"<details class=\"transcript\"><summary>{_esc(t.title)}</summary>",
             f"<div class=\"turn user\"><b>prompt</b><pre>{_esc(t.prompt)}</pre></div>",
             f"<div class=\"turn model\"><b>first answer</b>{_pre(t.initial)}</div>"]
    parts += [f"<div class=\"turn model\"><b>final revision under {_esc(label)}</b>{_pre(text)}</div>"
              for label, text in t.finals]
    return "".join(parts) + "</details>"


def to_html_body(blocks: Sequence[Block], image_dir: Path) -> str:
    """The blocks as HTML; plots are read from ``image_dir`` and embedded as base64 PNG."""
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            level = min(max(b.level, 1), 4)
            out.append(f"<h{level}>{_esc(b.text)}</h{level}>")
        elif isinstance(b, Para):
            out.append(f"<p class=\"note\">{_inline(b.text)}</p>" if b.note else f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_esc(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{_esc(cell(c))}</td>" for c in row) + "</tr>" for row in b.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Plot):
            path = image_dir / b.file
            if path.is_file():
                out.append(_image(path, b.alt))
        elif isinstance(b, Transcript):
            out.append(_transcript_html(b))
        elif isinstance(b, SideBySide):
            out.append(_side_by_side_html(b))
    return "\n".join(out)


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d2330;line-height:1.45}
h1{border-bottom:2px solid #3c5a99;padding-bottom:.2em}h2{margin-top:2em;color:#3c5a99}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #cdd3de;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eef1f7}tbody tr:nth-child(even){background:#f8f9fb}
figure{margin:1em 0}img{max-width:100%;border:1px solid #e1e5ec}figcaption{font-size:.85em;color:#555}
.note{font-style:italic;color:#6b5200;background:#fff8e1;padding:.3em .6em;border-left:3px solid #e0b000}
details.transcript{border:1px solid #cdd3de;border-radius:4px;margin:.4em 0;padding:.3em .6em}
details.transcript summary{cursor:pointer;font-weight:600}
.turn{margin:.4em 0}.turn b{font-size:.85em;color:#3c5a99}
.turn pre{white-space:pre-wrap;word-break:break-word;margin:.2em 0;padding:.4em;background:#f5f6f8;border-radius:3px;
font-size:.88em}.turn pre.empty{font-style:italic;color:#888}
.turn.user pre{background:#eaf2ff}.turn.critique pre{background:#fff4e5}.meta{font-size:.8em;color:#666}
code{font-size:.9em;background:#f0f2f6;padding:0 .2em;border-radius:2px}nav a{margin-right:1em}
"""


def page(title: str, blocks: Sequence[Block], image_dir: Path) -> str:
    """A self-contained HTML page: inline style, embedded images, no script, nothing loaded from elsewhere.
    The content security policy forbids scripts and remote loads, in case anything slipped through."""
    toc = "".join(f"<a href=\"#s{i}\">{_esc(b.text)}</a>" for i, b in enumerate(blocks)
                  if isinstance(b, Heading) and b.level == 2)
    body = to_html_body(blocks, image_dir)
    for i, b in enumerate(blocks):  # anchors for the table of contents
        if isinstance(b, Heading) and b.level == 2:
            body = body.replace(f"<h2>{_esc(b.text)}</h2>", f"<h2 id=\"s{i}\">{_esc(b.text)}</h2>", 1)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{_esc(title)}</h1><nav>{toc}</nav>\n{body}\n</body></html>\n")


def plot_name(kind: str, source: str) -> str:
    """A stable PNG file name for a study's plot, one per source file."""
    import hashlib

    return f"{kind}-{hashlib.sha1(source.encode()).hexdigest()[:10]}.png"
