"""The page probe that checks the HTML report in headless Chromium (tests/helpers.py's
`page_geometry`; the report itself: tests/test_workflow.py): what it measures on a page whose
faults are known."""

from __future__ import annotations

import pytest
from helpers import page_geometry

# The faults the report had: content centred in a scrolling box of the window's height (its
# top, with the title, above the window) and a wide table in a narrow column.
FAULTY = """<!doctype html><html><body style="margin: 0">
<div style="display: flex; align-items: center; height: 100vh; overflow: auto">
  <div style="width: 300px">
    <h1>The title</h1><p>The introduction.</p><div style="height: 3000px"></div>
    <div><table><tr>CELLS</tr></table></div>
  </div>
</div>
</body></html>
"""
CELLS = "<td>a cell that does not wrap</td>" * 12


@pytest.mark.chromium
def test_the_probe_sees_a_title_above_the_window_and_a_table_wider_than_its_column(tmp_path):
    page = tmp_path / "faulty.html"
    page.write_text(
        FAULTY.replace("CELLS", CELLS.replace("<td>", '<td style="white-space: nowrap">'))
    )
    geometry = page_geometry(page, tmp_path, width=800, height=600)
    # the window's inner size: its width, and its height less the window's bars
    assert geometry["width"] == 800 and 400 < geometry["height"] <= 600
    title = geometry["blocks"][0]
    assert title["text"] == "The title" and title["bottom"] < 0  # centred: above the window
    (table,) = geometry["tables"]
    assert table["width"] > table["container"] == 300 and table["right"] > 800

    fixed = FAULTY.replace("align-items: center", "align-items: flex-start")
    page.write_text(fixed.replace("width: 300px", "max-width: 100%").replace("CELLS", CELLS))
    geometry = page_geometry(page, tmp_path, width=800, height=600)
    assert [(b["tag"], b["text"]) for b in geometry["blocks"][:2]] == [
        ("h1", "The title"),
        ("p", "The introduction."),
    ]
    assert 0 <= geometry["blocks"][0]["top"] < 50
    (table,) = geometry["tables"]
    assert table["width"] <= table["container"] and table["right"] <= 800
