"""load_config: defaults, the source layers and their order, and every error path."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import Any

import platformdirs
import pydantic
import pytest
import yaml

from agentic.config import Config, DispatcherConfig, load_config
from agentic.errors import ConfigError
from agentic.stores import SCHEMES

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test in an empty directory with a fake home and no AGENTIC_* variables."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    for name in [n for n in os.environ if n.startswith("AGENTIC_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(cwd)
    return cwd


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


#: what every number of seconds of the configuration accepts, as its errors say
_SECONDS = "a number of seconds > 0 and <= 1000000000"


def config_error(**kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(**{"env": {}, **kwargs})
    return str(info.value)


def all_keys() -> list[str]:
    sections: dict[str, type[pydantic.BaseModel]] = {
        name: field.annotation
        for name, field in Config.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, pydantic.BaseModel)
    }
    keys = [name for name in Config.model_fields if name not in sections]
    for section, model in sections.items():
        keys += [f"{section}.{name}" for name in model.model_fields]
    return keys


# --- defaults ------------------------------------------------------------------------


def test_defaults() -> None:
    """With no file, no .env and no variables, every key has its documented default."""
    cfg = load_config(env={})
    assert cfg.base_url == "http://127.0.0.1:8080"
    assert (cfg.token, cfg.project, cfg.agent_id) == ("", "", "")
    assert (cfg.registry_url, cfg.allowance_url, cfg.task_store_url) == (None, None, None)
    d, s = cfg.dispatcher, cfg.server
    assert (d.interval, d.heartbeat_ttl, d.max_retries, d.lease_seconds) == (5, 30, 3, 300)
    assert (d.claim_concurrency, d.claim_batch, d.exclusive) == (8, 50, True)
    assert (d.backoff_base, d.backoff_cap, d.jitter, d.fail_open) == (5, 300, "full", False)
    assert (s.host, s.port, s.admin_tokens, s.agent_tokens) == ("127.0.0.1", 8080, [], {})
    assert s.max_body_bytes == 1024 * 1024


def test_default_store_is_sqlite_in_user_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default store URL is computed at load time from the user's data directory."""
    first = load_config(env={}).store_url
    expected = Path(platformdirs.user_data_dir("agentic")) / "agentic.db"
    assert first == "sqlite:///" + expected.as_posix().lstrip("/")
    assert str(tmp_path) in first
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "elsewhere"))
    assert load_config(env={}).store_url != first


def test_store_url_for_falls_back_to_store_url() -> None:
    """Each store uses its own override when set, else store_url; empty means unset."""
    cfg = load_config(
        env={"AGENTIC_ALLOWANCE_URL": ""},
        store_url="memory://",
        registry_url="redis://h:6379/1",
        task_store_url="sqlite:///tmp/tasks.db",
    )
    assert cfg.store_url_for("registry") == "redis://h:6379/1"
    assert cfg.store_url_for("allowance") == "memory://"
    assert cfg.store_url_for("task") == "sqlite:///tmp/tasks.db"


