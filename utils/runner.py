"""The pipeline runner: executes the stage notebooks in order with papermill."""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from utils.core import columns, config
from utils.core.errors import DatasetTooSmallError, SessionlenError, WorkBusyError
from utils.core.skips import SkipNote, clear_skips, record_skip
from utils.core.work_lock import acting_as
from utils.report import write_report

if TYPE_CHECKING:
    from papermill.exceptions import PapermillExecutionError

NOTEBOOK_NAME = re.compile(r"^(\d+)_.+\.ipynb$")
# The project kernel that `make` installs into the venv; every committed notebook names it.
KERNEL_NAME = "sessionlen"
# The kernel runs on loopback; its start-up warning about unencrypted TCP is noise in a run's log.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]


def prepare_raw(scale: str, raw_dir: str | Path | None = None, seed: int = config.DEFAULT_SEED,
                mechanics: str = config.SYNTH_MECHANICS[0]) -> Path:
    """The raw data directory for a run, generating the synthetic dataset if it is the default."""
    raw = config.resolve_raw(scale, raw_dir, seed, mechanics)
    if raw_dir:
        if not (raw / columns.PLAYS_FILE).is_file():
            raise SessionlenError(f"{raw}: no {columns.PLAYS_FILE} in the raw data directory")
        return raw
    if not (raw / columns.PLAYS_FILE).is_file():
        from utils.synthetic.generate import format_calibration, generate_dataset

        print(f"generating the synthetic {scale} dataset (seed {seed}) in {raw}", flush=True)
        print(format_calibration(generate_dataset(raw, scale=scale, seed=seed,
                                                  mechanics=mechanics)), flush=True)
    return raw


def scale_overrides(scale: config.Scale) -> dict[str, Any]:
    """The notebook parameters a scale sets (config.Scale): eligibility thresholds always,
    epochs, batch size, patience, LightGBM's learning rate, the networks' refit and ReLU layer
    where the scale has its own."""
    own = ("epochs", "batch_size", "patience", "lgbm_learning_rate", "refit_networks",
           "head_units")
    return {"min_rows": scale.min_rows, "min_sessions": scale.min_sessions,
            **{name: value for name in own if (value := getattr(scale, name)) is not None}}


def stage_notebooks(root: Path = config.PROJECT_ROOT) -> list[Path]:
    """Every stage notebook, stage by stage in DESIGN.md order, numbered order within a stage."""
    found: list[Path] = []
    for stage in config.STAGE_FOLDERS:
        numbered = [
            (int(m.group(1)), p) for p in (root / stage).glob("*.ipynb")
            if (m := NOTEBOOK_NAME.match(p.name))
        ]
        found.extend(p for _, p in sorted(numbered))
    return found


