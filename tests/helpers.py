"""What several test modules share: the tiny training runs (tests/test_train.py,
tests/test_logging.py, tests/test_launch.py, tests/test_reference_rows.py), small pictures
(tests/test_files.py, tests/test_image_sets.py), whether the local SLURM cluster answers, the
release of requeued SLURM jobs (tests/test_launch.py, tests/test_preflight.py,
tests/test_workflow.py, tests/test_status.py), and a page's layout in headless Chromium
(tests/test_report_page.py, tests/test_workflow.py).

A plain module, imported by name: tests/ is not a package (see pyproject.toml), whose
pytest `pythonpath` puts this folder on sys.path; subprocesses that tests start insert it
themselves, and jobs on other processes get it pickled by value (tests/test_launch.py).
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from rar.data.batches import TensorBatchSource
from rar.settings.training import TrainConfig
from rar.training.loop import load_checkpoint

SAMPLES = 64


def tiny_run(**overrides) -> TrainConfig:
    """rar_tiny on a 4x4 grid: 64 source images, batch 8 -> 8 steps per epoch, 24 in all."""
    base = dict(
        model="rar_tiny",
        codebook_size=16,
        num_classes=4,
        num_tokens=16,
        source_images=SAMPLES,
        epochs=3,
        global_batch=8,
        micro_batch=4,
        warmup_epochs=1,
        lr=1e-3,
        min_lr=1e-4,
        anneal_start=1,
        anneal_end=2,
        checkpoint_minutes=60,
        log_every=4,
        seed=3,
        compile=False,  # eager on GPUs too ("auto" compiles there), as the GPU tests were measured
    )
    return TrainConfig(**{**base, **overrides})


def tiny_tokens(
    seed: int, n: int = SAMPLES, *, pattern_seed: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """n samples (tokens (n, 16), labels (n,)) of 4 classes with learnable structure: each
    class has its own token pattern, kept at 70 % of the positions, noise elsewhere. The
    patterns are drawn from `pattern_seed` (shared by other sample sets), else from `seed`."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(4, (n,), generator=g)
    patterns = g if pattern_seed is None else torch.Generator().manual_seed(pattern_seed)
    base = torch.randint(16, (4, 16), generator=patterns)
    noise = torch.randint(16, (n, 16), generator=g)
    keep = torch.rand(n, 16, generator=g) < 0.7
    return torch.where(keep, base[labels], noise), labels


def tiny_source(seed: int = 0, *, pattern_seed: int | None = None) -> TensorBatchSource:
    tokens, labels = tiny_tokens(seed, pattern_seed=pattern_seed)
    return TensorBatchSource(tokens.to(torch.int16), labels, seed=seed)


def weights(path):
    return load_checkpoint(path)["model"]