def test_config_is_frozen_and_hides_tokens() -> None:
    """A Config cannot be changed after loading, and its repr never shows a token."""
    cfg = load_config(env={}, token="s3cret", server={"admin_tokens": ["adm1n"]})
    with pytest.raises(pydantic.ValidationError):
        cfg.token = "other"  # type: ignore[misc]
    assert "s3cret" not in repr(cfg)
    assert "adm1n" not in repr(cfg)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("agentic.yaml", "token: s3cret\n"),
        ("agentic.yaml", "server:\n  agent_tokens: {s3cret: a1}\n"),
        ("agentic.yaml", "store_url: redis://:s3cret@db:6379/0\n"),
        (".env", "AGENTIC_TOKEN=s3cret\n"),
    ],
)
def test_a_file_with_secrets_others_may_read_is_warned_of(
    name: str, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A config file or .env holding a token or a URL's password, readable by other
    users, is warned of (naming the file and the fix, never the secret); mode 0600 is
    not, nor a readable file with no secret."""
    file = Path(name)
    file.write_text(text, encoding="utf-8")
    plain = write(Path("plain.yaml"), "project: demo\n")
    for mode in (0o644, 0o600):
        file.chmod(mode)
        plain.chmod(0o644)
        caplog.clear()
        with caplog.at_level("WARNING", logger="agentic.config"):
            load_config(env={})
            load_config(plain, env={}, dotenv=False)
        said = [r.getMessage() for r in caplog.records]
        if mode == 0o644:
            assert len(said) == 1 and f"chmod 600 {file.absolute()}" in said[0], said
            assert "mode 0644" in said[0] and "s3cret" not in said[0]
        else:
            assert said == []


# --- sources and precedence ----------------------------------------------------------


def test_explicit_yaml_file(tmp_path: Path) -> None:
    """An explicit path is read, including nested sections."""
    path = write(
        tmp_path / "conf.yaml",
        """
        base_url: https://tasks.example.com/
        project: demo
        dispatcher:
          interval: 0.5
          jitter: equal
        server:
          admin_tokens: [a, b]
          agent_tokens: {t1: agent-1}
        """,
    )
    cfg = load_config(path, env={})
    assert cfg.base_url == "https://tasks.example.com"  # trailing slash dropped
    assert cfg.project == "demo"
    assert (cfg.dispatcher.interval, cfg.dispatcher.jitter) == (0.5, "equal")
    assert cfg.dispatcher.max_retries == 3  # unset keys of a section keep their default
    assert cfg.server.admin_tokens == ["a", "b"]
    assert cfg.server.agent_tokens == {"t1": "agent-1"}


def test_empty_yaml_and_empty_section(tmp_path: Path) -> None:
    """An empty file, a section with nothing under it and null values mean defaults."""
    assert load_config(write(tmp_path / "empty.yaml", "# nothing\n"), env={}).project == ""
    path = write(tmp_path / "c.yaml", "dispatcher:\nregistry_url: null\nbase_url:\n")
    cfg = load_config(path, env={})
    assert cfg.dispatcher == DispatcherConfig()
    assert cfg.base_url == "http://127.0.0.1:8080"


def test_yaml_found_in_cwd_before_user_config(isolated: Path, tmp_path: Path) -> None:
    """./agentic.yaml is used first, then ~/.config/agentic/config.yaml."""
    user = write(tmp_path / "home/.config/agentic/config.yaml", "project: from-home\n")
    assert load_config(env={}).project == "from-home"
    write(isolated / "agentic.yaml", "project: from-cwd\n")
    assert load_config(env={}).project == "from-cwd"
    assert user.exists()


def test_user_config_honours_xdg_config_home(tmp_path: Path) -> None:
    """XDG_CONFIG_HOME (read from env) moves the user config file."""
    write(tmp_path / "xdg/agentic/config.yaml", "project: xdg\n")
    assert load_config(env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")}).project == "xdg"


def test_environment_variables_top_level_and_nested() -> None:
    """AGENTIC_* variables set top-level keys and, with __, section keys."""
    cfg = load_config(
        env={
            "AGENTIC_BASE_URL": "http://10.0.0.1:9000",
            "AGENTIC_TOKEN": "tok",
            "AGENTIC_PROJECT": "p",
            "AGENTIC_AGENT_ID": "a1",
            "AGENTIC_STORE_URL": "redis://localhost:6379/0?prefix=x",
            "AGENTIC_REGISTRY_URL": "memory://",
            "AGENTIC_DISPATCHER__INTERVAL": "2.5",
            "AGENTIC_DISPATCHER__FAIL_OPEN": "true",
            "AGENTIC_DISPATCHER__MAX_RETRIES": "0",
            "AGENTIC_SERVER__PORT": "9000",
            "AGENTIC_SERVER__ADMIN_TOKENS": "a, b",
            "AGENTIC_SERVER__AGENT_TOKENS": "t1=agent-1,dG9rZW4==agent-2",
        }
    )
    assert cfg.base_url == "http://10.0.0.1:9000"
    assert (cfg.token, cfg.project, cfg.agent_id) == ("tok", "p", "a1")
    assert cfg.store_url_for("registry") == "memory://"
    assert cfg.store_url_for("task") == "redis://localhost:6379/0?prefix=x"
    assert (cfg.dispatcher.interval, cfg.dispatcher.fail_open) == (2.5, True)
    assert cfg.dispatcher.max_retries == 0
    assert cfg.server.port == 9000
    assert cfg.server.admin_tokens == ["a", "b"]
    assert cfg.server.agent_tokens == {"t1": "agent-1", "dG9rZW4=": "agent-2"}


def test_environment_lists_and_mappings_as_json() -> None:
    """List and mapping variables may also be written as JSON."""
    env = {"AGENTIC_SERVER__ADMIN_TOKENS": '["x,y"]', "AGENTIC_SERVER__AGENT_TOKENS": '{"t": "a"}'}
    cfg = load_config(env=env)
    assert cfg.server.admin_tokens == ["x,y"]
    assert cfg.server.agent_tokens == {"t": "a"}


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without env=, the real process environment is read."""
    monkeypatch.setenv("AGENTIC_PROJECT", "from-os")
    assert load_config().project == "from-os"


def test_foreign_agentic_variables_are_ignored() -> None:
    """Unknown AGENTIC_* variables belong to other tools and are skipped."""
    cfg = load_config(env={"AGENTIC_LOG_LEVEL": "debug", "AGENTIC_X__Y": "1", "OTHER": "z"})
    assert cfg == load_config(env={})


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("AGENTIC_DISPATCHR__INTERVAL", "AGENTIC_DISPATCHER__INTERVAL"),
        ("AGENTIC_SEVER__PORT", "AGENTIC_SERVER__PORT"),
        ("AGENTIC_TOKN", "AGENTIC_TOKEN"),
        ("AGENTIC_BASE_ULR", "AGENTIC_BASE_URL"),
        ("AGENTIC_STORE", "AGENTIC_STORE_URL"),
        ("AGENTIC_EVENT_LOG", "AGENTIC_EVENT_LOG_URL"),
        ("AGENTIC_PORT", "AGENTIC_SERVER__PORT"),
        ("AGENTIC_INTERVAL", "AGENTIC_DISPATCHER__INTERVAL"),
    ],
)
def test_a_variable_one_typo_away_from_ours_is_reported(name: str, meant: str) -> None:
    """A near miss of one of our variables (a typo, a URL key without _url, a section's
    key without its section) is reported, named with what was meant."""
    with pytest.raises(ConfigError, match=f"{name} is not a setting of ours.*did you mean {meant}"):
        load_config(env={name: "2"})


