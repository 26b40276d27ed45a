"""Config: YAML, `${ENV}`, contexts, precedence, masking, and the `ado config` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ado_ray.cli import main
from ado_ray.config import build_config, interpolate
from ado_ray.errors import ConfigError

ISSUE_EXAMPLE = """
limiter: {backend: redis, url: "${REDIS_URL:-redis://127.0.0.1:6379/0}"}
limits:
  command:
    requests: ["5/2s", "1000/1d"]
    concurrency: 3
  claude:subscription:
    requests: ["200/5h"]
    tokens: "400000/1m"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ado.yaml"
    path.write_text(text)
    return path


def test_interpolation_with_defaults_and_a_clear_error_for_missing_variables() -> None:
    env = {"HOST": "db"}
    assert interpolate({"a": ["${HOST}:5432", "${PORT:-6379}"]}, env) == {"a": ["db:5432", "6379"]}
    with pytest.raises(ConfigError, match=r"state: \$\{DB_URL\} is not set"):
        interpolate({"state": "${DB_URL}"}, env)


def test_the_issue_example_loads(tmp_path: Path) -> None:
    config = build_config(write(tmp_path, ISSUE_EXAMPLE), env={})
    assert config.limiter.backend == "redis" and config.limiter.url == "redis://127.0.0.1:6379/0"
    assert config.limits["command"].concurrency == 3
    assert [w.text for w in config.limits["command"].windows] == ["5/2s", "1000/1d"]
    assert config.limits["claude:subscription"].tokens == "400000/1m"


def test_precedence_defaults_file_context_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "parallel: 3\nname: from-file\ncontexts:\n  big: {parallel: 5}\n")
    assert build_config(None, env={}, cwd=tmp_path).parallel == 3  # ./ado.yaml found
    assert build_config(path, env={}).parallel == 3
    assert build_config(path, env={}, context="big").parallel == 5
    config = build_config(path, {"parallel": 9}, env={}, context="big")
    assert (config.parallel, config.name) == (9, "from-file")


def test_contexts_builtin_kubernetes_needs_its_urls(tmp_path: Path) -> None:
    env = {
        "ADO_STATE_URL": "postgresql://ado:pw@db/ado",
        "ADO_REDIS_URL": "redis://cache:6379/0",
        "ADO_RAY_ADDRESS": "ray://head:10001",
    }
    config = build_config(None, env=env, cwd=tmp_path, context="k8s")
    assert (config.state, config.limiter.backend, config.ray.address) == (
        env["ADO_STATE_URL"],
        "redis",
        "ray://head:10001",
    )
    with pytest.raises(
        ConfigError, match=r"context kubernetes.state: \$\{ADO_STATE_URL\} is not set"
    ):
        build_config(None, env={}, cwd=tmp_path, context="kubernetes")
    with pytest.raises(
        ConfigError, match="unknown context 'prod'; expected one of: kubernetes, local"
    ):
        build_config(None, env={}, cwd=tmp_path, context="prod")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("parallel: 0\n", "parallel: Input should be greater than or equal to 1"),
        (
            "agent: {timeout: 5}\n",
            "ado.yaml:1: unknown key `agent.timeout`; did you mean `timeout_s`?",
        ),
        ("limits: {command: {requests: ['5 per minute']}}\n", "limits"),
        ("limiter: {backend: etcd}\n", "unknown limiter backend 'etcd'"),
        ("- a list\n", "expected a mapping"),
        ("parallel: [\n", "ado.yaml:2: not valid YAML"),
    ],
)
def test_invalid_files_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"ado\.yaml") as info:
        build_config(write(tmp_path, text), env={})
    assert message in str(info.value)


def test_config_show_masks_secrets_and_validate_exits_2(tmp_path: Path) -> None:
    write(
        tmp_path,
        "state: postgresql://ado:hunter2@db/ado\nagent: {env: {API_TOKEN: hunter2}}\n"
        + ISSUE_EXAMPLE,
    )
    runner = CliRunner()
    env = {"REDIS_URL": "redis://:hunter2@cache:6379/0"}
    shown = runner.invoke(
        main, ["config", "show", "--json", "--config", str(tmp_path / "ado.yaml")], env=env
    )
    assert shown.exit_code == 0, shown.output
    assert "hunter2" not in shown.output
    data = json.loads(shown.output)
    assert data["state"] == "postgresql://ado:***@db/ado"
    assert data["limiter"]["url"] == "redis://:***@cache:6379/0"
    assert data["agent"]["env"] == {"API_TOKEN": "***"}

    ok = runner.invoke(main, ["config", "validate", str(tmp_path / "ado.yaml")], env=env)
    assert ok.exit_code == 0 and "valid" in ok.output
    bad = write(tmp_path, "parallel: many\n")
    result = runner.invoke(main, ["config", "validate", str(bad)])
    assert result.exit_code == 2
    assert "parallel: Input should be a valid integer" in result.output


def test_ado_limits_shows_every_configured_key(tmp_path: Path) -> None:
    write(
        tmp_path,
        "limits:\n  command: {requests: ['5/2s', '1000/1d'], concurrency: 3}\n"
        "  git:github.com: {requests: ['10/1m']}\n",
    )
    result = CliRunner().invoke(main, ["limits", "--json", "--config", str(tmp_path / "ado.yaml")])
    assert result.exit_code == 0, result.output
    rows = {row["key"]: row for row in json.loads(result.output)}
    assert set(rows) == {"command", "git:github.com"}
    assert [(w["window"], w["limit"], w["used"]) for w in rows["command"]["requests"]] == [
        ("5/2s", 5, 0),
        ("1000/1d", 1000, 0),
    ]
    assert rows["command"]["concurrency"] == {"limit": 3, "active": 0, "leases": []}
    text = CliRunner().invoke(main, ["limits", "--config", str(tmp_path / "ado.yaml")])
    assert "command" in text.output and "0/5 per 2s, 0/1000 per 1d, holders 0/3" in text.output


def test_unknown_keys_name_their_line_and_the_nearest_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "providers:\n  claude:\n    agent: claude\n    modes:\n      - name: sub\n"
        "        prioirty: 2\nzzz: 1\nagent:\n  env: {ANY_NAME: x}\n"
        "contexts:\n  big: {paralel: 2}\n",
    )
    with pytest.raises(ConfigError) as info:
        build_config(path, env={}, context="big")
    lines = str(info.value).splitlines()
    assert lines[0] == (
        f"{path}:6: unknown key `providers.claude.modes.0.prioirty`; did you mean `priority`?"
    )
    assert lines[1].startswith(f"{path}:7: unknown key `zzz`; expected a key of the top level: ")
    assert "parallel, " in lines[1] and lines[1].endswith(", contexts")
    assert lines[2] == f"{path}:11: unknown key `paralel`; did you mean `parallel`?"
    assert len(lines) == 3  # agent.env is a free mapping: any name is a key


def test_a_bad_value_from_a_flag_is_not_blamed_on_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "name: fine\n")
    with pytest.raises(ConfigError) as info:
        build_config(path, {"name": "not a slug"}, env={})
    assert str(info.value).startswith("the command line or environment (a flag or ADO_* variable)")
    with pytest.raises(ConfigError, match=r"ado\.yaml:1: name: Value error, 'bad name'"):
        build_config(write(tmp_path, "name: bad name\n"), env={})


def test_an_unknown_context_suggests_the_nearest(tmp_path: Path) -> None:
    path = write(tmp_path, "contexts: {staging: {}}\n")
    with pytest.raises(ConfigError, match=r"unknown context 'stagign'; did you mean 'staging'\?"):
        build_config(path, env={}, context="stagign")
