"""Configuration: one frozen :class:`Config`, loaded by :func:`load_config` from layers.

Sources, lowest to highest priority:

1. defaults (the stores default to a SQLite file in the user's data directory);
2. a YAML file: ``path`` when given (it must exist), else ``./agentic.yaml``, else
   ``$XDG_CONFIG_HOME/agentic/config.yaml`` (``~/.config/agentic/config.yaml``);
3. ``./.env``: its ``AGENTIC_*`` lines only, other tools' keys are left alone;
4. ``AGENTIC_*`` environment variables, with ``__`` between a section and its key
   (``AGENTIC_DISPATCHER__INTERVAL=2``, ``AGENTIC_SERVER__PORT=9000``); lists are
   comma separated (``a,b``) and mappings are ``token=agent_id`` pairs, or JSON;
5. keyword arguments of :func:`load_config`; ``None`` means "not given", so a CLI can
   pass its unset options straight through.

Every mistake is a :class:`~agentic.errors.ConfigError` naming the key, its source
(file and line, ``.env`` line, variable or argument) and what is accepted. Unknown keys
are errors, so typos surface; unknown ``AGENTIC_*`` environment variables outside our
sections are skipped, since other tools share the prefix, unless their name is a near
miss of ours (``AGENTIC_DISPATCHR__INTERVAL``): that is a typo, reported.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin
from urllib.parse import urlsplit

import platformdirs
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.fields import FieldInfo

from .errors import ConfigError
from .retry import Jitter
from .stores import SCHEMES, parse_store_url
from .stores._url import MAX_SECONDS, URL_FORMS, redact
from .stores.base import DEFAULT_HEARTBEAT_TTL

__all__ = [
    "HEARTBEAT_INTERVAL",
    "AgentConfig",
    "Config",
    "DispatcherConfig",
    "EventsConfig",
    "ServerConfig",
    "load_config",
    "without_secrets",
]

log = logging.getLogger(__name__)

ENV_PREFIX = "AGENTIC_"
#: seconds between an agent runner's heartbeats, and between its lease renewals
HEARTBEAT_INTERVAL = 5.0
#: a lease must outlast two renewals (one late renewal must not lose it)
MIN_AGENT_LEASE = 2 * HEARTBEAT_INTERVAL
#: the longest lease the task API accepts (its MAX_LEASE_SECONDS: 7 days)
_MAX_LEASE = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Accepts:
    """Field metadata: what the field accepts, in words, for error messages."""

    text: str


_STORE = f"a store URL ({URL_FORMS})"


def _not_a_bool(value: object) -> object:
    # YAML's true / false would pass as 1 / 0 (events.log_keep: true keeps one event)
    if isinstance(value, bool):
        raise ValueError("a boolean where a number belongs")  # noqa: TRY004 - pydantic reports a ValueError
    return value


def _empty_is_none(value: object) -> object:
    # An empty value (env var, YAML) means "not set": the field's own default.
    return None if value == "" else value


#: an int that refuses booleans
Int = Annotated[int, BeforeValidator(_not_a_bool)]
#: every number of seconds of the configuration, in words: at most MAX_SECONDS (1e9 s,
#: about 31 years), the bound of a store URL's seconds and of max_job_duration
_SECONDS = f"a number of seconds > 0 and <= {MAX_SECONDS:.0f}"
# Bounded: an infinite (or 1e300 s) interval, ttl or backoff was taken here and failed
# at first use (a time past any clock, a lease Redis refused) by a check that could not
# name the key.
PositiveSeconds = Annotated[
    float, Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False), Accepts(_SECONDS)
]
Text = Annotated[str, Accepts("a string")]
NonEmpty = Annotated[str, Field(min_length=1)]
StoreOverride = Annotated[str | None, Accepts(f"{_STORE}, or empty to use store_url")]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DispatcherConfig(_Section):
    """How the dispatcher polls, retries and treats an unreachable quota store."""

    interval: PositiveSeconds = 5.0
    heartbeat_ttl: PositiveSeconds = DEFAULT_HEARTBEAT_TTL
    max_retries: Annotated[Int, Field(ge=0), Accepts("an integer >= 0")] = 3
    backoff_base: PositiveSeconds = 5.0
    backoff_cap: Annotated[
        float,
        Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False),
        Accepts(f"{_SECONDS}, and >= dispatcher.backoff_base"),
    ] = 300.0
    jitter: Annotated[Jitter, Accepts("one of full, equal, decorrelated")] = "full"
    fail_open: Annotated[bool, Accepts("true or false")] = False
    # At most what the task API accepts: a longer one had every claim refused (422).
    lease_seconds: Annotated[
        float,
        Field(gt=0, le=_MAX_LEASE, allow_inf_nan=False),
        Accepts(f"a number of seconds > 0 and <= {_MAX_LEASE:g} (7 days)"),
    ] = 300.0
    claim_concurrency: Annotated[Int, Field(ge=1, le=64), Accepts("an integer from 1 to 64")] = 8
    claim_batch: Annotated[Int, Field(ge=1, le=100), Accepts("an integer from 1 to 100")] = 50
    exclusive: Annotated[bool, Accepts("true or false")] = True
    # None: the dispatcher's default (15 s); it lasts 3 intervals at least anyway.
    active_lease: Annotated[
        float | None,
        Field(gt=0, le=MAX_SECONDS, allow_inf_nan=False),
        BeforeValidator(_empty_is_none),
        Accepts(f"{_SECONDS}, or empty for the default (15)"),
    ] = None

    @field_validator("backoff_cap")
    @classmethod
    def _cap_not_below_base(cls, value: float, info: ValidationInfo) -> float:
        base = info.data.get("backoff_base")
        if base is not None and value < base:
            raise ValueError(f"smaller than dispatcher.backoff_base ({base})")
        return value


class AgentConfig(_Section):
    """How ``agentic agent run`` holds the tasks claimed for it."""

    # None: renew each task's lease with the length its claim was made with.
    lease_seconds: Annotated[
        Annotated[float, Field(allow_inf_nan=False)] | None,
        BeforeValidator(_not_a_bool),
        BeforeValidator(_empty_is_none),
        Accepts(
            f"a number of seconds > {MIN_AGENT_LEASE:g} and <= {_MAX_LEASE:g}, or empty"
            " (null) to renew with the length each claim was made with"
        ),
    ] = None

    # Where each job's reported usage is kept until settled, so a runner killed
    # mid-task has it charged when it starts again. "": the user state directory.
    state_dir: Annotated[str, Accepts("an absolute directory path, or empty")] = ""

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        path = Path(os.path.expandvars(value)).expanduser() if value else None
        if path is not None and not path.is_absolute():
            # A relative one would follow the directory each agent starts in, and a
            # restart from elsewhere would not find what a killed run left.
            raise ValueError("relative: it would depend on the directory the agent starts in")
        return str(path) if path is not None else ""

    @field_validator("lease_seconds")
    @classmethod
    def _renewable(cls, value: float | None) -> float | None:
        if value is None:
            return None
        if value <= MIN_AGENT_LEASE:
            raise ValueError(
                f"too short: leases are renewed every {HEARTBEAT_INTERVAL:g} s, so one late"
                f" renewal would lose a lease of {MIN_AGENT_LEASE:g} s or less"
            )
        if value > _MAX_LEASE:
            raise ValueError(f"longer than the task API accepts ({_MAX_LEASE:g} s, 7 days)")
        return value


class EventsConfig(_Section):
    """Where the dispatcher's and agents' lifecycle events go besides the log."""

    # The store's own event log (agentic events; EventConsumer), on store_url.
    log: Annotated[bool, Accepts("true or false")] = True
    log_keep: Annotated[
        Int,
        Field(ge=0, le=10**12),
        Accepts("an integer from 0 to 10**12 (events kept; 0: keep every event)"),
    ] = 100_000
    # Events a named consumer has not handled are spared by the trims, up to this
    # many more than log_keep (0: off; a consumer gone for good: agentic events --forget).
    log_keep_unread: Annotated[
        Int,
        Field(ge=0, le=10**12),
        Accepts("an integer from 0 to 10**12 (unread events spared; 0: off)"),
    ] = 0

    @field_validator("log_keep_unread")
    @classmethod
    def _unread_needs_trims(cls, value: int, info: ValidationInfo) -> int:
        if value and info.data.get("log_keep") == 0:
            raise ValueError(
                "log_keep 0 never trims, so there is nothing to spare: set log_keep, or"
                " leave log_keep_unread at 0"
            )
        return value

    webhook_url: Annotated[str, Accepts("an http:// or https:// URL, or empty for none")] = ""
    # A secret: kept out of repr() and error messages.
    webhook_secret: Annotated[
        str, Accepts("a string (whsec_<base64>, or any other string used as is)")
    ] = Field("", repr=False)

    stream_url: Annotated[
        str, Accepts("a redis:// or rediss:// URL (prefix= names the stream), or empty")
    ] = ""

    @field_validator("webhook_url")
    @classmethod
    def _http_or_empty(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("not an http:// or https:// URL")
        return value

    @field_validator("stream_url")
    @classmethod
    def _redis_or_empty(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("redis", "rediss"):
            raise ValueError("not a redis:// or rediss:// URL")
        return value


class ServerConfig(_Section):
    """The reference task API server (``agentic serve``)."""

    host: Annotated[NonEmpty, Accepts("a host name or IP address")] = "127.0.0.1"
    port: Annotated[Int, Field(ge=1, le=65535), Accepts("an integer from 1 to 65535")] = 8080
    # Tokens are secrets: kept out of repr() and error messages. None may be empty, or
    # a bare "Authorization: Bearer " header would pass.
    admin_tokens: Annotated[list[NonEmpty], Accepts("a list of non-empty tokens")] = Field(
        default_factory=list, repr=False
    )
    agent_tokens: Annotated[
        dict[NonEmpty, NonEmpty], Accepts("a mapping of non-empty token -> agent id")
    ] = Field(default_factory=dict, repr=False)
    # Serve with no token on an address other than loopback: anyone who can reach it
    # may create tasks, which agents run. Off: `agentic serve` refuses to.
    allow_open: Annotated[bool, Accepts("true or false")] = False
    # Whether agent tokens may claim tasks (go-agentic's agents claim their own work).
    # Off: only admin tokens claim (the dispatcher does for agentic's runners), so an
    # agent token cannot take a task routed elsewhere.
    agent_claims: Annotated[bool, Accepts("true or false")] = True
    max_body_bytes: Annotated[Int, Field(gt=0), Accepts("an integer > 0")] = 1024 * 1024
    # The most lines one task's log may hold; past it appends are refused (409), so a
    # runaway task cannot fill the store. 0: no limit.
    max_log_lines: Annotated[Int, Field(ge=0), Accepts("an integer >= 0 (0: no limit)")] = 100_000
    # Requests a second each token (each address, without tokens) may send on average;
    # past it 429 with Retry-After. 0: no limit.
    rate_limit: Annotated[
        float,
        BeforeValidator(_not_a_bool),
        Field(ge=0, allow_inf_nan=False),
        Accepts("a number >= 0 (requests a second; 0: no limit)"),
    ] = 0
    rate_burst: Annotated[Int, Field(ge=0), Accepts("an integer >= 0 (0: a second's worth)")] = 0

    @field_validator("rate_burst")
    @classmethod
    def _burst_needs_a_rate(cls, value: int, info: ValidationInfo) -> int:
        if value and not info.data.get("rate_limit"):
            raise ValueError("a burst without server.rate_limit limits nothing: set both")
        return value

    @field_validator("agent_tokens")
    @classmethod
    def _agent_tokens_distinct(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if set(value) & set(info.data.get("admin_tokens", ())):
            raise ValueError("a token is also in server.admin_tokens")
        return value


def default_store_url() -> str:
    """``sqlite:///<user data dir>/agentic.db``, computed when a Config is built."""
    path = Path(platformdirs.user_data_dir("agentic")).absolute() / "agentic.db"
    return "sqlite:///" + path.as_posix().lstrip("/")


