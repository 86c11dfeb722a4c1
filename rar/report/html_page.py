"""A table's Markdown page as an HTML fragment, for `snakemake --report` and a browser.

Only the Markdown that `rar.report.markdown` writes is understood (headings, paragraphs, `- `
lists, pipe tables, **bold**, *italics*, `code`): a small converter of our own, so that the
page needs no Markdown library and comes out byte for byte the same every time.
"""

from __future__ import annotations

import html as html_lib
import re

_INLINE = [
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<em>\1</em>"),
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
]
HTML_STYLE = """\
.rar-table { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
  color: #1f2328; max-width: 100%; }
.rar-table h1 { font-size: 1.4em; margin: 0.4em 0; }
.rar-table table { border-collapse: collapse; margin: 0.8em 0; font-variant-numeric: tabular-nums;
  font-size: 13px; }
.rar-table th, .rar-table td { border: 1px solid #d0d7de; padding: 2px 5px; }
.rar-table td.r { white-space: nowrap; }
.rar-table th { background: #f6f8fa; }
.rar-table tr:nth-child(even) td { background: #fafbfc; }
.rar-table td.r, .rar-table th.r { text-align: right; }
.rar-table code { background: #eff1f3; padding: 0 3px; border-radius: 3px; }
"""
CLASS_R = ' class="r"'


def markdown_html(text: str, *, title: str) -> str:
    """The Markdown that `table_markdown` writes as an HTML fragment (a styled `<div>`, shown
    by itself or embedded in the report's landing page): headings, paragraphs, `- ` lists,
    pipe tables with their alignment, **bold**, *italics* and `code`. Non-ASCII characters
    become character references, so the page reads right whatever charset it is served in.
    Deterministic, like the Markdown."""
    out = [f'<div class="rar-table" id="table-{html_lib.escape(title)}">', "<style>", HTML_STYLE]
    out.append("</style>")
    blocks = re.split(r"\n\s*\n", text.strip())
    for block in blocks:
        lines = block.splitlines()
        if lines[0].startswith("# "):
            out.append(f"<h1>{_inline_html(lines[0][2:])}</h1>")
            lines = lines[1:]
            if not lines:
                continue
        if lines[0].startswith("|"):
            out.append(_table_html(lines))
            continue
        para, items = [], []
        for ln in lines:
            (items if ln.startswith("- ") else para).append(ln)
        if para:
            out.append("<p>" + " ".join(_inline_html(ln) for ln in para) + "</p>")
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline_html(ln[2:])}</li>" for ln in items))
            out.append("</ul>")
    out.append("</div>")
    page = "\n".join(out) + "\n"
    return page.encode("ascii", "xmlcharrefreplace").decode("ascii")


def _inline_html(text: str) -> str:
    out = html_lib.escape(text, quote=False).replace("\\|", "|")
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def _split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip() for c in cells]


def _table_html(lines: list[str]) -> str:
    header, align, *body = lines
    right = [a.endswith(":") for a in _split_row(align)]

    def cells(line: str, tag: str) -> str:
        return "".join(
            f"<{tag}{CLASS_R if r else ''}>{_inline_html(c)}</{tag}>"
            for c, r in zip(_split_row(line), right, strict=False)
        )

    rows = [f"<tr>{cells(header, 'th')}</tr>"] + [f"<tr>{cells(b, 'td')}</tr>" for b in body]
    return "<table>\n" + "\n".join(rows) + "\n</table>"
