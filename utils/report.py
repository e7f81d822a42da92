"""The results report: a timeline of every experiment and WORK/results/report.md.

The report reads only WORK/results (experiments.csv and the saved figures), so it can be
rewritten at any time and always describes what is recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from utils.baseline.baselines import BASELINES, IN_SESSION_BASELINES, ORACLE
from utils.core.columns import CHECKPOINT_S, GROUND_TRUTH
from utils.core.config import WorkLayout
from utils.core.errors import SessionlenError
from utils.core.plots import FIGURE_RUN_KEY, FIGURE_SAVED_KEY, figure_stamp, save_figure
from utils.core.results import load_comparisons, load_experiments, utc_now
from utils.core.skips import read_skips, skipped_section
from utils.core.stage_io import atomic_file
from utils.core.work_lock import locked_stage

REPORT_FILE = "report.md"
TIMELINE_FILE = "results_timeline.png"
STAGE_COLORS = {"baseline": "#1f77b4", "clusters": "#ff7f0e", "in_session": "#2ca02c"}
# The in-session stage normalizes by its own baseline (the user's median of sessions that lasted
# as long), not by user_mean: its points say so in the legend.
STAGE_LEGENDS = {"in_session": "in_session (÷ user_median_lasted)"}
ORACLE_COLOR = "#212121"
# Beyond this many experiments the timeline's x labels would overlap: show run positions only.
MAX_LABELLED = 60
TABLE_COLUMNS = ["stage", "model", "selected", "val_mae_s", "mae_s", "mae_ci_low",
                 "mae_ci_high", "normalized_mae", "headroom_captured", "headroom_ci_low",
                 "headroom_ci_high", "diff_vs_reference_s", "train_seconds"]
DISTRIBUTION_TABLE = ["stage", "model", "selected_distribution", "val_pinball_loss_s",
                      "pinball_loss_s", "pinball_ci_low", "pinball_ci_high", "coverage_80",
                      "interval_width_s"]
COMPARISON_TABLE = ["stage", "model", "versus", "diff_mae_s", "diff_ci_low", "diff_ci_high",
                    "verdict", CHECKPOINT_S]
# Below this share of test sessions that start exactly where a planted one does, the oracle
# is partly an estimate (sessions cut by estimated durations take the planted one in progress).
EXACT_SHARE_WARNING = 0.99
NO_RESULTS = "# sessionlen — results\n\nNo experiment recorded yet.\n\n"


def plot_results_timeline(experiments: pd.DataFrame) -> Figure:
    """Every recorded experiment in order: normalized MAE with its 95% interval, by stage.

    The dotted line at 1.0 is the user_mean baseline; the dashed line is the latest oracle.
    """
    if experiments.empty:
        raise SessionlenError("no experiments recorded yet: nothing to draw on the timeline")
    rows = experiments.reset_index(drop=True)
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.22 * len(rows) + 3), 4.5))
    for stage, color in STAGE_COLORS.items():
        mine = (rows["stage"] == stage).to_numpy() & (rows["model"] != ORACLE).to_numpy()
        ax.scatter(x[mine], rows["normalized_mae"][mine], color=color,
                   label=STAGE_LEGENDS.get(stage, stage), zorder=3)
        ax.vlines(x[mine], rows["normalized_mae_ci_low"][mine],
                  rows["normalized_mae_ci_high"][mine], color=color, linewidth=1, zorder=2)
    oracle = (rows["model"] == ORACLE).to_numpy()
    if oracle.any():
        ax.scatter(x[oracle], rows["normalized_mae"][oracle], color=ORACLE_COLOR, marker="x",
                   zorder=3)
        latest = float(rows["normalized_mae"][oracle].iloc[-1])
        ax.axhline(latest, color=ORACLE_COLOR, linestyle="--", label=f"oracle {latest:.3f}")
    ax.axhline(1.0, color="#9e9e9e", linestyle=":", label="user_mean (1.0)")
    if len(rows) <= MAX_LABELLED:
        ax.set_xticks(x, model_labels(rows), rotation=70, ha="right", fontsize=8)
    ax.set_xlabel("experiment (in the order recorded)")
    ax.set_ylabel("normalized MAE (model MAE / user_mean MAE)")
    ax.set_title("Results timeline")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    plt.close(fig)  # released from pyplot: a notebook shows it once, when a cell returns it
    return fig


def model_labels(rows: pd.DataFrame) -> pd.Series:
    """Model names told apart by dropout where a stage trained one network per dropout value,
    and by checkpoint where a stage predicts once a session has lasted that long."""
    dropout = [json.loads(p).get("dropout") if isinstance(p, str) else None
               for p in rows["params"]]
    checkpoint = rows[CHECKPOINT_S] if CHECKPOINT_S in rows else pd.Series(np.nan, rows.index)
    return pd.Series([(m if d is None else f"{m} (dropout {d:g})")
                      + ("" if pd.isna(e) else f" @ {e:g} s")
                      for m, d, e in zip(rows["model"], dropout, checkpoint, strict=True)],
                     index=rows.index)


def latest_runs(experiments: pd.DataFrame) -> pd.DataFrame:
    """The rows of each stage's most recently recorded run (its models share test rows)."""
    if experiments.empty:
        return experiments
    last = experiments.groupby("stage", sort=False)["run_id"].last()
    return experiments[experiments["run_id"].isin(last.to_numpy())].reset_index(drop=True)