class Config(BaseModel):
    """Everything agentic reads from configuration; build it with :func:`load_config`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: Annotated[str, Accepts("an http(s) URL such as http://127.0.0.1:8080")] = (
        "http://127.0.0.1:8080"
    )
    token: Text = Field("", repr=False)
    project: Text = ""
    agent_id: Text = ""
    store_url: Annotated[str, Accepts(_STORE)] = Field(default_factory=default_store_url)
    registry_url: StoreOverride = None
    allowance_url: StoreOverride = None
    task_store_url: StoreOverride = None
    event_log_url: StoreOverride = None
    dispatcher: DispatcherConfig = Field(default_factory=DispatcherConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
            raise ValueError("not an http(s) URL")
        return value.rstrip("/")  # the client appends /api/...

    @field_validator(
        "registry_url", "allowance_url", "task_store_url", "event_log_url", mode="before"
    )
    @classmethod
    def _empty_means_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator(
        "store_url", "registry_url", "allowance_url", "task_store_url", "event_log_url"
    )
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        """Fail at load time on a URL no store would open, rather than at first use.

        Each problem is named without the accepted URLs: the error adds them once."""
        if value is None:
            return None
        if "://" not in value:
            raise ValueError("not a URL")
        urlsplit(value)  # its ValueError ("Invalid IPv6 URL": an unclosed "[") says what
        try:
            parsed = parse_store_url(value)
        except ConfigError as exc:  # pragma: no cover - parse_store_url is lenient
            raise ValueError(str(exc)) from exc
        if parsed.scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {parsed.scheme!r}")
        if parsed.scheme == "sqlite" and not (parsed.netloc or parsed.path.strip("/")):
            raise ValueError("a sqlite URL needs a file path")
        try:
            parsed.check_common()  # what every opener refuses (tz=, reservation_ttl=)
        except ConfigError as exc:  # the URL itself ends the error: said once
            raise ValueError(str(exc).removeprefix(f"store URL {parsed.redacted()!r}: ")) from exc
        return value

    def store_url_for(self, purpose: Literal["registry", "allowance", "task", "events"]) -> str:
        """The URL of one store: its override (``registry_url``...) or ``store_url``."""
        override = {
            "registry": self.registry_url,
            "allowance": self.allowance_url,
            "task": self.task_store_url,
            "events": self.event_log_url,
        }[purpose]
        return override or self.store_url


# --- loading -------------------------------------------------------------------------

_SECTIONS: dict[str, type[_Section]] = {
    "dispatcher": DispatcherConfig,
    "agent": AgentConfig,
    "server": ServerConfig,
    "events": EventsConfig,
}
# A layer maps a dotted key ("dispatcher.interval") to (value, where it came from).
Layer = dict[str, tuple[Any, str]]


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    dotenv: str | os.PathLike[str] | Literal[False] | None = None,
    given_as: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Config:
    """Build a :class:`Config` from the YAML file, ``.env``, environment and ``overrides``.

    ``env`` replaces ``os.environ`` (``XDG_CONFIG_HOME`` is read from it too);
    ``dotenv`` names the ``.env`` file (``None``: the one in the current directory, if
    any; ``False``: none). Sections may be overridden by a mapping of some of their
    keys: ``load_config(dispatcher={"interval": 1})``. ``given_as`` names where an
    override came from, by dotted key, for error messages (a CLI passes
    ``{"server.port": "option --port"}``); else it is "keyword argument ...".
    """
    env = os.environ if env is None else env
    merged: Layer = {}
    yaml_file = _find_yaml(path, env)
    if yaml_file is not None:
        merged.update(_exposed(yaml_file, _yaml_layer(yaml_file)))
    dotenv_file = _find_dotenv(dotenv)
    if dotenv_file is not None:
        merged.update(_exposed(dotenv_file, _text_layer(_dotenv_lines(dotenv_file), strict=True)))
    variables = [(name, text, f"environment variable {name}") for name, text in env.items()]
    merged.update(_text_layer(variables, strict=False))
    named = given_as or {}
    merged.update(
        _nested_layer(
            overrides, lambda key: named.get(key) or f"keyword argument {key.split('.')[0]}"
        )
    )

    data: dict[str, Any] = {}
    for key, (value, _) in merged.items():
        section, _, name = key.rpartition(".")
        (data.setdefault(section, {}) if section else data)[name] = value
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        sources = {key: source for key, (_, source) in merged.items()}
        raise ConfigError(_explain(exc, sources)) from exc


def _existing(path: str | os.PathLike[str], what: str) -> Path:
    """A file the caller named: its absence is an error, never a silent default."""
    file = Path(path).expanduser().absolute()
    if file.is_dir():
        raise ConfigError(f"{what} {file} is a directory: name the YAML file in it")
    if not file.is_file():
        raise ConfigError(f"{what} {file} does not exist")
    return file


def _find_yaml(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if path is not None:
        return _existing(path, "config file")
    candidates = [Path("agentic.yaml")]
    config_home = env.get("XDG_CONFIG_HOME")
    with contextlib.suppress(RuntimeError):  # no home directory: ./agentic.yaml only
        candidates.append(Path(config_home or Path.home() / ".config") / "agentic" / "config.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.absolute()
    return None


def _find_dotenv(dotenv: str | os.PathLike[str] | Literal[False] | None) -> Path | None:
    if dotenv is False:
        return None
    if dotenv is None:
        return Path(".env").absolute() if Path(".env").is_file() else None
    return _existing(dotenv, ".env file")


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {file}: {exc}") from exc


def _yaml_layer(file: Path) -> Layer:
    """The file's keys, each with its line, so errors can point at it."""
    loader = yaml.SafeLoader(_read(file))
    try:
        root = loader.get_single_node()
        if root is None:  # an empty file, or only comments
            return {}
        if not isinstance(root, yaml.MappingNode):
            raise ConfigError(
                f"{file} line {root.start_mark.line + 1}: the top level must be a mapping"
                " of keys (base_url: ..., dispatcher: ...), not a list or a single value"
            )
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{file}{line}: not valid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    finally:
        loader.dispose()
    lines = _key_lines(file, root)
    return _nested_layer(
        data, lambda key: f"{file} (line {lines[key]})" if key in lines else str(file)
    )