def test_dotenv_parsing(isolated: Path) -> None:
    """.env: comments, blank lines, export, quotes, inline comments; AGENTIC_* keys only."""
    write(
        isolated / ".env",
        """
        # a comment

        export AGENTIC_PROJECT=alpha   # inline comment
        AGENTIC_TOKEN="tok # not a comment"
        AGENTIC_AGENT_ID='single quoted'  # comment after quotes
        AGENTIC_SERVER__HOST = 0.0.0.0
        AGENTIC_SERVER__ADMIN_TOKENS=a,b
        DATABASE_URL=postgres://elsewhere
        NOT_OURS="a multi-line value
        of another tool, not ours to judge"
        """,
    )
    cfg = load_config(env={})
    assert cfg.project == "alpha"
    assert cfg.token == "tok # not a comment"
    assert cfg.agent_id == "single quoted"
    assert cfg.server.host == "0.0.0.0"
    assert cfg.server.admin_tokens == ["a", "b"]


def test_dotenv_explicit_path_and_disabled(isolated: Path, tmp_path: Path) -> None:
    """dotenv= names another file; dotenv=False ignores ./.env."""
    write(isolated / ".env", "AGENTIC_PROJECT=cwd\n")
    other = write(tmp_path / "other.env", "AGENTIC_PROJECT=other\n")
    assert load_config(env={}).project == "cwd"
    assert load_config(env={}, dotenv=other).project == "other"
    assert load_config(env={}, dotenv=False).project == ""


def test_precedence_yaml_dotenv_env_arguments(isolated: Path) -> None:
    """YAML < .env < environment < keyword arguments, key by key."""
    write(
        isolated / "agentic.yaml",
        """
        token: yaml
        project: yaml
        agent_id: yaml
        base_url: http://yaml:1
        dispatcher: {interval: 1, max_retries: 1}
        """,
    )
    write(
        isolated / ".env", "AGENTIC_PROJECT=dotenv\nAGENTIC_AGENT_ID=dotenv\nAGENTIC_TOKEN=dotenv\n"
    )
    env = {"AGENTIC_AGENT_ID": "env", "AGENTIC_TOKEN": "env", "AGENTIC_DISPATCHER__INTERVAL": "2"}
    cfg = load_config(env=env, token="arg", dispatcher={"max_retries": 9})
    assert cfg.base_url == "http://yaml:1"
    assert cfg.project == "dotenv"
    assert cfg.agent_id == "env"
    assert cfg.token == "arg"
    assert (cfg.dispatcher.interval, cfg.dispatcher.max_retries) == (2, 9)


def test_none_arguments_mean_not_given() -> None:
    """A keyword argument of None leaves the lower layers' value in place."""
    cfg = load_config(env={"AGENTIC_PROJECT": "env"}, project=None, dispatcher=None)
    assert cfg.project == "env"
    assert cfg.dispatcher == DispatcherConfig()


def test_section_argument_as_model() -> None:
    """A section may be passed as its model; only the fields set on it override."""
    cfg = load_config(
        env={"AGENTIC_DISPATCHER__MAX_RETRIES": "7"},
        dispatcher=DispatcherConfig(interval=1),
    )
    assert (cfg.dispatcher.interval, cfg.dispatcher.max_retries) == (1, 7)


