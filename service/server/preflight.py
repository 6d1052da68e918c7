"""What the supervisor checks before it starts anything: the ``SERVE_*`` variables and the files
they name. A problem found here stops the pod at once (exit ``BAD_SETTINGS``) with one line per
problem naming the variable, instead of a traceback, or a child that dies and is restarted until
the supervisor gives up, or a pod that never turns ready.

Like the supervisor, it imports neither TensorFlow nor the web framework.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from ..errors import StartupError
from ..settings import Settings

# The exit status of a pod refused for its settings (3: the backend or the weights, as uvicorn
# answers a failed startup; 1: the pod's processes kept dying).
BAD_SETTINGS = 2

PREFIX = "SERVE_"
# Settings whose value is never quoted back (logs reach people a Secret does not).
SECRETS = frozenset({"auth_tokens", "callback_secret"})


class SettingsInvalid(StartupError):
    """Settings the service cannot start with; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def variable(field: str) -> str:
    """The environment variable of a setting."""
    return PREFIX + field.upper()


def load_settings() -> Settings:
    """The settings from the environment, checked with the files they name.

    Raises:
        SettingsInvalid: every problem found, each naming its ``SERVE_*`` variable.
    """
    try:
        settings = Settings()
    except ValidationError as exc:
        raise SettingsInvalid([_describe(error) for error in exc.errors()]) from None
    problems = check_files(settings)
    if problems:
        raise SettingsInvalid(problems)
    return settings


def _describe(error: ErrorDetails) -> str:
    """A pydantic error in the terms of the environment: ``SERVE_PORT='abc': ...``."""
    message = str(error["msg"]).removeprefix("Value error, ")
    loc = error["loc"]
    if not loc:  # a check across settings: its message names the variables
        return message
    field = str(loc[0])
    name = variable(field)
    if field in SECRETS:
        return f"{name}: {message[:1].lower()}{message[1:]}"
    given = error.get("input")
    if len(loc) > 1 or not isinstance(given, str):  # an item of a list: the whole value
        given = _environ_value(name)
    return f"{name}={given!r}: {message[:1].lower()}{message[1:]}"


def _environ_value(name: str) -> str | None:
    # pydantic-settings matches the names case-insensitively.
    return next((v for k, v in os.environ.items() if k.upper() == name), None)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``SERVE_*`` variable that is no setting (a typo is otherwise silently
    ignored), with the closest setting's name."""
    known = [variable(field) for field in Settings.model_fields]
    warnings = []
    for key in sorted(environ):
        name = key.upper()
        if not name.startswith(PREFIX) or name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"{key} is not a setting and is ignored{hint}")
    return warnings


def check_files(settings: Settings) -> list[str]:
    """The files the settings name: they must be there and readable, the pipelines file valid
    and naming ``SERVE_PIPELINE``."""
    from ..auth import load_tokens
    from ..pipeline.config import PipelineConfigError, load_pipelines

    problems = []
    try:
        load_tokens(settings)
    except ValueError as exc:
        problems.append(str(exc))
    if settings.labels_file:
        problems += _readable(variable("labels_file"), settings.labels_file)
    try:
        specs = load_pipelines(settings.pipelines_file)
    except PipelineConfigError as exc:
        problems.append(f"{variable('pipelines_file')}: {' '.join(str(exc).split())}")
        return problems
    if settings.pipeline not in specs:
        problems.append(
            f"{variable('pipeline')}={settings.pipeline!r}: no such pipeline; "
            f"configured: {list(specs)}"
        )
    for name, spec in specs.items():
        if spec.labels_file:
            where = f"{variable('pipelines_file')}: pipeline {name!r}: labels"
            problems += _readable(where, spec.labels_file)
    return problems


def weight_files(settings: Settings) -> list[tuple[str, str]]:
    """The model files the pod loads, each with where it is named: ``SERVE_WEIGHTS`` and the
    pipelines file's model stages (``file``, a weights file)."""
    from ..pipeline.config import load_pipelines

    files = []
    if settings.weights not in ("imagenet", "random"):
        files.append((variable("weights"), settings.weights))
    for name, spec in load_pipelines(settings.pipelines_file).items():
        for stage in spec.models:
            path = stage.file or stage.weights
            if path and path not in ("imagenet", "random"):
                where = f"{variable('pipelines_file')}: pipeline {name!r}: stage {stage.name!r}"
                files.append((where, path))
    return files


def _readable(where: str, path: str) -> list[str]:
    try:
        with Path(path).open("rb") as f:
            f.read(1)
    except OSError as exc:
        return [f"{where} {path!r}: {exc.strerror}"]
    return []
