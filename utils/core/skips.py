"""Notebooks a pipeline run skipped because the data is too small for them.

The runner records each skip in WORK/results/skipped_notebooks.json as it happens, and clears the
file when a run starts; the report lists what it holds, so a run whose last notebooks were skipped
still says why its results stop where they do.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from utils.core.config import WorkLayout
from utils.core.errors import SessionlenError
from utils.core.stage_io import write_json_atomic
from utils.core.work_lock import stage_lock

SKIPS_FILE = "skipped_notebooks.json"


@dataclass(frozen=True)
class SkipNote:
    """One skipped notebook (folder/name) and the one-line reason its data was too small."""

    notebook: str
    reason: str


def skips_path(work: str | Path) -> Path:
    """WORK/results/skipped_notebooks.json."""
    return WorkLayout(Path(work)).results / SKIPS_FILE


def read_skips(work: str | Path) -> list[SkipNote]:
    """The notebooks the latest run skipped (none when it skipped none or no run recorded any)."""
    path = skips_path(work)
    if not path.is_file():
        return []
    try:
        return [SkipNote(str(n["notebook"]), str(n["reason"]))
                for n in json.loads(path.read_text(encoding="utf-8"))]
    except (ValueError, KeyError, TypeError) as exc:
        raise SessionlenError(f"{path}: unreadable skip notes ({exc}); delete it") from exc


def clear_skips(work: str | Path) -> None:
    """Forget the skips of an earlier run (a new run starts with none)."""
    with stage_lock(WorkLayout(Path(work)).results, exclusive=True):
        skips_path(work).unlink(missing_ok=True)


def record_skip(work: str | Path, note: SkipNote) -> None:
    """Add a skipped notebook to the run's notes."""
    with stage_lock(WorkLayout(Path(work)).results, exclusive=True):
        notes = [*read_skips(work), note]
        write_json_atomic(skips_path(work), [asdict(n) for n in notes])


def skipped_section(notes: list[SkipNote]) -> list[str]:
    """The report's markdown section on skipped notebooks (no lines when none was skipped)."""
    if not notes:
        return []
    return ["## Skipped notebooks", "",
            "The latest `sessionlen run` skipped these notebooks because the data is too small "
            "for them (with `--strict` it fails instead); their results are absent above.", "",
            *[f"- `{n.notebook}`: {n.reason}" for n in notes], ""]
