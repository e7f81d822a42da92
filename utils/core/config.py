"""The one config module: paths, the WORK layout, scales and hyperparameter dataclasses."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from utils.core.errors import SessionlenError
from utils.core.strict_params import StrictParams

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = PROJECT_ROOT / "data"
REAL_RAW_DIR = DATA_DIR / "raw" / "lastfm-dataset-1K"
SYNTHETIC_ROOT = DATA_DIR / "synthetic"
WORK_ROOT = PROJECT_ROOT / "work"
STAGE_FOLDERS = ("data_processing", "baseline", "models_with_clusters")

DEFAULT_SEED = 1
# Session-level laws of the synthetic generator (utils.synthetic.generate.MECHANICS), default first.
SYNTH_MECHANICS = ("standard", "variant")
SESSION_GAP_MINUTES = 30.0
LASTFM_API_URL = "http://ws.audioscrobbler.com/2.0/"
API_KEY_ENV = "LASTFM_API_KEY"
API_URL_ENV = "LASTFM_API_URL"
# User ids become folder names. A leading letter or digit keeps out ".", "..", hidden names and
# the "_"/"." names that Spark and Hadoop skip as bookkeeping; 200 characters stay below every
# filesystem's 255-byte name limit.
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$"


@dataclass(frozen=True)
class Scale:
    """A named dataset size: how many synthetic users, and how the notebooks are run for it.

    What a scale changes in the notebooks is only what it must: `min_rows` and `min_sessions`
    are the clustering eligibility thresholds a run at this scale applies, to any data:
    ClusterParams' (the original's 500 plays and 30 train sessions), shrunk in proportion to the
    shorter histories of the smaller scales. `epochs`, `batch_size`, `patience` and
    `lgbm_learning_rate` None leave each notebook its own default. On the full scale's twenty
    times the sessions of demo, a network's epoch is five times the optimizer steps of a demo
    epoch even with four times the batch, and the validation loss settles within two to four
    epochs: a patience of one epoch waits about as many steps as demo's six. LightGBM's larger
    steps need about a third of the rounds, the slow part of its fit, for a validation MAE
    within a few seconds of the smaller steps'. `refit_networks` False skips the networks'
    refit on train and validation rows (ModelParams): it would train every network a second
    time for its kept epochs on a fifth more rows (the networks' training is about two thirds
    of the baseline stage at full scale), where the train split's 370K sessions leave the least
    fitting noise for more rows to remove; LightGBM's refit runs beside the networks and stays.
    `head_units` sets the networks' ReLU layer beside their linear read-out: its weights need
    the full scale's sessions, and overfit demo's (utils.baseline.models).
    utils.runner is the one place these reach the notebooks.
    """

    name: str
    users: int
    plays_factor: float
    epochs: int | None = None
    batch_size: int | None = None
    patience: int | None = None
    lgbm_learning_rate: float | None = None
    refit_networks: bool | None = None
    head_units: int | None = None

    @property
    def min_rows(self) -> int:
        return math.ceil(ClusterParams.min_rows * self.plays_factor)

    @property
    def min_sessions(self) -> int:
        return math.ceil(ClusterParams.min_sessions * self.plays_factor)


# plays_factor scales each user's history length; `full` matches the real dataset (19.15M plays).
SCALES: dict[str, Scale] = {
    "tiny": Scale("tiny", users=24, plays_factor=0.05, epochs=2),
    "demo": Scale("demo", users=200, plays_factor=0.25),
    "full": Scale("full", users=992, plays_factor=1.0, batch_size=1024, patience=1,
                  lgbm_learning_rate=0.1, refit_networks=False, head_units=32),
}


def get_scale(name: str) -> Scale:
    """Return the scale called `name`, or a one-line error listing the valid names."""
    if name not in SCALES:
        raise SessionlenError(f"unknown scale {name!r}; valid scales: {', '.join(SCALES)}")
    return SCALES[name]


def synthetic_dir(scale: str, seed: int = DEFAULT_SEED, mechanics: str = SYNTH_MECHANICS[0]
                  ) -> Path:
    """Where `make run` generates raw synthetic data for a scale, seed and generator law."""
    suffix = "" if mechanics == SYNTH_MECHANICS[0] else f"-{mechanics}"
    return SYNTHETIC_ROOT / f"{scale}-{seed}{suffix}"


def resolve_work(scale: str, work_dir: str | Path | None = None) -> Path:
    """The WORK directory: `work_dir` when given, else work/<scale> under the project."""
    get_scale(scale)
    return Path(work_dir) if work_dir else WORK_ROOT / scale


def resolve_raw(scale: str, raw_dir: str | Path | None = None, seed: int = DEFAULT_SEED,
                mechanics: str = SYNTH_MECHANICS[0]) -> Path:
    """The raw data: `raw_dir` when given, else the real dataset if present, else synthetic.

    Asking for a non-default generator law asks for synthetic data, real data present or not.
    """
    get_scale(scale)
    if raw_dir:
        return Path(raw_dir)
    real = (REAL_RAW_DIR / "userid-timestamp-artid-artname-traid-traname.tsv").is_file()
    if real and mechanics == SYNTH_MECHANICS[0]:
        return REAL_RAW_DIR
    return synthetic_dir(scale, seed, mechanics)


@dataclass(frozen=True)
class WorkLayout:
    """Every path inside a WORK directory, as DESIGN.md fixes them."""

    root: Path

    @property
    def tracks(self) -> Path:
        return self.root / "tracks"

    @property
    def unique_tracks(self) -> Path:
        return self.tracks / "unique_tracks.csv"

    @property
    def track_metadata(self) -> Path:
        return self.tracks / "track_metadata.csv"

    @property
    def crawl_cache(self) -> Path:
        return self.root / "cache" / "lastfm_track_info.sqlite"

    @property
    def user_dir(self) -> Path:
        return self.root / "user_dir"

    @property
    def summary_dir(self) -> Path:
        return self.root / "summary_dir"

    @property
    def final_dir(self) -> Path:
        return self.root / "final_dir"

    @property
    def vocab(self) -> Path:
        return self.final_dir / "vocab"

    @property
    def user_profile_cluster(self) -> Path:
        return self.final_dir / "user_profile_cluster.csv"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def experiments(self) -> Path:
        return self.results / "experiments.csv"

    @property
    def comparisons(self) -> Path:
        return self.results / "comparisons.csv"

    @property
    def figures(self) -> Path:
        return self.results / "figures"

    @property
    def rejects(self) -> Path:
        return self.root / "rejects"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"


@dataclass(frozen=True)
class RunParams(StrictParams):
    """Where and how every notebook runs: what `sessionlen run` passes to each of them.

    Empty `work_dir` and `raw_dir` mean the scale's defaults (resolve_work, resolve_raw).
    """

    scale: str = "demo"
    work_dir: str = ""
    raw_dir: str = ""
    seed: int = DEFAULT_SEED
    engine: typing.Literal["local", "spark"] = "local"


@dataclass(frozen=True)
class DisplayParams(StrictParams):
    """What the notebooks show, never what they compute or write to WORK.

    `top_n`: the most played tracks data_processing/1 lists; `sample_rows`: the rows shown by
    data_processing/3 and (from split `sample_split`) models_with_clusters/2; `top_names`: the
    most frequent names per vocabulary in models_with_clusters/1; `elbow_k_max`,
    `silhouette_k`, `plot_x` and `plot_y`: the figures of models_with_clusters/4;
    `survival_examples`: the listeners whose survival curves baseline/2 draws.
    """

    top_n: int = 20
    sample_rows: int = 10
    top_names: int = 10
    sample_split: str = "train"
    elbow_k_max: int = 10
    silhouette_k: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6])
    plot_x: str = "average_session_length"
    plot_y: str = "total_sessions"
    survival_examples: int = 3


@dataclass(frozen=True)
class SessionParams(StrictParams):
    """The session rule and the split (DESIGN.md, 'Session rule' and 'Evaluation protocol').

    The fractions apply to `chrono`; `seed` is the original's fixed 80/10/10 split of users.
    """

    gap_minutes: float = SESSION_GAP_MINUTES
    split: typing.Literal["chrono", "seed"] = "chrono"
    train_fraction: float = 0.7
    validate_fraction: float = 0.1
    seed: int = DEFAULT_SEED


@dataclass(frozen=True)
class CrawlParams(StrictParams):
    """The track.getInfo crawler. `use_api` False estimates every duration offline even when an
    API key is set (data_processing/2)."""

    rate: float = 5.0
    concurrency: int = 4
    limit: int | None = None
    timeout_s: float = 10.0
    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    autocorrect: int = 1
    default_duration_s: float = 240.0
    use_api: bool = True


@dataclass(frozen=True)
class ModelParams(StrictParams):
    """baseline/2_train_and_test_model: the networks (the original's knobs plus real sequences
    and a seed), the LightGBM search, the quantile models, and the splits in each role.

    Each network reads the user's last `sequence_length` sessions and reads its prediction out
    linearly and through a ReLU layer of `head_units` units beside it (0: linear only).
    `compare_networks` trains the GRU, LSTM and layered LSTM side by side (plus the network the
    flags name), False only the one the flags name. `peer_groups` is passed to the start-time
    features (None: chosen by BIC on train users). LightGBM fits every combination of
    `lgbm_num_leaves` and `lgbm_feature_fraction` and keeps the one with the lowest validation
    MAE; the quantile LightGBM reuses that choice, the quantile network trains for at most
    `quantile_epochs`.
    Validation scores every model as it was chosen; the test rows are predicted by the chosen
    LightGBM refit on train and validation rows, and by each network refit the same way if
    `refit_networks` (the full scale turns it off: see Scale).
    """

    model_lstm: bool = False
    layered: bool = False
    no_layers: int = 2
    dropout: list[float] = field(default_factory=lambda: [0.0, 0.2])
    loss_func: str = "mae"
    optimizer: str = "adam"
    hidden_dim: int = 8
    head_units: int = 0
    batch_size: int = 256
    epochs: int = 30
    sequence_length: int = 10
    patience: int = 6
    learning_rate: float = 0.005
    refit_networks: bool = True
    compare_networks: bool = True
    peer_groups: int | None = None
    train_file: str = "train"
    validation_file: str = "validate"
    test_file: str = "test"
    lgbm_learning_rate: float = 0.03
    lgbm_num_leaves: list[int] = field(default_factory=lambda: [4, 16])
    lgbm_feature_fraction: list[float] = field(default_factory=lambda: [0.3, 0.8])
    lgbm_min_child_samples: int = 200
    lgbm_max_rounds: int = 3000
    quantile_levels: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    quantile_epochs: int = 12
    seed: int = DEFAULT_SEED


@dataclass(frozen=True)
class ClusterParams(StrictParams):
    """The models_with_clusters stage: eligibility, clustering and standardization.

    `clusters` None chooses the number of clusters by silhouette on the train profiles.
    """

    clusters: int | None = None
    use_spectral_clustering: bool = False
    cluster_columns: list[str | int] = field(
        default_factory=lambda: ["average_session_length", "median_session_length",
                                 "total_sessions"]
    )
    standardize: bool = True
    mix_std: bool = False
    mix_std_threshold: int = 200
    min_rows: int = 500
    min_sessions: int = 30
    max_average_length: float = 20000.0
    min_cluster_users: int = 5
    seed: int = DEFAULT_SEED


@dataclass(frozen=True)
class ClusterModelParams(StrictParams):
    """models_with_clusters/5_train_and_test_model: the model trained once on every user and once
    per cluster.

    `model` is "lightgbm", "gru" or "lstm". `lgbm_*` are its one LightGBM setting, and the
    defaults of utils.baseline.boosting.BoostingSettings; the other knobs mean what ModelParams'
    of the same name do, with one `dropout` value.
    """

    model: str = "lightgbm"
    sequence_length: int = 10
    peer_groups: int | None = None
    lgbm_learning_rate: float = 0.03
    lgbm_num_leaves: int = 4
    lgbm_min_child_samples: int = 300
    lgbm_max_rounds: int = 3000
    hidden_dim: int = 8
    head_units: int = 0
    dropout: float = 0.0
    loss_func: str = "mae"
    optimizer: str = "adam"
    batch_size: int = 256
    epochs: int = 30
    patience: int = 6
    learning_rate: float = 0.005
    seed: int = DEFAULT_SEED


@dataclass(frozen=True)
class InSessionParams(StrictParams):
    """The in-session stage (models_with_clusters/6_in_session): predictions made once a session
    has lasted `checkpoints` seconds, from the start-time features and the plays so far.

    Kept small so that the stage adds about a minute to a demo-scale run: one recurrent layer of
    `hidden_dim` units over the last `max_plays` plays, small embeddings of the most frequent
    `max_artist_ids` artists and `max_track_ids` tracks (rarer names share one id), early
    stopping after `patience` epochs without a better validation loss. `lgbm_*` configure the
    LightGBM model on the summarized plays (L1 objective, early stopping on validation).
    `peer_groups` is passed to the start-time features (None: chosen by BIC on train users).
    The network's validation loss is lowest after two or three epochs and then rises while the
    train loss keeps falling (track embeddings memorize), so the patience is short and the track
    vocabulary small; 20 plays against 40 changed its validation MAE by under 10 s at each
    checkpoint on the demo data and halved its training time. Both models fit on at most
    `max_train_sessions` of a checkpoint's train sessions (a seeded sample when there are more;
    the baselines use every one): at full scale a checkpoint has up to 307K, where a LightGBM
    fit on all of them cost several minutes, and a demo-scale checkpoint has under 20K.
    """

    checkpoints: list[int] = field(default_factory=lambda: [600, 1800, 3600])
    cell: typing.Literal["gru", "lstm"] = "gru"
    max_plays: int = 20
    hidden_dim: int = 16
    artist_embedding: int = 4
    track_embedding: int = 4
    max_artist_ids: int = 2000
    max_track_ids: int = 1000
    dropout: float = 0.0
    batch_size: int = 256
    epochs: int = 30
    patience: int = 2
    learning_rate: float = 0.003
    lgbm_learning_rate: float = 0.03
    lgbm_num_leaves: int = 8
    lgbm_min_child_samples: int = 100
    lgbm_max_rounds: int = 2000
    lgbm_early_stopping_rounds: int = 100
    max_train_sessions: int = 100_000
    peer_groups: int | None = None
    seed: int = DEFAULT_SEED