def _key_lines(file: Path, root: yaml.MappingNode) -> dict[str, int]:
    """The line of each key; a key given twice is refused (YAML would keep the last)."""
    lines: dict[str, int] = {}
    pairs = [("", node) for node, _ in root.value]
    for key_node, value_node in root.value:
        if isinstance(value_node, yaml.MappingNode):
            pairs += [(f"{key_node.value}.", node) for node, _ in value_node.value]
    for prefix, node in pairs:
        key, line = f"{prefix}{node.value}", node.start_mark.line + 1
        if key in lines:
            raise ConfigError(f"{file} line {line}: {key} is given twice (line {lines[key]})")
        lines[key] = line
    return lines


def _nested_layer(data: Mapping[Any, Any], where: Callable[[str], str]) -> Layer:
    """Flatten ``{key: value, section: {key: value}}``; ``None`` means "not given"."""
    layer: Layer = {}
    for name, value in data.items():
        if name not in _SECTIONS:
            _check_key(str(name), where(str(name)))
            if value is not None:
                layer[name] = (value, where(name))
            continue
        if isinstance(value, BaseModel):  # load_config(dispatcher=DispatcherConfig(...))
            value = value.model_dump(exclude_unset=True)  # noqa: PLW2901
        if not isinstance(value, Mapping | None):
            raise ConfigError(_not_a_mapping(name, value, where(name)))
        for sub, sub_value in (value or {}).items():
            dotted = f"{name}.{sub}"
            _check_key(dotted, where(dotted))
            if sub_value is not None:
                layer[dotted] = (sub_value, where(dotted))
    return layer


