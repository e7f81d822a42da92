"""Every notebook's parameters cell states the defaults of utils.core.config, value for value.

The dataclasses are the one home of a default; a notebook's parameters cell must repeat it (it is
what papermill and a reader see), so changing a default in only one of the two places fails here.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import nbformat
import pytest

from utils.core import config
from utils.core.config import (
    ClusterModelParams,
    ClusterParams,
    CrawlParams,
    DisplayParams,
    InSessionParams,
    ModelParams,
    RunParams,
    SessionParams,
)
from utils.core.notebook_tools import stage_notebook_paths

# The dataclasses whose fields a notebook's parameters cell exposes.
NOTEBOOK_PARAMS: dict[str, tuple[type, ...]] = {
    "data_processing/1_get_unique_tracks": (RunParams, DisplayParams),
    "data_processing/2_get_track_metadata": (RunParams, CrawlParams),
    "data_processing/3_create_denormalized_users": (RunParams, DisplayParams),
    "baseline/1_create_summarized_user_session": (RunParams, SessionParams),
    "baseline/2_train_and_test_model": (RunParams, ModelParams, DisplayParams),
    "models_with_clusters/1_build_complete_vocab": (RunParams, DisplayParams),
    "models_with_clusters/2_build_session_data": (RunParams, DisplayParams),
    "models_with_clusters/3_build_user_profiles": (RunParams, ClusterParams),
    "models_with_clusters/4_cluster_analysis": (RunParams, ClusterParams, DisplayParams),
    "models_with_clusters/5_train_and_test_model": (RunParams, ClusterParams, ClusterModelParams),
    "models_with_clusters/6_in_session": (RunParams, InSessionParams),
}


def _key(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def parameters_cell(path: Path) -> dict[str, Any]:
    """The literal assignments of the notebook's `parameters`-tagged cell, in order."""
    nb = nbformat.read(path, as_version=4)
    (cell,) = [c for c in nb.cells
               if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    values: dict[str, Any] = {}
    for node in ast.parse(cell.source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.unparse(node)
        target = node.targets[0]
        assert isinstance(target, ast.Name), ast.unparse(node)
        values[target.id] = ast.literal_eval(node.value)
    return values


def defaults(cls: type) -> dict[str, Any]:
    """Each field's default, calling its default_factory where it has one."""
    return dataclasses.asdict(cls())


def test_every_stage_notebook_names_its_dataclasses() -> None:
    found = {_key(p) for p in stage_notebook_paths()}
    assert found == set(NOTEBOOK_PARAMS)
    assert len(found) == 11


@pytest.mark.parametrize("key", sorted(NOTEBOOK_PARAMS))
def test_parameters_cell_equals_the_dataclass_defaults(key: str) -> None:
    values = parameters_cell(config.PROJECT_ROOT / f"{key}.ipynb")
    classes = NOTEBOOK_PARAMS[key]
    for name, value in values.items():
        owners = [cls for cls in classes if name in defaults(cls)]
        assert owners, (f"{key}: parameter {name!r} is a field of none of "
                        f"{', '.join(c.__name__ for c in classes)}")
        for cls in owners:
            default = defaults(cls)[name]
            assert value == default, (
                f"{key}: {name} = {value!r} in the parameters cell, but {cls.__name__}."
                f"{name} defaults to {default!r}: change both or neither")


@pytest.mark.parametrize("key", sorted(NOTEBOOK_PARAMS))
def test_parameters_cell_has_the_dataclass_types(key: str) -> None:
    """The notebook's literals have the field types (StrictParams rejects any other)."""
    values = parameters_cell(config.PROJECT_ROOT / f"{key}.ipynb")
    for cls in NOTEBOOK_PARAMS[key]:
        fields = defaults(cls)
        cls.from_dict({name: value for name, value in values.items() if name in fields})


# Dataclasses the notebooks expose in full: a field missing from every parameters cell would be a
# knob nobody running the notebooks can set. CrawlParams and SessionParams keep CLI-only fields.
FULLY_EXPOSED = (RunParams, DisplayParams, ModelParams, ClusterParams, ClusterModelParams,
                 InSessionParams)


@pytest.mark.parametrize("cls", FULLY_EXPOSED, ids=lambda cls: cls.__name__)
def test_every_field_is_exposed_by_a_notebook(cls: type) -> None:
    exposed = {name for key, classes in NOTEBOOK_PARAMS.items() if cls in classes
               for name in parameters_cell(config.PROJECT_ROOT / f"{key}.ipynb")}
    assert set(defaults(cls)) - exposed == set()
