"""Finding recordings and their labels: BirdCLEF XML, a CSV, or one folder per class.

Everything here works on paths and text only; the result is a list of :class:`Recording`
(the work units) and a deterministic class list.
"""

from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from soundception.featurize.audio import AUDIO_EXTENSIONS
from soundception.shared.location import is_url
from soundception.shared.text import redact
from soundception.shared.errors import UserError

LABEL_SOURCES = ("auto", "xml", "csv", "folders", "none")


@dataclass(frozen=True)
class Recording:
    """One audio file to featurize.

    Attributes:
        id: stable id, the path relative to the audio root with ``/`` separators.
        path: absolute path on this machine, or the full URL for an fsspec audio root.
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


def list_files(root: str | Path, *, storage_options: dict | None = None) -> dict[str, str]:
    """Every file under ``root`` (a folder or an fsspec URL), hidden ones skipped.

    Returns ``{relative path with "/": local path or full URL}``, sorted by relative path.
    Raises ``FileNotFoundError`` (naming ``root`` without credentials) when it is no folder.
    """
    if is_url(str(root)):
        import fsspec

        url = str(root).rstrip("/")
        try:
            filesystem, base = fsspec.core.url_to_fs(url, **(storage_options or {}))
            base = base.rstrip("/")
            found = filesystem.find(base) if filesystem.isdir(base) else None
        except (FileNotFoundError, PermissionError, OSError):
            found = None
        if found is None:
            raise FileNotFoundError(f"audio directory not found: {redact(url)}")
        relatives = (path[len(base) + 1 :] for path in found if path.startswith(base + "/"))
        files = {rel: f"{url}/{rel}" for rel in relatives}
    else:
        folder = Path(root)
        if not folder.is_dir():
            raise FileNotFoundError(f"audio directory not found: {folder}")
        files = {path.relative_to(folder).as_posix(): str(path) for path in folder.rglob("*") if path.is_file()}
    visible = (rel for rel in files if not any(part.startswith(".") for part in rel.split("/")))
    return {rel: files[rel] for rel in sorted(visible)}


def _audio(files: dict[str, str]) -> dict[str, str]:
    return {rel: where for rel, where in files.items() if PurePosixPath(rel).suffix.lower() in AUDIO_EXTENSIONS}


def discover_audio(root: str | Path, *, storage_options: dict | None = None) -> list[Path] | list[str]:
    """Audio files under ``root`` (recursively, by extension, hidden files skipped), sorted by
    their path relative to ``root``: local ``Path`` s, or full URLs when ``root`` is an fsspec
    URL (``s3://bucket/audio``, listed with ``storage_options``)."""
    found = _audio(list_files(root, storage_options=storage_options))
    return list(found.values()) if is_url(str(root)) else [Path(where) for where in found.values()]


def _text(node: ElementTree.Element, tag: str) -> str:
    child = node.find(tag)
    return (child.text or "").strip() if child is not None and child.text else ""


def read_birdclef_xml(paths: list[Path] | list[str], *, storage_options: dict | None = None
                      ) -> tuple[dict[str, dict[str, object]], dict[str, str], list[str]]:
    """Parse BirdCLEF 2017 per-recording XML files (root ``<Audio>``).

    Returns ``({file_name: {"label", "name", "background"}}, conflicts, notes)``; the key is
    ``FileName`` (a base name); ``conflicts[file_name]`` names files given two different
    ClassIds. Unreadable XML files become notes, not exceptions.
    """
    found: dict[str, dict[str, object]] = {}
    conflicts: dict[str, str] = {}
    notes: list[str] = []
    for path in paths:
        name = PurePosixPath(str(path)).name
        try:
            root = ElementTree.parse(io.BytesIO(_read_bytes(path, storage_options))).getroot()
        except (ElementTree.ParseError, OSError) as error:
            notes.append(f"skipped unreadable XML {name}: {redact(str(error))}")
            continue
        if root.tag != "Audio":
            continue
        file_name, class_id = _text(root, "FileName"), _text(root, "ClassId")
        if not file_name:
            notes.append(f"skipped XML {name}: no FileName")
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


def _read_bytes(path: str | Path, storage_options: dict | None) -> bytes:
    """The bytes of a local file or an fsspec URL."""
    if is_url(str(path)):
        import fsspec

        with fsspec.open(str(path), "rb", **(storage_options or {})) as handle:
            return handle.read()
    return Path(path).read_bytes()


class MetadataError(UserError):
    """A metadata file cannot be trusted; the message is one line naming the file and the line."""


# C0 control characters other than tab, line feed and carriage return (which delimit), and DEL
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BOM = b"\xef\xbb\xbf"


def _utf8(data: bytes, name: str) -> str:
    """``data`` as text (a UTF-8 byte-order mark dropped), or :class:`MetadataError` naming the byte."""
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as error:
        at = skip + error.start
        line = data[:at].count(b"\n") + 1
        raise MetadataError(f"{name}: line {line}: not UTF-8 (byte {at} is 0x{data[at]:02x}); "
                            "save the file as UTF-8") from None


def _csv_body(text: str, name: str) -> tuple[str, str]:
    """``(text with comment lines blanked, delimiter)``; control characters are refused by line.

    Comment lines become empty lines rather than disappearing, so line numbers stay those of
    the file. The delimiter is a tab when the first data line has a tab and no comma.
    """
    lines = text.split("\n")
    delimiter = None
    for number, line in enumerate(lines, start=1):
        found = _CONTROL.search(line)
        if found:
            raise MetadataError(f"{name}: line {number}: control character U+{ord(found.group()):04X} "
                                f"at column {found.start() + 1}")
        if line.lstrip().startswith("#"):
            lines[number - 1] = ""
        elif delimiter is None and line.strip():
            delimiter = "\t" if "\t" in line and "," not in line else ","
    return "\n".join(lines), delimiter or ","


def _check_row(row: list[str], first: int, last: int, delimiter: str, name: str) -> None:
    """Refuse a row that spans lines, has the wrong number of fields or a tab inside a field."""
    if last > first:
        raise MetadataError(f"{name}: line {first}: a quoted field runs on to line {last} "
                            "(an unterminated quote?)")
    if len(row) < 2 or any(field.strip() for field in row[3:]):
        shown = "tab" if delimiter == "\t" else repr(delimiter)
        raise MetadataError(f"{name}: line {first}: {len(row)} field(s), expected path,label[,background] "
                            f"separated by {shown}")
    if delimiter != "\t" and any("\t" in field.strip() for field in row):
        raise MetadataError(f"{name}: line {first}: control character U+0009 (tab) inside a field")


def read_csv(path: str | Path, *, storage_options: dict | None = None
             ) -> tuple[dict[str, tuple[str, tuple[str, ...]]], dict[str, str], list[str]]:
    """Parse ``path,label[,background]`` rows (optional header; background ids ``;``-separated).

    Accepted: a ``path`` header row, ``#`` comment lines, blank lines, a tab instead of the
    comma, a UTF-8 byte-order mark, quoted fields holding commas, trailing empty fields. Anything
    else stops with :class:`MetadataError` before any row is used: a row with fewer than two or
    more than three fields, a quoted field running over several lines (an unterminated quote
    would otherwise swallow every later row), control characters, or bytes that are not UTF-8.
    ``path`` may be an fsspec URL (read with ``storage_options``).

    Returns ``(labels, conflicts, notes)``: ``labels[relative_path] = (label, background)``;
    ``conflicts[relative_path]`` names paths listed twice with different labels.
    """
    name = redact(str(path))
    body, delimiter = _csv_body(_utf8(_read_bytes(path, storage_options), name), name)
    labels: dict[str, tuple[str, tuple[str, ...]]] = {}
    conflicts: dict[str, str] = {}
    reader = csv.reader(io.StringIO(body, newline=""), delimiter=delimiter, strict=True)
    first, header_allowed = 1, True
    try:
        for row in reader:
            line, first = first, reader.line_num + 1
            if not any(field.strip() for field in row):
                continue
            _check_row(row, line, reader.line_num, delimiter, name)
            if header_allowed and row[0].strip().lower() == "path":
                header_allowed = False
                continue
            header_allowed = False
            relative = Path(row[0].strip()).as_posix()  # pathlib drops "./" and doubled slashes
            label = row[1].strip()
            background = tuple(b.strip() for b in row[2].split(";") if b.strip()) if len(row) > 2 else ()
            if relative in labels and labels[relative][0] != label:
                conflicts[relative] = f"conflicting labels in {Path(name).name}: {labels[relative][0]!r} and {label!r}"
                continue
            labels[relative] = (label, background)
    except csv.Error as error:
        raise MetadataError(f"{name}: line {first}: malformed quoting ({error})") from None
    return labels, conflicts, []


def _metadata_is_file(metadata: str | Path, storage_options: dict | None) -> bool:
    """True for a file, False for a folder; ``FileNotFoundError`` when it is neither."""
    if is_url(str(metadata)):
        import fsspec

        filesystem, path = fsspec.core.url_to_fs(str(metadata), **(storage_options or {}))
        if filesystem.isfile(path):
            return True
        if filesystem.isdir(path):
            return False
    elif Path(metadata).exists():
        return Path(metadata).is_file()
    raise FileNotFoundError(f"metadata not found: {redact(str(metadata))}")


def label_recordings(audio_root: str | Path, *, metadata: str | Path | None = None,
                     source: str = "auto", storage_options: dict | None = None) -> Labelling:
    """List the recordings under ``audio_root`` with labels from ``source``.

    ``source``: ``xml`` (BirdCLEF XML files in ``metadata`` or, by default, under the audio
    root), ``csv`` (the ``metadata`` file, comma- or tab-separated), ``folders`` (first folder
    below the root is the class), ``none``, or ``auto`` (csv if ``metadata`` is a file other than
    .xml; xml if ``metadata`` is a folder or .xml file, or XML files sit under the root; else none).
    Unlabelled files get label ``""``; metadata rows whose audio is missing become failed entries.
    ``audio_root`` and ``metadata`` may be fsspec URLs (``s3://bucket/audio``), read with
    ``storage_options``; a recording's ``path`` is then its full URL.
    """
    if source not in LABEL_SOURCES:
        raise ValueError(f"label source must be one of {LABEL_SOURCES}, got {source!r}")
    remote = is_url(str(audio_root))
    root = str(audio_root).rstrip("/") if remote else str(Path(audio_root).resolve())
    every_file = list_files(root, storage_options=storage_options)
    metadata_is_file = _metadata_is_file(metadata, storage_options) if metadata else None
    metadata_name = PurePosixPath(redact(str(metadata))).name if metadata else ""
    if source == "auto":
        if metadata_is_file and not metadata_name.lower().endswith(".xml"):
            source = "csv"
        elif metadata or any(rel.lower().endswith(".xml") for rel in every_file):
            source = "xml"
        else:
            source = "none"
    if source == "csv" and not metadata:
        raise ValueError("--labels csv needs --metadata FILE.csv")

    relative = _audio(every_file)
    labels: dict[str, tuple[str, tuple[str, ...]]] = {}
    problems: dict[str, str] = {}
    names: dict[str, str] = {}
    notes: list[str] = []
    if source == "xml":
        if metadata_is_file:
            xml_files = [str(metadata)]
        else:
            listed = list_files(metadata, storage_options=storage_options) if metadata else every_file
            xml_files = [where for rel, where in listed.items() if rel.lower().endswith(".xml")]
        parsed, conflicts, notes = read_birdclef_xml(xml_files, storage_options=storage_options)
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
        labels, conflicts, notes = read_csv(metadata, storage_options=storage_options)  # type: ignore[arg-type]
        problems.update(conflicts)
        for rel in list(labels):
            if rel not in relative:
                problems[rel] = f"listed in {metadata_name} but not found under the audio directory"
                del labels[rel]
    elif source == "folders":
        for rel in relative:
            parts = rel.split("/")
            labels[rel] = (parts[0] if len(parts) > 1 else "", ())

    recordings = []
    for rel, path in relative.items():
        label, background = labels.get(rel, ("", ()))
        recordings.append(Recording(id=rel, path=path, label="" if rel in problems else label,
                                    background=background, problem=problems.get(rel, "")))
    for rel, problem in problems.items():
        if rel not in relative:
            recordings.append(Recording(id=rel, path=f"{root}/{rel}" if remote else str(Path(root) / rel),
                                        problem=problem))
    classes = sorted({r.label for r in recordings if r.label})
    unlabelled = sum(1 for r in recordings if not r.label and not r.problem)
    if unlabelled and source != "none":
        notes.append(f"{unlabelled} file(s) have no label in the metadata (stored with label -1)")
    return Labelling(recordings=recordings, classes=classes,
                     class_names=[names.get(c, c) for c in classes], notes=notes)
