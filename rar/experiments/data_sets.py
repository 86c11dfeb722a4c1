"""The token data sets every study shares: where they live, what they are made from, and the
record of it (`source.json`). Torch-free.

A data set is named `<dataset>-<tokenizer>[-<grid>x<grid>]-<crop>` (rar.experiments.build; the
grid only where it is not the study tokenizer's) and lives in `results/data/<name>/` whatever
the study, so two studies that name the same data set (the paper's ablations and
config/lite.yaml) tokenize it once. A name alone does not prove the same tokens: the first
study whose workflow starts records each data set's source beside it (`DataSource`: the image
folders, the tokenizer, the grid and the images per shard), and a study whose source for that
name differs is refused, with one message naming both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rar.files import atomic_write_json

DATA_ROOT = "results/data"  # every study's data sets, one folder each
SOURCE_JSON = "source.json"  # beside manifest.json: what the data set was made from


def data_dir(dataset: str) -> str:
    """The folder of data set `dataset`, the same for every study."""
    return f"{DATA_ROOT}/{dataset}"


@dataclass(frozen=True)
class DataSource:
    """What a data set's tokens are made from: equal sources give equal shards."""

    images: str  # the class folders tokenized (train split)
    heldout: str  # the class folders of its val/ tokens
    tokenizer: dict  # the study's `tokenizer:` block (name, weights or training, codebook, grid)
    tokenizer_file: str  # the weights the tokenize jobs load
    crop: str
    images_per_part: int


@dataclass(frozen=True)
class SourceRecord:
    """`source.json`: a data set's source and the study that made it."""

    source: DataSource
    study: str
    config: str

    def clash(self, other: SourceRecord, folder: str) -> str | None:
        """None when `other` names the same source, else one line naming both."""
        if other.source == self.source:
            return None
        ours, theirs = asdict(self.source), asdict(other.source)
        keys = [k for k in ours if ours[k] != theirs[k]]
        differ = "; ".join(f"{k}: {ours[k]!r} there, {theirs[k]!r} here" for k in keys)
        return (
            f"{folder}: data set made by study {self.study!r} ({self.config}) from another "
            f"source than study {other.study!r} ({other.config}) names ({differ}); give this "
            "study's data its own name (data.dataset) or the same source"
        )


def read_source(folder: str | Path) -> SourceRecord | None:
    """The record of the data set in `folder`; None without one. An unreadable record is a
    ValueError naming the file."""
    path = Path(folder) / SOURCE_JSON
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return SourceRecord(DataSource(**data["source"]), data["study"], data["config"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a data set's source record ({err})") from None


def write_source(folder: str | Path, record: SourceRecord) -> None:
    atomic_write_json(Path(folder) / SOURCE_JSON, asdict(record))


def source_clashes(sources: dict[str, SourceRecord], root: Path) -> list[str]:
    """For each data set folder (relative to `root`) and the source a study makes it from: a
    line naming both studies where the folder's record says another source (or is unreadable)."""
    out = []
    for folder, ours in sources.items():
        try:
            found = read_source(root / folder)
        except ValueError as err:
            out.append(str(err))
            continue
        clash = found and found.clash(ours, folder)
        out += [clash] if clash else []
    return out


def record_sources(sources: dict[str, SourceRecord], root: Path) -> None:
    """Write each folder's source record where it has none yet."""
    for folder, record in sources.items():
        if read_source(root / folder) is None:
            write_source(root / folder, record)


def image_dir(config: dict, prefix: str, split: str = "train") -> str:
    """The class folders of the images of `split`:

    - "train": what the tokenizer and the runs train on (the demo makes its own; ImageNet's
      train split is linked);
    - "heldout": what validation and `val_nll` use (docs/operating.md "Watching a grid"): the demo's
      val/, or ImageNet's validation split in the class-folder layout beside the train split;
    - "floor": the FLOOR row's real images: the demo's test/ (disjoint from val/, the demo's
      FID reference), or ImageNet's validation split (the ADM reference batch is drawn from
      the train split)."""
    demo = "demo" in config["data"]
    if split == "train":
        return f"{prefix}/images/train" if demo else config["data"]["images"]
    if split == "heldout":
        if demo:
            return f"{prefix}/images/val"
        return str(Path(config["data"]["images"]).parent / "val")  # beside ImageNet's train/
    if split == "floor":
        return f"{prefix}/images/test" if demo else image_dir(config, prefix, "heldout")
    raise ValueError(f"unknown image split {split!r}")