# --- errors --------------------------------------------------------------------------


def test_bad_value_in_yaml_names_key_file_line_and_accepted(tmp_path: Path) -> None:
    """A bad YAML value names the key, the file and line, what is accepted and the value."""
    path = write(tmp_path / "agentic.yaml", "dispatcher:\n  interval: abc\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert str(info.value) == (
        f"dispatcher.interval in {path} (line 2): must be {_SECONDS}, got 'abc'"
    )
    assert isinstance(info.value.__cause__, pydantic.ValidationError)


def test_bad_value_in_environment_names_the_variable() -> None:
    """A bad environment value names the variable."""
    message = config_error(env={"AGENTIC_SERVER__PORT": "http"})
    assert message == (
        "server.port in environment variable AGENTIC_SERVER__PORT:"
        " must be an integer from 1 to 65535, got 'http'"
    )


def test_claim_batch_out_of_range_is_refused_with_its_range() -> None:
    """dispatcher.claim_batch outside 1-100 is refused, naming what is accepted."""
    message = config_error(env={"AGENTIC_DISPATCHER__CLAIM_BATCH": "101"})
    assert message == (
        "dispatcher.claim_batch in environment variable AGENTIC_DISPATCHER__CLAIM_BATCH:"
        " must be an integer from 1 to 100, got '101'"
    )


def test_event_log_settings_default_on_and_are_checked() -> None:
    """events.log is on with 100,000 events kept; a negative log_keep is refused."""
    cfg = load_config(env={})
    assert (cfg.events.log, cfg.events.log_keep) == (True, 100_000)
    cfg = load_config(env={"AGENTIC_EVENTS__LOG": "false", "AGENTIC_EVENTS__LOG_KEEP": "0"})
    assert (cfg.events.log, cfg.events.log_keep) == (False, 0)
    message = config_error(env={"AGENTIC_EVENTS__LOG_KEEP": "-5"})
    assert message == (
        "events.log_keep in environment variable AGENTIC_EVENTS__LOG_KEEP: must be an"
        " integer from 0 to 10**12 (events kept; 0: keep every event), got '-5'"
    )


def test_keep_unread_defaults_off_and_is_checked() -> None:
    """events.log_keep_unread is 0 (off) unless set; a negative one is refused."""
    assert load_config(env={}).events.log_keep_unread == 0
    cfg = load_config(env={"AGENTIC_EVENTS__LOG_KEEP_UNREAD": "50000"})
    assert cfg.events.log_keep_unread == 50_000
    message = config_error(env={"AGENTIC_EVENTS__LOG_KEEP_UNREAD": "-1"})
    assert message.startswith("events.log_keep_unread in environment variable")
    assert "integer from 0 to 10**12 (unread events spared; 0: off), got '-1'" in message
    never = {"AGENTIC_EVENTS__LOG_KEEP": "0", "AGENTIC_EVENTS__LOG_KEEP_UNREAD": "5"}
    assert "log_keep 0 never trims, so there is nothing to spare" in config_error(env=never)


def test_a_boolean_is_not_a_number(tmp_path: Path) -> None:
    """YAML true where an integer belongs is refused (it would count as 1)."""
    path = write(tmp_path / "agentic.yaml", "events:\n  log_keep: true\n")
    with pytest.raises(ConfigError, match="a boolean where a number belongs"):
        load_config(path, env={})


def test_events_webhook_must_be_an_http_url_and_its_secret_stays_hidden() -> None:
    """events.webhook_url must be http(s); the secret never shows in repr()."""
    message = config_error(env={"AGENTIC_EVENTS__WEBHOOK_URL": "ftp://hooks"})
    assert message.startswith("events.webhook_url in environment variable")
    assert "not an http:// or https:// URL" in message
    cfg = load_config(
        env={
            "AGENTIC_EVENTS__WEBHOOK_URL": "https://hooks.example.com/agentic",
            "AGENTIC_EVENTS__WEBHOOK_SECRET": "whsec_c2VjcmV0",
        }
    )
    assert cfg.events.webhook_url == "https://hooks.example.com/agentic"
    assert "c2VjcmV0" not in repr(cfg)


def test_bad_value_in_dotenv_names_file_variable_and_line(isolated: Path) -> None:
    """A bad .env value names the .env file, the variable and the line."""
    write(isolated / ".env", "# x\nAGENTIC_DISPATCHER__JITTER=gaussian\n")
    message = config_error()
    assert message.startswith(
        f"dispatcher.jitter in {isolated / '.env'} (AGENTIC_DISPATCHER__JITTER, line 2):"
    )
    assert "one of full, equal, decorrelated, got 'gaussian'" in message


