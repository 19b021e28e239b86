"""The report page as one self-contained HTML file: the markdown the reports write (headings,
paragraphs, pipe tables, lists, code blocks, images, links, `code`, **bold**) rendered with
every PNG figure inline as a base64 data URI, so the page can be mailed as it is."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_IMG = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)(.*)$")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
          "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #bbb;padding:.25rem .5rem}"
          "th{background:#eee}td.r{text-align:right}img{max-width:100%}figure{margin:1rem 0}"
          "pre{background:#f4f4f4;padding:.5rem;overflow-x:auto}")


def _inline(text: str) -> str:
    t = html.escape(text, quote=False)
    t = _CODE.sub(r"<code>\1</code>", t)
    t = _BOLD.sub(r"<strong>\1</strong>", t)
    return _LINK.sub(lambda m: f'<a href="{html.escape(m[2])}">{m[1]}</a>', t)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _image(alt: str, src: str, rest: str, base: Path) -> str:
    path = base / src
    if path.suffix.lower() == ".png" and path.exists():
        src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}">'
            f"<figcaption>{_inline(alt + rest)}</figcaption></figure>")


def render(markdown: str, base: Path) -> str:
    """HTML body of `markdown`; images are resolved against `base` and inlined."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre>" + html.escape("\n".join(lines[i + 1:j])) + "</pre>")
            i = j + 1
            continue
        if m := re.match(r"^(#{1,6}) (.*)$", line):
            k = len(m[1])
            out.append(f"<h{k}>{_inline(m[2])}</h{k}>")
        elif m := _IMG.match(line):
            out.append(_image(m[1], m[2], m[3], base))
        elif line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            rows = [_cells(x) for x in lines[i:j]]
            right = [c.endswith(":") for c in rows[1]] if len(rows) > 1 else []
            body = "".join("<tr>" + "".join(f'<td{" class=r" if k < len(right) and right[k] else ""}>'
                                            f"{_inline(c)}</td>" for k, c in enumerate(r)) + "</tr>" for r in rows[2:])
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in rows[0]) + "</tr>" + body + "</table>")
            i = j
            continue
        elif line.startswith("- "):
            j = i
            while j < len(lines) and lines[j].startswith("- "):
                j += 1
            out.append("<ul>" + "".join(f"<li>{_inline(x[2:])}</li>" for x in lines[i:j]) + "</ul>")
            i = j
            continue
        elif line.strip():
            j = i
            while j < len(lines) and lines[j].strip() and not re.match(r"^(#|!\[|\||- |```)", lines[j]):
                j += 1
            out.append("<p>" + _inline(" ".join(lines[i:j])) + "</p>")
            i = max(j, i + 1)
            continue
        i += 1
    return "\n".join(out)


def write_html(md_path: Path) -> Path:
    """`report.md` → `report.html` beside it, self-contained (figures inline)."""
    md_path = Path(md_path)
    text = md_path.read_text()
    title = next((ln[2:] for ln in text.splitlines() if ln.startswith("# ")), md_path.stem)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n{render(text, md_path.parent)}\n</body></html>\n")
    out = md_path.with_suffix(".html")
    out.write_text(page)
    return out