def notebook_parameters(notebook: Path, values: dict[str, Any]) -> dict[str, Any]:
    """The subset of `values` that the notebook's `parameters` cell declares."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    return {name: value for name, value in values.items() if name in declared}


@dataclass
class PrefixedLines:
    """A writable stream that forwards whole lines to `target`, each behind `prefix`.

    Papermill hands over a notebook's output as the kernel sends it, in pieces; lines are
    completed before they are forwarded so that two sources never interleave within a line.
    """

    prefix: str
    target: TextIO
    pending: str = field(default="", init=False)

    def write(self, text: str) -> int:
        """Buffer `text`, forwarding every line it completes."""
        *lines, self.pending = (self.pending + text.replace("\r\n", "\n")).split("\n")
        for line in lines:
            # A progress bar redraws its line with carriage returns: show its latest state.
            latest = line.rsplit("\r", 1)[-1]
            self.target.write(f"{self.prefix} {latest}\n")
        return len(text)

    def flush(self) -> None:
        """Flush the target; an unfinished line waits for its end or for `close`."""
        self.target.flush()

    def close(self) -> None:
        """Forward what is left of an unfinished last line."""
        if self.pending:
            self.write("\n")
        self.target.flush()


@dataclass(frozen=True)
class RunPaths:
    """Where a run left its outputs."""

    raw: Path
    work: Path
    notebooks: Path
    figures: Path
    experiments: Path
    report: Path
    skipped: tuple[SkipNote, ...] = ()


def run_pipeline(
    raw: str | Path | None = None,
    work: str | Path | None = None,
    scale: str = config.RunParams.scale,
    engine: str = config.RunParams.engine,
    seed: int = config.RunParams.seed,
    notebooks: list[Path] | None = None,
    mechanics: str = config.SYNTH_MECHANICS[0],
    strict: bool = False,
) -> RunPaths:
    """Execute the notebooks in order; stop at the first failure naming the notebook and error.

    A notebook whose data is too small (DatasetTooSmallError) is skipped and the run goes on,
    unless `strict`; the skips are printed at the end and listed in the report.
    """
    import papermill
    from jupyter_client.kernelspec import NoSuchKernel
    from papermill.exceptions import PapermillExecutionError

    scale_cfg = config.get_scale(scale)
    # Absolute: each notebook runs in its own folder, where a relative path means another place.
    raw_path = prepare_raw(scale, raw, seed, mechanics).absolute()
    layout = config.WorkLayout(config.resolve_work(scale, work).absolute())
    paths = RunPaths(raw_path, layout.root, layout.notebooks, layout.figures, layout.experiments,
                     layout.results / "report.md")
    print(f"raw data: {raw_path}\nWORK: {layout.root}", flush=True)
    # Every other notebook parameter keeps its default from utils.core.config; this is the one
    # place where a scale overrides some of them.
    injected = {
        **config.RunParams(scale=scale, work_dir=str(layout.root), raw_dir=str(raw_path),
                           seed=seed, engine=engine).to_dict(),
        **scale_overrides(scale_cfg),
    }
    clear_skips(layout.root)
    skipped: list[SkipNote] = []
    for notebook in notebooks or stage_notebooks():
        target = layout.notebooks / notebook.parent.name / notebook.name
        target.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        name = f"{notebook.parent.name}/{notebook.stem}"
        print(f"running {name} ...", flush=True)
        out, err = PrefixedLines(f"[{name}]", sys.stdout), PrefixedLines(f"[{name}]", sys.stderr)
        try:
            with acting_as(f"sessionlen run: {notebook.parent.name}/{notebook.name}"):
                papermill.execute_notebook(
                    str(notebook), str(target), parameters=notebook_parameters(notebook, injected),
                    kernel_name=KERNEL_NAME, cwd=str(notebook.parent), progress_bar=False,
                    log_output=False, stdout_file=out, stderr_file=err,
                    extra_arguments=KERNEL_ARGUMENTS,
                )
        except PapermillExecutionError as exc:
            skipped.append(skip_or_fail(exc, notebook, target, strict))
            record_skip(layout.root, skipped[-1])
            print(f"  skipped: {skipped[-1].reason}", flush=True)
            continue
        except NoSuchKernel as exc:
            raise SessionlenError(
                f"the project kernel {KERNEL_NAME!r} is not installed; run `make run` once, or "
                f"`python -m ipykernel install --sys-prefix --name {KERNEL_NAME}` in the venv"
            ) from exc
        finally:
            out.close()
            err.close()
        print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)
    paths = dataclasses.replace(paths, skipped=tuple(skipped))
    if skipped:
        # The report is written by the last notebook, which may be among the skipped ones.
        write_report(layout.root, raw_path)
    _print_outputs(paths)
    _print_skips(paths.skipped)
    return paths


def skip_or_fail(exc: PapermillExecutionError, notebook: Path, target: Path, strict: bool
                 ) -> SkipNote:
    """A skip note when the notebook's data was too small (and not `strict`); else the error.

    Told apart by the exception's class name as the kernel reports it, never by its text.
    """
    name = f"{notebook.parent.name}/{notebook.name}"
    if exc.ename == WorkBusyError.__name__:
        raise WorkBusyError(f"notebook {name}: {exc.evalue}") from exc
    too_small = exc.ename == DatasetTooSmallError.__name__
    if too_small and not strict:
        return SkipNote(name, exc.evalue)
    hint = " (--strict: data too small for a notebook is an error)" if too_small else ""
    raise SessionlenError(
        f"notebook {name} failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue} "
        f"(executed copy: {target}){hint}") from exc


def _print_skips(skipped: tuple[SkipNote, ...]) -> None:
    """The run's skipped notebooks and why, after the summary of outputs."""
    if not skipped:
        return
    lines = [f"skipped {len(skipped)} notebook(s): the data is too small for them "
             f"(--strict makes this an error); the report lists them too"]
    lines += [f"  {note.notebook}: {note.reason}" for note in skipped]
    print("\n".join(lines), flush=True)


def _print_outputs(paths: RunPaths) -> None:
    """Tell the user where everything is."""
    lines = [
        "pipeline finished",
        f"  raw data:           {paths.raw}",
        f"  WORK:               {paths.work}",
        f"  executed notebooks: {paths.notebooks}",
        f"  figures:            {paths.figures}",
        f"  results table:      {paths.experiments}",
    ]
    if paths.report.exists():
        lines.append(f"  report:             {paths.report}")
    print("\n".join(lines), file=sys.stdout, flush=True)