def test_bad_value_in_argument_names_the_argument() -> None:
    """A bad keyword argument is named as such."""
    message = config_error(dispatcher={"max_retries": -1})
    assert message == (
        "dispatcher.max_retries in keyword argument dispatcher: must be an integer >= 0, got -1"
    )


@pytest.mark.parametrize("key", all_keys())
def test_every_key_explains_what_it_accepts(key: str) -> None:
    """Every key, given a value of the wrong type, gets a ConfigError saying what it accepts."""
    section, _, name = key.rpartition(".")
    kwargs: dict[str, Any] = {section: {name: object()}} if section else {name: object()}
    message = config_error(**kwargs)
    assert message.startswith(f"{key} in keyword argument {section or name}: ")
    assert "must be " in message


def test_several_problems_are_reported_together() -> None:
    """All bad values are reported at once, one line each."""
    message = config_error(env={"AGENTIC_SERVER__PORT": "0", "AGENTIC_DISPATCHER__INTERVAL": "0"})
    assert len(message.splitlines()) == 2


@pytest.mark.parametrize("url", ["ftp://host", "127.0.0.1:8080", "http://", "http://a b"])
def test_base_url_must_be_http(url: str) -> None:
    """base_url must be an http(s) URL with a host."""
    assert "must be an http(s) URL" in config_error(base_url=url)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sqlit:///x.db", "unknown scheme 'sqlit'; must be a store URL"),
        ("postgres://h/db", "unknown scheme 'postgres'"),
        ("agentic.db", "not a URL; must be a store URL"),
        ("sqlite://", "a sqlite URL needs a file path"),
        ("sqlite:///x.db?reservation_ttl=inf", ": reservation_ttl='inf' must be a number"),
        ("redis://h/0?reservation_ttl=1e15", "seconds >= 0.001 and <= 1000000000; must be"),
        ("memory://?tz=Mars/Base", ": unknown timezone tz='Mars/Base'; use an IANA name"),
    ],
)
def test_store_url_is_checked_at_load_time(url: str, problem: str) -> None:
    """A store URL with a typo, or a tz or reservation_ttl every store opener refuses,
    fails when loading, naming the problem, then the accepted URLs once (every scheme
    a store opens) and the value."""
    message = config_error(env={"AGENTIC_TASK_STORE_URL": url})
    assert message.startswith("task_store_url in environment variable AGENTIC_TASK_STORE_URL: ")
    assert problem in message
    assert message.endswith(f", got {url!r}")
    said = message.removesuffix(f", got {url!r}")
    for scheme in SCHEMES:
        assert len(re.findall(rf"\b{scheme}://", said)) == 1, message


def test_store_url_password_is_not_echoed() -> None:
    """A rejected store URL is shown without its password."""
    message = config_error(store_url="redix://:hunter2@h:6379/0")
    assert "hunter2" not in message
    assert "got 'redix://:***@h:6379/0'" in message


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"store_url": "redis://:hunter2@[::1/0"}, "store_url"),
        ({"base_url": "http://[::1:8080"}, "base_url"),
        ({"events": {"webhook_url": "https://[::1/hook"}}, "events.webhook_url"),
        ({"events": {"stream_url": "redis://[::1/0"}}, "events.stream_url"),
    ],
)
def test_a_url_that_does_not_parse_is_a_config_error(settings: dict[str, Any], key: str) -> None:
    """A URL whose host does not parse (an unclosed "[" of an IPv6 address) is a
    ConfigError naming the key and the problem, its password hidden; the ValueError
    of urlsplit escaped as a traceback."""
    message = config_error(**settings)
    assert message.startswith(f"{key} in keyword argument ")
    assert "Invalid IPv6 URL; must be" in message
    assert "hunter2" not in message


def test_secret_values_are_not_echoed() -> None:
    """A rejected token is described, never printed."""
    message = config_error(server={"admin_tokens": ["good", ""], "agent_tokens": {"good": "a"}})
    assert message.startswith("server.admin_tokens in keyword argument server: ")
    assert message.endswith("got a hidden value")
    assert "good" not in message


