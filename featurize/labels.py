"""Finding recordings and their labels: BirdCLEF XML, a CSV, or one folder per class.

Everything here works on paths and text only; the result is a list of :class:`Recording`
(the work units) and a deterministic class list.
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from featurize.audio import AUDIO_EXTENSIONS

LABEL_SOURCES = ("auto", "xml", "csv", "folders", "none")


@dataclass(frozen=True)
class Recording:
    """One audio file to featurize.

    Attributes:
        id: stable id, the path relative to the audio root with ``/`` separators.
        path: absolute path on this machine.
        label: class id, or ``""`` when unlabelled.
        background: background species (class ids or names), possibly empty.
        problem: a one-line reason this entry cannot be featurized (recorded as failed), else "".
    """

    id: str
    path: str
    label: str = ""
    background: tuple[str, ...] = ()
    problem: str = ""


@dataclass(frozen=True)
class Labelling:
    recordings: list[Recording]
    classes: list[str]
    class_names: list[str]
    notes: list[str]


def discover_audio(root: str | Path) -> list[Path]:
    """Audio files under ``root`` (recursively, by extension, hidden files skipped), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"audio directory not found: {root}")
    found = [
        path for path in root.rglob("*")
        if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _text(node: ElementTree.Element, tag: str) -> str:
    child = node.find(tag)
    return (child.text or "").strip() if child is not None and child.text else ""


def read_birdclef_xml(paths: list[Path]) -> tuple[dict[str, dict[str, object]], dict[str, str], list[str]]:
    """Parse BirdCLEF 2017 per-recording XML files (root ``<Audio>``).

    Returns ``({file_name: {"label", "name", "background"}}, conflicts, notes)``; the key is
    ``FileName`` (a base name); ``conflicts[file_name]`` names files given two different
    ClassIds. Unreadable XML files become notes, not exceptions.
    """
    found: dict[str, dict[str, object]] = {}
    conflicts: dict[str, str] = {}
    notes: list[str] = []
    for path in paths:
        try:
            root = ElementTree.parse(path).getroot()
        except (ElementTree.ParseError, OSError) as error:
            notes.append(f"skipped unreadable XML {path.name}: {error}")
            continue
        if root.tag != "Audio":
            continue
        file_name, class_id = _text(root, "FileName"), _text(root, "ClassId")
        if not file_name:
            notes.append(f"skipped XML {path.name}: no FileName")
            continue
        name = " ".join(part for part in (_text(root, "Genus"), _text(root, "Species")) if part)
        background = tuple(
            item.strip() for item in _text(root, "BackgroundSpecies").replace(";", ",").split(",") if item.strip()
        )
        entry = {"label": class_id, "name": name or class_id, "background": background}
        if file_name in found and found[file_name]["label"] != class_id:
            conflicts[file_name] = f"conflicting labels in XML metadata: {found[file_name]['label']!r} and {class_id!r}"
            continue
        found[file_name] = entry
    return found, conflicts, notes


def read_csv(path: Path) -> tuple[dict[str, tuple[str, tuple[str, ...]]], dict[str, str], list[str]]:
    """Parse ``path,label[,background]`` rows (optional header; background ids ``;``-separated).

    Returns ``(labels, conflicts, notes)``: ``labels[relative_path] = (label, background)``;
    ``conflicts[relative_path]`` names paths listed twice with different labels.
    """
    labels: dict[str, tuple[str, tuple[str, ...]]] = {}
    conflicts: dict[str, str] = {}
    notes: list[str] = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        first = handle.readline()
        handle.seek(0)
        delimiter = "\t" if "\t" in first and "," not in first else ","  # a .tsv works too
        for line_number, row in enumerate(csv.reader(handle, delimiter=delimiter), start=1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if line_number == 1 and row[0].strip().lower() == "path":
                continue
            relative = Path(row[0].strip()).as_posix()  # pathlib drops "./" and doubled slashes
            label = row[1].strip() if len(row) > 1 else ""
            background = tuple(b.strip() for b in row[2].split(";") if b.strip()) if len(row) > 2 else ()
            if relative in labels and labels[relative][0] != label:
                conflicts[relative] = f"conflicting labels in {path.name}: {labels[relative][0]!r} and {label!r}"
                continue
            labels[relative] = (label, background)
    return labels, conflicts, notes


def label_recordings(audio_root: str | Path, *, metadata: str | Path | None = None,
                     source: str = "auto") -> Labelling:
    """List the recordings under ``audio_root`` with labels from ``source``.

    ``source``: ``xml`` (BirdCLEF XML files in ``metadata`` or, by default, under the audio
    root), ``csv`` (the ``metadata`` file, comma- or tab-separated), ``folders`` (first folder
    below the root is the class), ``none``, or ``auto`` (csv if ``metadata`` is a file other than
    .xml; xml if ``metadata`` is a folder or .xml file, or XML files sit under the root; else none). Unlabelled files get label ``""``;
    metadata rows whose audio is missing become failed entries.
    """
    if source not in LABEL_SOURCES:
        raise ValueError(f"label source must be one of {LABEL_SOURCES}, got {source!r}")
    root = Path(audio_root).resolve()
    files = discover_audio(root)
    metadata_path = Path(metadata) if metadata else None
    if metadata_path is not None and not metadata_path.exists():
        raise FileNotFoundError(f"metadata not found: {metadata_path}")
    if source == "auto":
        if metadata_path is not None and metadata_path.is_file() and metadata_path.suffix.lower() != ".xml":
            source = "csv"
        elif metadata_path is not None or any(root.rglob("*.xml")):
            source = "xml"
        else:
            source = "none"
    if source == "csv" and metadata_path is None:
        raise ValueError("--labels csv needs --metadata FILE.csv")

    relative = {path.relative_to(root).as_posix(): path for path in files}
    labels: dict[str, tuple[str, tuple[str, ...]]] = {}
    problems: dict[str, str] = {}
    names: dict[str, str] = {}
    notes: list[str] = []
    if source == "xml":
        xml_root = metadata_path if metadata_path is not None else root
        xml_files = [xml_root] if xml_root.is_file() else sorted(xml_root.rglob("*.xml"))
        parsed, conflicts, notes = read_birdclef_xml(xml_files)
        by_name: dict[str, list[str]] = {}
        for rel in relative:
            by_name.setdefault(Path(rel).name, []).append(rel)
        for file_name, entry in parsed.items():
            matches = by_name.get(file_name, [])
            if not matches:
                problems[file_name] = f"listed in XML metadata but no audio file named {file_name}"
                continue
            for rel in matches:
                labels[rel] = (str(entry["label"]), tuple(entry["background"]))  # type: ignore[arg-type]
                if file_name in conflicts:
                    problems[rel] = conflicts[file_name]
            if entry["label"]:
                names[str(entry["label"])] = str(entry["name"])
    elif source == "csv":
        labels, conflicts, notes = read_csv(metadata_path)  # type: ignore[arg-type]
        problems.update(conflicts)
        for rel in list(labels):
            if rel not in relative:
                problems[rel] = f"listed in {metadata_path.name} but not found under the audio directory"
                del labels[rel]
    elif source == "folders":
        for rel in relative:
            parts = rel.split("/")
            labels[rel] = (parts[0] if len(parts) > 1 else "", ())

    recordings = []
    for rel, path in relative.items():
        label, background = labels.get(rel, ("", ()))
        recordings.append(Recording(id=rel, path=str(path), label="" if rel in problems else label,
                                    background=background, problem=problems.get(rel, "")))
    for rel, problem in problems.items():
        if rel not in relative:
            recordings.append(Recording(id=rel, path=str(root / rel), problem=problem))
    classes = sorted({r.label for r in recordings if r.label})
    unlabelled = sum(1 for r in recordings if not r.label and not r.problem)
    if unlabelled and source != "none":
        notes.append(f"{unlabelled} file(s) have no label in the metadata (stored with label -1)")
    return Labelling(recordings=recordings, classes=classes,
                     class_names=[names.get(c, c) for c in classes], notes=notes)