def _cell(value: object) -> str:
    """One table cell: large numbers with thousands separators, ratios with 4 decimals."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if isinstance(value, float):
        if np.isnan(value):
            return ""
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4f}"
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame as a GitHub-flavoured markdown table (index not included)."""
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _data_line(raw: str | Path | None) -> str:
    """Which raw data the results come from, and whether an oracle was possible."""
    if not raw:
        return "Raw data: not given."
    truth = (Path(raw) / GROUND_TRUTH).is_dir()
    kind = "synthetic, with planted ground truth (oracle available)" if truth else \
        "no ground truth (no oracle)"
    return f"Raw data: `{raw}` ({kind})."


def _clusters_settings(rows: pd.DataFrame) -> list[str]:
    """A line per per-cluster model: clustering method, k, standardization, ARI."""
    lines = []
    for _, row in rows[rows["model"].str.startswith("cluster_")].iterrows():
        p = json.loads(row["params"])
        ari = p.get("adjusted_rand")
        lines.append(
            f"- `{row['model']}`: {p.get('clustering')} with k={p.get('clusters')} "
            f"({p.get('clusters_chosen_by', 'given')}) on "
            f"{', '.join(p.get('cluster_columns', []))}; standardize={p.get('standardize')}, "
            f"mix_std={p.get('mix_std')} (threshold {p.get('mix_std_threshold')} users); "
            f"own models for clusters {p.get('clusters_trained')}"
            + (f"; adjusted Rand vs planted archetypes {ari}" if ari else ""))
    return lines


def _section(title: str, rows: pd.DataFrame, text: str = "") -> list[str]:
    """A titled markdown table of `rows` (or a note when empty)."""
    body = markdown_table(rows[TABLE_COLUMNS]) if len(rows) else "_none recorded_"
    return [f"## {title}", "", *([text, ""] if text else []), body, ""]


def _figure_entry(path: Path, stamp: dict[str, str], latest_runs: set[str]) -> str:
    """A figure's heading, where it came from, and its link (path relative to results/)."""
    run, saved = stamp.get(FIGURE_RUN_KEY), stamp.get(FIGURE_SAVED_KEY, "unknown")
    if run is None:
        origin = f"Saved {saved}; not tied to a recorded run."
    elif run in latest_runs:
        origin = f"Run `{run}` (saved {saved}), as in the tables above."
    else:
        origin = (f"**Run `{run}` (saved {saved}): older than the tables above**; rerun its "
                  f"notebook to redraw it.")
    link = path.as_posix()
    return f"### {path.stem}\n\n{origin}\n\n[{link}]({link})\n\n![{path.stem}]({link})\n"