def test_token_cannot_be_admin_and_agent() -> None:
    """A token listed both as admin and agent token is refused."""
    message = config_error(server={"admin_tokens": ["t"], "agent_tokens": {"t": "a1"}})
    assert "server.agent_tokens in keyword argument server: a token is also in" in message


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("interval", "inf", _SECONDS),
        ("heartbeat_ttl", "inf", _SECONDS),
        ("backoff_cap", "inf", f"{_SECONDS}, and >= dispatcher.backoff_base"),
        ("lease_seconds", "inf", "a number of seconds > 0 and <= 604800 (7 days)"),
        ("lease_seconds", "1e6", "a number of seconds > 0 and <= 604800 (7 days)"),
        ("interval", "1e300", _SECONDS),
        ("heartbeat_ttl", "1e300", _SECONDS),
        ("backoff_base", "1e300", _SECONDS),
        ("backoff_cap", "1e10", f"{_SECONDS}, and >= dispatcher.backoff_base"),
        ("active_lease", "1e300", f"{_SECONDS}, or empty for the default (15)"),
    ],
)
def test_dispatcher_seconds_are_finite_and_leases_what_the_api_takes(
    key: str, value: str, accepted: str
) -> None:
    """An infinite or huge (1e300) interval, ttl, lease or backoff, or a lease the task
    API refuses (over 7 days), is refused at load naming the key and the bound; they
    were taken, then failed at first use without the key (a time past any clock, a lease
    Redis refused) or with a 422 on every claim."""
    variable = f"AGENTIC_DISPATCHER__{key.upper()}"
    message = config_error(env={variable: value})
    assert message == (
        f"dispatcher.{key} in environment variable {variable}: must be {accepted}, got {value!r}"
    )


def test_seconds_at_the_bound_load() -> None:
    """Every dispatcher number of seconds loads at the bound, 1e9 s (the store URLs' and
    max_job_duration's): the bound refuses what no clock holds, not long settings."""
    seconds = ("interval", "heartbeat_ttl", "backoff_base", "backoff_cap", "active_lease")
    cfg = load_config(dotenv=False, env={}, dispatcher=dict.fromkeys(seconds, 1e9))
    assert [getattr(cfg.dispatcher, key) for key in seconds] == [1e9] * len(seconds)


def test_backoff_cap_not_below_base() -> None:
    """backoff_cap smaller than backoff_base is refused."""
    message = config_error(dispatcher={"backoff_base": 10, "backoff_cap": 5})
    assert message.startswith("dispatcher.backoff_cap in keyword argument dispatcher: smaller")


def test_unknown_yaml_key_lists_valid_keys(tmp_path: Path) -> None:
    """An unknown top-level key names the file and line, suggests a fix, lists valid keys."""
    path = write(tmp_path / "c.yaml", "project: x\nbase_ulr: http://h\n")
    message = config_error(path=path)
    assert message.startswith(f"unknown key 'base_ulr' in {path} (line 2)")
    assert "did you mean base_url?" in message
    assert "valid keys: base_url, token, project" in message


def test_unknown_section_key_lists_that_sections_keys(tmp_path: Path) -> None:
    """An unknown key inside a section lists the keys of that section only."""
    path = write(tmp_path / "c.yaml", "server:\n  prot: 1\n")
    message = config_error(path=path)
    assert "unknown key 'server.prot'" in message
    assert "did you mean server.port?" in message
    assert "dispatcher." not in message


def test_unknown_keys_in_dotenv_arguments_and_known_env_sections(isolated: Path) -> None:
    """Unknown AGENTIC_* keys fail in .env, arguments and under a known env section."""
    assert "unknown key 'tokn'" in config_error(tokn="x")
    assert "unknown key 'dispatcher.intervl'" in config_error(dispatcher={"intervl": 1})
    message = config_error(env={"AGENTIC_SERVER__PROT": "1"})
    assert "unknown key 'server.prot' in environment variable AGENTIC_SERVER__PROT" in message
    write(isolated / ".env", "AGENTIC_TOKN=x\n")
    assert f"unknown key 'tokn' in {isolated / '.env'} (AGENTIC_TOKN, line 1)" in config_error()


def test_section_must_be_a_mapping(tmp_path: Path) -> None:
    """A section given a scalar is refused with its source, the value read and how a
    section is written (its keys)."""
    path = write(tmp_path / "c.yaml", "dispatcher: 5\n")
    message = config_error(path=path)
    assert message.startswith(f"dispatcher in {path} (line 1): must be a mapping")
    assert "got 5; write each key as `key: value` on its own line" in message
    assert "indented under `dispatcher:` (interval, heartbeat_ttl," in message
    assert "got [1]" in config_error(server=[1])


def test_section_key_without_colon_shows_what_was_read_and_the_fix(tmp_path: Path) -> None:
    """``interval 2`` (no colon) under dispatcher: the text read is shown, and the line
    as it should be."""
    path = write(tmp_path / "c.yaml", "dispatcher:\n  interval 2\n")
    assert config_error(path=path) == (
        f"dispatcher in {path} (line 1): must be a mapping of dispatcher keys,"
        " got 'interval 2'; a key needs a colon and a space after it: `interval: 2`"
    )