def _not_a_mapping(section: str, value: Any, where: str) -> str:
    """Why a section's value is refused: what was read, and how to write it.

    ``dispatcher:`` then ``  interval 2`` (no colon) reads as the text "interval 2":
    the message shows it and the line as it should be. A value naming a secret key
    (``server:`` then ``  admin_tokens abc``) is not echoed."""
    fields = _SECTIONS[section].model_fields
    secret = any(info.repr is False and key in str(value) for key, info in fields.items())
    got = "a value naming a secret key (not shown)" if secret else _shorten(repr(value))
    first, _, rest = (value if isinstance(value, str) else "").strip().partition(" ")
    key = first.rstrip(":")
    if key in fields:
        shown = "..." if secret else (rest.split() or ["..."])[0]
        fix = f"a key needs a colon and a space after it: `{key}: {shown}`"
    else:
        fix = (
            f"write each key as `key: value` on its own line, indented under `{section}:`"
            f" ({', '.join(fields)})"
        )
    return f"{section} in {where}: must be a mapping of {section} keys, got {got}; {fix}"


def _shorten(text: str, width: int = 60) -> str:
    """``text`` cut to ``width`` characters, ``...`` marking the cut."""
    return text if len(text) <= width else text[: width - 3] + "..."


def _dotenv_lines(file: Path) -> list[tuple[str, str, str]]:
    """``KEY=value`` lines: ``export`` prefix, quotes and ``#`` comments allowed."""
    found = []
    for number, raw in enumerate(_read(file).splitlines(), start=1):
        line = raw.strip().removeprefix("export ").lstrip()
        name, equals, value = line.partition("=")
        name = name.strip()
        if not name.startswith(ENV_PREFIX):
            continue  # other tools' lines, in whatever syntax they use, are not ours to judge
        if not equals:
            raise ConfigError(f"{file} line {number}: expected KEY=value, found no '='")
        where = f"{file} ({name}, line {number})"
        found.append((name, _unquote(value.strip(), where), where))
    return found