def _headline(rows: pd.DataFrame, compared: pd.DataFrame) -> list[str]:
    """Per stage: the model selected on validation, its test figures, and what the paired
    comparisons allow to say about it."""
    lines = ["## Headline", ""]
    checkpoint = rows[CHECKPOINT_S] if CHECKPOINT_S in rows else pd.Series(np.nan, rows.index)
    for (stage, point), mine in rows.groupby([rows["stage"], checkpoint], sort=False,
                                             dropna=False):
        chosen = mine[mine["selected"].astype(bool)]
        if chosen.empty:
            continue
        best = chosen.iloc[0]
        title = stage if pd.isna(point) else f"{stage}, the session has lasted {point:g} s"
        headroom = "" if pd.isna(best["headroom_captured"]) else (
            f", headroom captured {best['headroom_captured']:.2f} "
            f"[{best['headroom_ci_low']:.2f}, {best['headroom_ci_high']:.2f}]")
        lines.append(
            f"- **{title}**: `{best['model']}`, selected on validation (MAE "
            f"{best['val_mae_s']:,.0f} s): test MAE {best['mae_s']:,.0f} s "
            f"[{best['mae_ci_low']:,.0f}, {best['mae_ci_high']:,.0f}], normalized MAE "
            f"{best['normalized_mae']:.3f}{headroom}; reference `{best['reference']}` (the "
            f"best naive baseline on validation).")
        same = compared["stage"] == stage
        if CHECKPOINT_S in compared:
            same &= compared[CHECKPOINT_S].isna() if pd.isna(point) else \
                compared[CHECKPOINT_S] == point
        for _, row in compared[same].iterrows():
            lines.append(
                f"  - `{row['model']}` − `{row['versus']}`: {row['diff_mae_s']:+,.1f} s "
                f"[{row['diff_ci_low']:+,.1f}, {row['diff_ci_high']:+,.1f}]: {row['verdict']}")
    return [*lines, ""]


def _distribution_section(rows: pd.DataFrame) -> list[str]:
    """The distributional models' quantile scores (none for runs recorded before them)."""
    mine = rows[pd.to_numeric(rows["pinball_loss_s"], errors="coerce").notna()]
    if mine.empty:
        return []
    text = ("Quantiles q10/q50/q90 of each session's length. `selected_distribution` is the "
            "trained distributional model with the lowest validation pinball loss; on test: "
            "the mean pinball loss (s) with its 95% paired bootstrap interval, the share of "
            "sessions inside [q10, q90] (0.8 when calibrated) and the mean width q90 - q10 (s).")
    table = mine.sort_values(["stage", "pinball_loss_s"])[DISTRIBUTION_TABLE]
    table = table.assign(selected_distribution=table["selected_distribution"].map(
        lambda v: str(v).lower() in ("true", "1", "1.0")))
    picks = [f"- **{row['stage']}**: `{row['model']}`, selected on validation pinball loss "
             f"({row['val_pinball_loss_s']:,.0f} s): test pinball loss "
             f"{row['pinball_loss_s']:,.0f} s [{row['pinball_ci_low']:,.0f}, "
             f"{row['pinball_ci_high']:,.0f}], coverage_80 {row['coverage_80']:.3f}."
             for _, row in table[table["selected_distribution"]].iterrows()]
    return ["## Distributional models", "", text, "", *picks, *([""] if picks else []),
            markdown_table(table), ""]


def oracle_coverage(rows: pd.DataFrame) -> list[str]:
    """How the oracle's test sessions met the planted ones, per stage, with a warning when
    fewer than EXACT_SHARE_WARNING of them match a planted start exactly."""
    lines = []
    for _, row in rows[rows["model"].str.startswith(ORACLE)].iterrows():
        params = json.loads(row["params"])
        if "exact_matches" not in params:
            continue
        exact, total = int(params["exact_matches"]), int(params["test_sessions"])
        share = exact / total if total else 0.0
        where = row["stage"] if pd.isna(row.get(CHECKPOINT_S, np.nan)) else \
            f"{row['stage']} @ {row[CHECKPOINT_S]:g} s"
        lines.append(
            f"- {where}: {exact:,} of {total:,} test sessions ({share:.1%}) start "
            f"exactly at a planted session; {total - exact:,} were matched to the planted "
            f"session in progress at their start (estimated durations split or merge sessions)."
            + (f" **Warning: below {EXACT_SHARE_WARNING:.0%}, the oracle is partly an estimate."
               f"**" if share < EXACT_SHARE_WARNING else ""))
    return lines