def test_section_value_shown_is_cut_and_never_a_secret(tmp_path: Path) -> None:
    """A long value read is cut to 60 characters; one naming a secret key is not shown."""
    path = write(tmp_path / "c.yaml", f"events:\n  {'x' * 200}\n")
    message = config_error(path=path)
    assert f"got '{'x' * 56}...;" in message and "x" * 57 not in message
    path = write(tmp_path / "s.yaml", "server:\n  admin_tokens s3cret\n")
    message = config_error(path=path)
    assert "s3cret" not in message
    assert "got a value naming a secret key (not shown)" in message
    assert "`admin_tokens: ...`" in message


def test_active_lease_is_optional_positive_and_finite(tmp_path: Path) -> None:
    """dispatcher.active_lease: unset by default (the dispatcher's own 15 s), seconds
    > 0 from any source, empty as unset; zero, negative, infinite or NaN refused."""
    assert load_config(env={}).dispatcher.active_lease is None
    path = write(tmp_path / "c.yaml", "dispatcher:\n  active_lease: 20\n")
    assert load_config(path, env={}).dispatcher.active_lease == 20.0
    variable = "AGENTIC_DISPATCHER__ACTIVE_LEASE"
    assert load_config(env={variable: "7.5"}).dispatcher.active_lease == 7.5
    assert load_config(env={variable: ""}).dispatcher.active_lease is None
    for bad in ("0", "-1", "inf", "nan", "soon"):
        message = config_error(env={variable: bad})
        assert message == (
            f"dispatcher.active_lease in environment variable {variable}: must be"
            f" {_SECONDS}, or empty for the default (15), got {bad!r}"
        )
    path = write(tmp_path / "inf.yaml", "dispatcher:\n  active_lease: .inf\n")
    assert f"dispatcher.active_lease in {path} (line 2)" in config_error(path=path)


def test_agent_lease_seconds_defaults_to_the_claims_and_is_set_from_any_source(
    tmp_path: Path,
) -> None:
    """agent.lease_seconds is null by default (renew with each claim's length), and
    seconds > 10 from the YAML file, the environment (empty: null) or arguments."""
    assert load_config(env={}).agent.lease_seconds is None
    path = write(tmp_path / "c.yaml", "agent:\n  lease_seconds: 45\n")
    assert load_config(path, env={}).agent.lease_seconds == 45.0
    variable = "AGENTIC_AGENT__LEASE_SECONDS"
    assert load_config(env={variable: "10.5"}).agent.lease_seconds == 10.5
    assert load_config(env={variable: ""}).agent.lease_seconds is None
    assert load_config(env={}, agent={"lease_seconds": 600}).agent.lease_seconds == 600.0
    # the top-level agent_id and the agent section live side by side
    both = load_config(env={"AGENTIC_AGENT_ID": "a-1", variable: "30"})
    assert (both.agent_id, both.agent.lease_seconds) == ("a-1", 30.0)


def test_agent_lease_seconds_of_ten_or_less_says_why_and_what_to_set(tmp_path: Path) -> None:
    """A lease of 10 s or less (two 5 s renewals) is refused naming the key, the
    source, why it is too short and what is accepted."""
    variable = "AGENTIC_AGENT__LEASE_SECONDS"
    for short in ("10", "3", "0", "-5"):
        assert config_error(env={variable: short}) == (
            f"agent.lease_seconds in environment variable {variable}: too short: leases"
            " are renewed every 5 s, so one late renewal would lose a lease of 10 s or"
            " less; must be a number of seconds > 10 and <= 604800, or empty (null) to"
            f" renew with the length each claim was made with, got {short!r}"
        )
    path = write(tmp_path / "c.yaml", "agent:\n  lease_seconds: 8\n")
    assert config_error(path=path).startswith(f"agent.lease_seconds in {path} (line 2): too short")


def test_agent_lease_seconds_refuses_what_is_not_a_usable_number() -> None:
    """Not a number, infinite, NaN, a boolean or past the task API's 7 days: refused,
    each naming what is accepted."""
    variable = "AGENTIC_AGENT__LEASE_SECONDS"
    accepted = "must be a number of seconds > 10 and <= 604800, or empty (null)"
    for bad in ("soon", "inf", "nan", "true"):
        message = config_error(env={variable: bad})
        assert message.startswith(f"agent.lease_seconds in environment variable {variable}: ")
        assert accepted in message and message.endswith(f"got {bad!r}")
    assert "longer than the task API accepts" in config_error(env={variable: "700000"})
    assert "a boolean where a number belongs" in config_error(agent={"lease_seconds": True})