def picture(path, value: int) -> None:
    """A 4 x 4 grey RGB image of `value` at `path` (its folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value,) * 3).save(path)


def assert_same_weights(a, b, exact=True):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def slurm_available() -> bool:
    """Whether the local SLURM cluster answers (.ci/run starts it): its commands are on the
    PATH and `sinfo` replies within 20 s. tests/conftest.py calls this at collection time when
    a collected test is marked `slurm`, so a controller that hangs must not hang the session.
    (Not functools.cache'd: tests/test_launch.py pickles this module by value, and a cache
    wrapper pickles by name.)"""
    if not all(shutil.which(c) for c in ("sbatch", "sinfo", "sacct", "squeue", "scontrol")):
        return False
    try:
        subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


# SLURM holds a requeued job (reason BeginTime, about 2 minutes) so that it cannot start while
# its previous run is still being torn down. The tests start it sooner, but only once the hold
# has lasted well past the cluster's KillWait (5 s on the one .ci/run starts): released at once,
# the new run can start before the old job step is gone, and fail at its first second (CI saw
# it).
REQUEUE_SETTLE_S = 15.0


class RequeueReleaser:
    """Call `poll(job_id)` every second or so: it starts the job once it has been held for
    REQUEUE_SETTLE_S, so a test waits seconds per requeue instead of minutes."""

    def __init__(self) -> None:
        self.held_since: float | None = None

    def poll(self, job_id: str) -> None:
        state = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True
        ).stdout.split()
        if state[:2] != ["PENDING", "BeginTime"]:
            self.held_since = None
        elif self.held_since is None:
            self.held_since = time.monotonic()
        elif time.monotonic() - self.held_since >= REQUEUE_SETTLE_S:
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=False)
            self.held_since = None


@contextlib.contextmanager
def host_reads_banned(where: str, *, constructors: bool = False):
    """A context in which reading a tensor on the host raises AssertionError("host sync in
    `where`: ..."): Tensor.item, tolist, cpu, numpy and bool (on a GPU each waits for the
    device); with `constructors`, torch.tensor and torch.as_tensor too (a new tensor from
    host values each time)."""
    import torch

    def banned(name):
        def fail(*args, **kwargs):
            raise AssertionError(f"host sync in {where}: {name}")

        return fail

    with pytest.MonkeyPatch.context() as m:
        for name in ("item", "tolist", "cpu", "numpy", "__bool__"):
            m.setattr(torch.Tensor, name, banned(f"Tensor.{name}"))
        for name in ("tensor", "as_tensor") if constructors else ():
            m.setattr(torch, name, banned(f"torch.{name}"))
        yield


# Written into a copy of the page: 2 s after it has loaded (virtual time, which Chromium runs
# ahead while the page idles), when its scripts have rendered it, the geometry of its text
# blocks and tables (CSS pixels, from the top left of the window) as JSON in a
# <pre id="page-geometry">, which `chromium --dump-dom` prints with the rest of the DOM.
_GEOMETRY_SCRIPT = """<script>
addEventListener("load", () => setTimeout(() => {
  const shown = (el) => el.getBoundingClientRect().width > 0;
  const box = (el) => {
    const r = el.getBoundingClientRect();
    const text = (el.innerText ?? el.textContent).replace(/\\s+/g, " ").trim().slice(0, 120);
    return {tag: el.tagName.toLowerCase(), text, top: r.top, bottom: r.bottom, left: r.left,
            right: r.right};
  };
  const blocks = [...document.querySelectorAll("h1, h2, h3, p, li, table, img, svg, canvas")];
  const tables = [...document.querySelectorAll("table")].filter(shown).map((el) => ({
    ...box(el), width: el.scrollWidth, container: el.parentElement.clientWidth}));
  const out = document.createElement("pre");
  out.id = "page-geometry";
  out.textContent = JSON.stringify({width: innerWidth, height: innerHeight, tables,
    blocks: blocks.filter(shown).map(box).sort((a, b) => a.top - b.top)});
  document.body.append(out);
}, 2000));
</script>
"""


def page_geometry(page: Path, folder: Path, *, width: int = 1400, height: int = 1800) -> dict:
    """How headless Chromium lays out the HTML file `page` in a `width` x `height` window:
    {"width", "height": the window's inner size; "blocks": each visible heading, paragraph,
    list item, table and image ({"tag", "text", "top", "bottom", "left", "right"}), top
    first; "tables": each visible table's box, its "width" (scrollWidth) and its "container"'s
    (its parent's clientWidth)}. Works in `folder` on a copy of the page with a script added."""
    text = page.read_text(encoding="utf-8")
    head, body_end, tail = text.rpartition("</body>")
    assert body_end, f"{page}: no </body>"
    copy = folder / f"measured_{page.name}"
    copy.write_text(head + _GEOMETRY_SCRIPT + body_end + tail, encoding="utf-8")
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu"]
    command += [f"--user-data-dir={folder / 'chromium-profile'}", "--virtual-time-budget=20000"]
    command += [f"--window-size={width},{height}", "--dump-dom", copy.as_uri()]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    found = re.search(r'<pre id="page-geometry">(.*?)</pre>', proc.stdout, re.DOTALL)
    assert found, f"chromium measured nothing in {page}:\n{proc.stderr[-3000:]}"
    return json.loads(html.unescape(found[1]))