def report_text(experiments: pd.DataFrame, comparisons: pd.DataFrame,
                figures: dict[Path, dict[str, str]], raw: str | Path | None) -> str:
    """The markdown report for these experiments, comparisons and figures.

    `figures` maps each figure's path relative to results/ to what its PNG records
    (`plots.figure_stamp`).
    """
    latest = latest_runs(experiments)
    names = latest["model"].copy()
    latest["model"] = model_labels(latest)
    compared = comparisons[comparisons["run_id"].isin(set(latest["run_id"]))]
    is_baseline = names.isin([*BASELINES, *IN_SESSION_BASELINES])
    is_oracle = names == ORACLE
    lines = [
        "# sessionlen — results", "",
        f"Generated {utc_now()}. {_data_line(raw)} {len(experiments)} experiments recorded in "
        f"`experiments.csv`; the tables show each stage's latest run. Every choice is made on "
        f"the validation split (the selected model, the reference baseline); test metrics are "
        f"reported, each with a 95% paired bootstrap interval over users. MAE and RMSE are in "
        f"seconds; normalized_mae = MAE / user_mean MAE on the same rows; headroom_captured = "
        f"(reference MAE - MAE) / (reference MAE - oracle MAE). A model is called better than "
        f"another only where the interval of their paired difference excludes zero.", "",
        *_headline(latest, compared),
        *_section("Results", latest.sort_values(["stage", CHECKPOINT_S, "mae_s"]),
                  "Trained models and baselines of both stages, best test MAE first within a "
                  "stage; `selected` is the validation pick."),
        "## Comparisons", "",
        markdown_table(compared[COMPARISON_TABLE]) if len(compared) else "_none recorded_", "",
        *_section("Baselines", latest[is_baseline].sort_values(["stage", CHECKPOINT_S,
                                                                 "mae_s"])),
        *_section("Oracle", latest[is_oracle],
                  "The planted conditional median: the best any model can do on average."),
        *oracle_coverage(latest[is_oracle]), "",
    ]
    lines += _distribution_section(latest)
    settings = _clusters_settings(latest)
    if settings:
        lines += ["## Per-cluster models", "", *settings, ""]
    lines += ["## Figures", ""]
    lines += [_figure_entry(p, figures[p], set(latest["run_id"])) for p in figures] \
        or ["_none saved_"]
    return "\n".join(lines) + "\n"


@locked_stage("results")
def write_report(work: str | Path, raw: str | Path | None = None) -> Path:
    """Redraw the timeline and write WORK/results/report.md atomically; return its path."""
    layout = WorkLayout(Path(work))
    experiments = load_experiments(layout.root)
    skipped = read_skips(layout.root)
    if experiments.empty and not skipped:
        raise SessionlenError(f"{layout.experiments}: no experiments recorded; run the "
                              f"baseline or clusters stage first")
    path = layout.results / REPORT_FILE
    text = _results_text(layout, experiments, raw) if len(experiments) else NO_RESULTS
    with atomic_file(path, "w", encoding="utf-8") as fh:
        fh.write(text + "\n".join(skipped_section(skipped)))
    return path


def _results_text(layout: WorkLayout, experiments: pd.DataFrame, raw: str | Path | None) -> str:
    """The timeline figure redrawn, then the report's text on the recorded experiments."""
    save_figure(plot_results_timeline(experiments), layout.figures / TIMELINE_FILE)
    figures = {p.relative_to(layout.results): figure_stamp(p)
               for p in sorted(layout.figures.glob("*.png"))}
    return report_text(experiments, load_comparisons(layout.root), figures, raw)