def test_agent_state_dir_must_be_absolute(tmp_path: Path) -> None:
    """agent.state_dir: a relative path is refused naming why (it would follow the
    directory each agent starts in); ~ is expanded; empty means the default."""
    path = write(tmp_path / "c.yaml", "agent:\n  state_dir: agent-state\n")
    assert config_error(path=path) == (
        f"agent.state_dir in {path} (line 2): relative: it would depend on the directory"
        " the agent starts in; must be an absolute directory path, or empty, got 'agent-state'"
    )
    home = load_config(env={}, agent={"state_dir": "~/agentic-state"})
    assert home.agent.state_dir == str(Path.home() / "agentic-state")
    variable = load_config(env={}, agent={"state_dir": "$HOME/agentic-state"})
    assert variable.agent.state_dir == str(Path.home() / "agentic-state")
    assert load_config(env={}).agent.state_dir == ""


def test_missing_explicit_files(tmp_path: Path) -> None:
    """An explicit config or .env path that does not exist (or is a directory) is an
    error naming it."""
    assert f"config file {tmp_path / 'nope.yaml'} does not exist" in config_error(
        path=tmp_path / "nope.yaml"
    )
    assert f"config file {tmp_path} is a directory: name the YAML file in it" in config_error(
        path=tmp_path
    )
    assert "nope.env does not exist" in config_error(dotenv=tmp_path / "nope.env")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("project: [unclosed\n", "line 2: not valid YAML"),
        ("a: 1\n b: 2\n", "line 2: not valid YAML"),
        ("- a\n- b\n", "line 1: the top level must be a mapping"),
        ("just text\n", "line 1: the top level must be a mapping"),
        ("token: a\nproject: p\ntoken: b\n", "line 3: token is given twice (line 1)"),
        ("server:\n  port: 1\n  port: 2\n", "line 3: server.port is given twice (line 2)"),
    ],
)
def test_malformed_yaml_names_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    """YAML that does not parse, is not a mapping or repeats a key names file and line."""
    path = write(tmp_path / "bad.yaml", text)
    assert config_error(path=path).startswith(f"{path} {expected}")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("AGENTIC_PROJECT", "line 1: expected KEY=value"),
        ("export AGENTIC_TOKEN: s3cret", "line 1: expected KEY=value"),
        ('AGENTIC_TOKEN="open', 'unbalanced " quote'),
        ("AGENTIC_TOKEN='a' b", "unbalanced ' quote"),
        ("AGENTIC_SERVER__AGENT_TOKENS=t1", "must be token=agent_id pairs"),
        ("AGENTIC_SERVER__ADMIN_TOKENS=[1,", "not valid JSON"),
    ],
)
def test_malformed_dotenv(isolated: Path, line: str, expected: str) -> None:
    """A .env line that cannot be read is a ConfigError naming the file."""
    write(isolated / ".env", line + "\n")
    message = config_error()
    assert str(isolated / ".env") in message
    assert expected in message
    assert "s3cret" not in message


# --- the example file ----------------------------------------------------------------


def test_example_file_is_the_defaults() -> None:
    """config.example.yaml loads to exactly the defaults."""
    assert load_config(EXAMPLE, env={}) == load_config(env={})


def test_example_file_documents_every_key() -> None:
    """Every key appears in config.example.yaml (store_url as a comment) with a comment."""
    text = EXAMPLE.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    shown = {k for k, v in data.items() if not isinstance(v, dict)}
    shown |= {f"{s}.{k}" for s, v in data.items() if isinstance(v, dict) for k in v}
    assert shown | {"store_url"} == set(all_keys())
    assert "# store_url: sqlite:///" in text
    lines = text.splitlines()
    for number, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#") and not line.endswith(":"):
            assert lines[number - 1].lstrip().startswith("#"), f"no comment above {line!r}"


def test_unknown_key_hint_names_a_misspelt_section_or_the_key_of_a_section(
    tmp_path: Path,
) -> None:
    """A misspelt section is suggested as that section, a section's key at the top as it."""
    message = config_error(path=write(tmp_path / "a.yaml", "dispatchr:\n  interval: 2\n"))
    assert "unknown key 'dispatchr'" in message
    assert "(did you mean the section dispatcher?)" in message
    message = config_error(path=write(tmp_path / "b.yaml", "port: 9000\n"))
    assert "(did you mean server.port?)" in message
    message = config_error(path=write(tmp_path / "c.yaml", "store: redis://h\n"))
    assert "(did you mean store_url?)" in message
