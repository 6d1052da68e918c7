"""Every SERVE_* variable the chart sets is a real setting of service/settings.py."""

from __future__ import annotations

import pytest
import yaml

from service.settings import Settings
from tests.chart.chart_helpers import (
    CHART,
    CI_VALUES,
    PLATFORM_VALUES,
    find,
    one,
    render,
    server_container,
)
from tests.chart.test_render_validate import MATRIX

SETTINGS = {f"SERVE_{name.upper()}" for name in Settings.model_fields}
# The Redis URL variable is a value of its own (`redis.urlEnvName`): it must name the setting.
REDIS_URL_VAR = yaml.safe_load((CHART / "values.yaml").read_text())["redis"]["urlEnvName"]


def serve_vars(objs: list[dict]) -> set[str]:
    names = {e["name"] for e in server_container(objs).get("env", [])}
    for cm in find(objs, "ConfigMap", "server") + find(objs, "Secret", "server"):
        names |= set(cm.get("data", {})) | set(cm.get("stringData", {}))
    return {n for n in names if n.startswith("SERVE_")}


@pytest.mark.parametrize(
    "values, sets",
    [((), ()), *[((v,), ()) for v in PLATFORM_VALUES + CI_VALUES], *[((), m) for m in MATRIX]],
)
def test_chart_sets_only_real_settings(values, sets):
    names = serve_vars(render(values, sets))
    assert names, "no SERVE_ variable rendered"
    unknown = names - SETTINGS
    assert not unknown, f"not in Settings.model_fields: {sorted(unknown)}"


def test_rendered_settings_build_a_valid_settings_object(monkeypatch):
    """The values the chart renders parse: wrong types would stop the pod at start."""
    objs = render(("values-cpu.yaml",))
    env = {e["name"]: e["value"] for e in server_container(objs)["env"] if "value" in e}
    env |= one(objs, "ConfigMap")["data"]
    for key in list(Settings.model_fields):
        monkeypatch.delenv(f"SERVE_{key.upper()}", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.host == "0.0.0.0" and settings.port == 8000
    assert settings.strict is True and settings.weights == "imagenet"
    assert settings.max_batch_size == 16 and settings.log_format == "json"


def test_documented_settings_example_keys_are_real():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values["settings"]) <= SETTINGS


def test_redis_url_variable_is_a_real_setting():
    assert REDIS_URL_VAR in SETTINGS, (
        f"{REDIS_URL_VAR} vs {sorted(s for s in SETTINGS if 'REDIS' in s)}"
    )