def _unquote(value: str, where: str) -> str:
    # Quotes are removed and nothing inside them is interpreted: a token stays verbatim.
    if value[:1] in ("'", '"'):
        end = value.find(value[0], 1)
        if end == -1 or value[end + 1 :].strip()[:1] not in ("", "#"):
            raise ConfigError(f"{where}: unbalanced {value[0]} quote in the value")
        return value[1:end]
    comment = value.find(" #")
    return (value[:comment] if comment != -1 else value).strip()


def _text_layer(variables: list[tuple[str, str, str]], *, strict: bool) -> Layer:
    """(name, text, where) of ``AGENTIC_*`` variables; when not ``strict`` (the shared
    process environment) unknown names are skipped, unless inside one of our sections."""
    layer: Layer = {}
    for name, text, where in variables:
        if not name.startswith(ENV_PREFIX):
            continue
        key = name.removeprefix(ENV_PREFIX).lower().replace("__", ".")
        if strict or key in _all_keys() or key.partition(".")[0] in _SECTIONS:
            _check_key(key, where)
            layer[key] = (_env_value(key, text, where), where)
        elif near := _near_miss(key):
            raise ConfigError(
                f"{name} is not a setting of ours (did you mean"
                f" {ENV_PREFIX}{near.upper().replace('.', '__')}?); other tools' variables"
                " may share the prefix, but this one is a typo of ours"
            )
    return layer


def _near_miss(key: str) -> str | None:
    """Our key that ``key`` (an unknown variable's) is a likely typo of, if any: a
    section or key spelled within a letter or two of ours, a URL key without its
    ``_url`` (``AGENTIC_STORE``, as ``--store``), or a key of one section without it
    (``AGENTIC_PORT``)."""
    section, dot, rest = key.partition(".")
    if dot:
        close = difflib.get_close_matches(section, list(_SECTIONS), n=1, cutoff=0.8)
        return f"{close[0]}.{rest}" if close else None
    keys = _all_keys()
    if f"{key}_url" in keys:
        return f"{key}_url"
    sectioned = [f"{name}.{key}" for name in _SECTIONS if f"{name}.{key}" in keys]
    if len(sectioned) == 1:
        return sectioned[0]
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.85)
    return close[0] if close else None


def _env_value(key: str, text: str, where: str) -> Any:
    """Environment values are text: turn list and mapping fields into their shape."""
    shape = get_origin(_field(key).annotation)
    if shape not in (list, dict):
        return text
    if text.strip().startswith(("[", "{")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{key} in {where}: not valid JSON ({exc.msg})") from exc
    items = [item.strip() for item in text.split(",") if item.strip()]
    if shape is list:
        return items
    pairs = [item.rpartition("=") for item in items]  # base64 tokens may end in "="
    if not all(equals for _, equals, _ in pairs):
        raise ConfigError(f"{key} in {where}: must be token=agent_id pairs separated by commas")
    return {token.strip(): agent.strip() for token, _, agent in pairs}


def without_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without the ``AGENTIC_*`` variables holding a secret: the tokens, the
    webhook secret (the keys kept out of repr()) and any URL with a password in it.

    For the commands agents run: a command that prints its environment (or an agent
    tricked into it) must not put the runner's token into a task log that every token
    may read. Not a sandbox: the command runs as the runner's user and can read what
    that user can (its config files, ``.env``)."""
    return {name: value for name, value in env.items() if not _secret(name, value)}


def _secret(name: str, value: str) -> bool:
    if not name.startswith(ENV_PREFIX):
        return False
    return _secret_key(name.removeprefix(ENV_PREFIX).lower().replace("__", "."), value)


def _secret_key(key: str, value: object) -> bool:
    """Whether ``key`` set to ``value`` holds a secret: a key kept out of repr(), or
    a URL with a password."""
    if key in _all_keys() and _field(key).repr is False:
        return bool(value)
    return key.endswith("_url") and isinstance(value, str) and redact(value) != value


def _exposed(file: Path, layer: Layer) -> Layer:
    """``layer``, read from ``file``; warned of when it holds a secret (a token, a
    URL's password) and other users may read the file, as ssh warns of a key."""
    try:
        mode = file.stat().st_mode & 0o777
    except OSError:
        return layer
    secrets = sorted(key for key, (value, _) in layer.items() if _secret_key(key, value))
    if secrets and mode & 0o077:
        log.warning(
            "%s holds secrets (%s) and other users may read it (mode %04o): chmod 600 %s",
            file,
            ", ".join(secrets),
            mode,
            file,
        )
    return layer


def _all_keys() -> list[str]:
    keys = [name for name in Config.model_fields if name not in _SECTIONS]
    for section, model in _SECTIONS.items():
        keys += [f"{section}.{name}" for name in model.model_fields]
    return keys


def _check_key(key: str, where: str) -> None:
    """Refuse an unknown key, listing the valid ones and the nearest match."""
    if key in _all_keys():
        return
    section, dot, _ = key.partition(".")
    valid = [k for k in _all_keys() if k.startswith(f"{section}.")] or _all_keys()
    # A misspelt section (``dispatchr:``) is meant as that section, not as the key
    # nearest in letters; a section's key at the top (``port:``) as that key.
    close = difflib.get_close_matches(key, valid, n=1)
    if not dot:
        near = _near_miss(key)
        sections = difflib.get_close_matches(key, list(_SECTIONS), n=1, cutoff=0.8)
        close = [f"the section {name}" for name in sections] or ([near] if near else close)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(f"unknown key {key!r} in {where}{hint}; valid keys: {', '.join(valid)}")


def _field(key: str) -> FieldInfo:
    section, _, name = key.rpartition(".")
    return (_SECTIONS[section] if section else Config).model_fields[name]


def _explain(exc: ValidationError, sources: Mapping[str, str]) -> str:
    """One line per problem: key, source, what is accepted, the value given."""
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        key = ".".join(loc[:2] if loc[0] in _SECTIONS else loc[:1])
        field = _field(key)
        accepts = next((m.text for m in field.metadata if isinstance(m, Accepts)), "valid")
        detail = f"{error['ctx']['error']}; " if error["type"] == "value_error" else ""
        value = error["input"]
        # Never echo a secret: tokens are described, URLs lose their password.
        if field.repr is False:
            got = "a hidden value"
        elif isinstance(value, str) and "://" in value:
            got = repr(redact(value))
        else:
            got = repr(value)
        where = sources.get(key, "the defaults")
        # An option is named as typed, the key it sets after it: "--store" is what
        # the user wrote, "task_store_url" what it means in a config file.
        subject = f"{where} ({key})" if where.startswith("option ") else f"{key} in {where}"
        lines.append(f"{subject}: {detail}must be {accepts}, got {got}")
    return "\n".join(lines)
