"""The configuration file, its environment overrides and how problems are reported."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from vmcp.config import (
    AggregationConfig,
    BackendConfig,
    BackendToolsConfig,
    ServerConfig,
    SessionConfig,
    StatusConfig,
    ToolOverride,
    VmcpConfig,
    load_config,
    redact_url,
    with_overrides,
)
from vmcp.errors import ConfigError

TWO_BACKENDS = """\
backends:
  - name: notes
    url: http://127.0.0.1:9001/mcp
  - name: weather
    url: http://127.0.0.1:9002/mcp
"""


@pytest.fixture(autouse=True)
def _no_vmcp_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's own VMCP_* variables out of every test."""
    for name in list(os.environ):
        if name.upper().startswith("VMCP_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "vmcp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=environ or {})
    return str(caught.value).splitlines()


def loc_of(problem: str) -> str:
    return problem.split(": ", 1)[0]


# --------------------------------------------------------------------------- defaults


def test_defaults_without_a_file() -> None:
    config = load_config(None, environ={})

    assert config.server.host == "127.0.0.1"
    assert config.server.port == 4483
    assert config.server.path == "/mcp"
    assert config.server.allowed_origins == ()
    assert config.server.allowed_hosts == ()
    assert config.server.max_body_bytes == 4194304
    assert re.fullmatch(r"[0-9a-f]{8}", config.server.replica_id)
    assert config.session.store == "memory"
    assert config.session.store_kind == "memory"
    assert config.session.key_prefix == "vmcp:session:"
    assert config.session.ttl_seconds == 1800
    assert config.session.cache_capacity == 1000
    assert config.session.store_timeout_seconds == 2.0
    assert config.session.sweep_interval_seconds == 30
    assert config.backends == ()
    assert config.aggregation.conflict == "prefix"
    assert config.aggregation.prefix_format == "{backend}_"
    assert config.aggregation.priority_order == ()
    assert config.aggregation.tools == {}
    assert config.limits.max_concurrent_backend_connects == 8


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), environ={})

    assert config.server.port == 4483


def test_backend_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, TWO_BACKENDS), environ={})

    notes = config.backend("notes")
    assert notes is not None
    assert notes.url == "http://127.0.0.1:9001/mcp"
    assert notes.transport == "streamable-http"
    assert notes.headers == {}
    assert notes.connect_timeout_seconds == 10
    assert notes.call_timeout_seconds == 60
    assert config.backend("missing") is None


def test_each_load_draws_a_new_replica_id_unless_one_is_set(tmp_path: Path) -> None:
    first = load_config(None, environ={}).server.replica_id
    second = load_config(None, environ={}).server.replica_id
    fixed = load_config(write(tmp_path, "server: {replica_id: pod-1}"), environ={})

    assert first != second
    assert fixed.server.replica_id == "pod-1"


def test_models_are_frozen() -> None:
    config = load_config(None, environ={})

    with pytest.raises(ValidationError):
        config.server.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.backends = ()  # type: ignore[misc]


# --------------------------------------------------------------------------- file + env


FULL_FILE = """\
server:
  host: 0.0.0.0
  port: 5000
  path: /gateway
  allowed_origins: [http://LOCALHOST:6274/]
  allowed_hosts: [mcp.example.com, "mcp.example.com:8443"]
  max_body_bytes: 1024
session:
  store: redis://:secret@127.0.0.1:6379/0
  key_prefix: "gw:"
  ttl_seconds: 0.5
  cache_capacity: 10
  store_timeout_seconds: 0.25
  sweep_interval_seconds: 1
backends:
  - name: notes
    url: http://127.0.0.1:9001/mcp
    headers: {Authorization: Bearer abc}
  - name: weather
    url: https://weather.example/mcp
    transport: sse
    connect_timeout_seconds: 3
    call_timeout_seconds: 30
aggregation:
  conflict: priority
  prefix_format: "{backend}."
  priority_order: [weather]
  tools:
    notes:
      include: [add_note, search]
      exclude: [delete_note]
      overrides:
        search: {name: find_notes, description: Find notes by text}
limits:
  max_concurrent_backend_connects: 2
"""


def test_every_key_is_read_from_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL_FILE), environ={})

    assert config.server.host == "0.0.0.0"
    assert config.server.port == 5000
    assert config.server.path == "/gateway"
    assert config.server.allowed_origins == ("http://localhost:6274",)  # normalised
    assert config.server.allowed_hosts == ("mcp.example.com", "mcp.example.com:8443")
    assert config.server.max_body_bytes == 1024
    assert config.session.store_kind == "redis"
    assert config.session.key_prefix == "gw:"
    assert config.session.ttl_seconds == 0.5
    assert config.session.cache_capacity == 10
    assert config.session.store_timeout_seconds == 0.25
    assert config.session.sweep_interval_seconds == 1
    assert [b.name for b in config.backends] == ["notes", "weather"]
    assert config.backends[0].headers == {"Authorization": "Bearer abc"}
    assert config.backends[1].transport == "sse"
    assert config.backends[1].connect_timeout_seconds == 3
    assert config.aggregation.conflict == "priority"
    assert config.aggregation.prefix_for("notes") == "notes."
    assert config.aggregation.priority_order == ("weather",)
    rules = config.aggregation.tools["notes"]
    assert rules.include == ("add_note", "search")
    assert rules.exclude == ("delete_note",)
    assert rules.overrides["search"] == ToolOverride(
        name="find_notes", description="Find notes by text"
    )
    assert config.limits.max_concurrent_backend_connects == 2


def test_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMCP_SERVER__PORT", "6000")
    monkeypatch.setenv("VMCP_SESSION__STORE", "redis://127.0.0.1:6380/2")
    monkeypatch.setenv("VMCP_SESSION__TTL_SECONDS", "0.25")
    monkeypatch.setenv("VMCP_LIMITS__MAX_CONCURRENT_BACKEND_CONNECTS", "16")

    config = load_config(write(tmp_path, FULL_FILE))

    assert config.server.port == 6000
    assert config.session.store == "redis://127.0.0.1:6380/2"
    assert config.session.ttl_seconds == 0.25
    assert config.limits.max_concurrent_backend_connects == 16
    # untouched keys keep the file's values
    assert config.server.host == "0.0.0.0"
    assert config.session.key_prefix == "gw:"


def test_environment_applies_without_a_file() -> None:
    config = load_config(None, environ={"VMCP_SERVER__HOST": "0.0.0.0"})

    assert config.server.host == "0.0.0.0"


def test_environment_lists_are_comma_separated_or_json() -> None:
    config = load_config(
        None,
        environ={
            "VMCP_SERVER__ALLOWED_ORIGINS": "http://a.example, http://b.example:8080",
            "VMCP_SERVER__ALLOWED_HOSTS": '["gw.example"]',
        },
    )

    assert config.server.allowed_origins == ("http://a.example", "http://b.example:8080")
    assert config.server.allowed_hosts == ("gw.example",)


def test_environment_can_set_a_whole_section_as_json_and_keyed_variables_win() -> None:
    config = load_config(
        None,
        environ={
            "VMCP_BACKENDS": '[{"name": "notes", "url": "http://127.0.0.1:9001/mcp"}]',
            "VMCP_SERVER": '{"host": "0.0.0.0", "port": 1}',
            "VMCP_SERVER__PORT": "2",
        },
    )

    assert [b.name for b in config.backends] == ["notes"]
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 2


def test_environment_reaches_list_items_and_nested_mappings(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, TWO_BACKENDS),
        environ={
            "VMCP_BACKENDS__1__URL": "https://weather.internal/mcp",
            "VMCP_AGGREGATION__TOOLS__NOTES__EXCLUDE": "delete_note,purge",
            "VMCP_AGGREGATION__TOOLS__NOTES__OVERRIDES__SEARCH__NAME": "find_notes",
        },
    )

    assert config.backends[1].url == "https://weather.internal/mcp"
    assert config.backends[0].url == "http://127.0.0.1:9001/mcp"
    rules = config.aggregation.tools["notes"]
    assert rules.exclude == ("delete_note", "purge")
    assert rules.overrides["search"].name == "find_notes"


def test_empty_environment_value_means_empty_string(tmp_path: Path) -> None:
    one_backend = "backends: [{name: notes, url: 'http://127.0.0.1:9001/mcp'}]"

    config = load_config(
        write(tmp_path, one_backend), environ={"VMCP_AGGREGATION__PREFIX_FORMAT": ""}
    )

    assert config.aggregation.prefix_format == ""


def test_unrelated_variables_are_ignored() -> None:
    config = load_config(
        None, environ={"VMCP_HOME": "/srv", "VMCP_TEST_REDIS_URL": "x", "PATH": "/bin"}
    )

    assert config.server.port == 4483


def test_environment_problems_name_the_variable(tmp_path: Path) -> None:
    problems = problems_of(
        write(tmp_path, TWO_BACKENDS),
        {
            "VMCP_SERVER__PORT": "lots",
            "VMCP_SERVER__PROT": "1",
            "VMCP_BACKENDS__5__URL": "http://x",
            "VMCP_SESSION__": "x",
            "VMCP_AGGREGATION__TOOLS": "{not json",
        },
    )

    assert any(p.startswith("server.port: ") and "(from VMCP_SERVER__PORT)" in p for p in problems)
    assert any(
        p.startswith("server.prot: unknown key") and "VMCP_SERVER__PROT" in p for p in problems
    )
    assert any(p.startswith("VMCP_BACKENDS__5__URL: backends has no item 5") for p in problems)
    assert any(p.startswith("VMCP_SESSION__: empty segment") for p in problems)
    assert any(p.startswith("VMCP_AGGREGATION__TOOLS: expected a JSON object") for p in problems)
    assert len(problems) == 5


def test_list_item_override_needs_the_list_in_the_file() -> None:
    problems = problems_of(None, {"VMCP_BACKENDS__0__URL": "http://x"})

    assert problems == ["VMCP_BACKENDS__0__URL: the file has no backends to override an item of"]


# --------------------------------------------------------------------------- reporting


BROKEN_FILE = """\
server:
  port: 70000
  allowed_origins: [localhost]
session:
  store: mongodb://db.example
  key_prefix: vmcp
  ttl_seconds: 0
  cache_capacity: 0
backends:
  - name: Notes
    url: ftp://files.example
  - url: http://127.0.0.1:9002/mcp
  - name: weather
    url: http://127.0.0.1:9003/mcp
  - name: weather
    url: http://127.0.0.1:9004/mcp
    transport: websocket
aggregation:
  conflict: first
  priority_order: [ghost]
  tools:
    phantom: {include: [a]}
limits:
  max_concurrent_backend_connects: 0
"""

BROKEN_LOCATIONS = {
    "server.port": 2,
    "server.allowed_origins[0]": 3,
    "session.store": 5,
    "session.key_prefix": 6,
    "session.ttl_seconds": 7,
    "session.cache_capacity": 8,
    "backends[0].name": 10,
    "backends[0].url": 11,
    "backends[1].name": 12,
    "backends[3].name": 15,
    "backends[3].transport": 17,
    "aggregation.conflict": 19,
    "aggregation.priority_order[0]": 20,
    "aggregation.tools.phantom": 22,
    "limits.max_concurrent_backend_connects": 24,
}


def test_every_problem_is_reported_at_once_with_its_location_and_line(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, BROKEN_FILE))

    by_loc = {loc_of(p): p for p in problems}
    assert set(by_loc) == set(BROKEN_LOCATIONS)
    assert len(problems) == len(BROKEN_LOCATIONS)
    for loc, line in BROKEN_LOCATIONS.items():
        assert by_loc[loc].endswith(f"(line {line})"), by_loc[loc]
    assert "duplicate backend name 'weather' (also backends[2])" in by_loc["backends[3].name"]
    assert "unknown backend 'ghost'" in by_loc["aggregation.priority_order[0]"]
    assert "required" in by_loc["backends[1].name"]


def test_problem_messages_do_not_echo_store_passwords(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "session: {store: 'redis://:hunter2@h:port/0'}"))

    assert len(problems) == 1
    assert problems[0].startswith("session.store: ")
    assert "hunter2" not in problems[0]


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 1\n bad: [\n")

    problems = problems_of(path)

    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: line 3, column 2: YAML syntax error: ")


def test_unclosed_flow_sequence_is_a_syntax_error(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "backends: [\n  {name: a\n"))

    assert "YAML syntax error" in problems[0]
    assert re.search(r"line \d+, column \d+", problems[0])


def test_duplicate_keys_are_reported(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "server:\n  port: 1\n  port: 2\n"))

    assert problems == ["server.port: duplicate key (first at line 2) (line 3)"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    problems = problems_of(path)

    assert problems == [f"{path}: cannot read the configuration file: No such file or directory"]


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "- server\n- session\n"))

    assert len(problems) == 1
    assert "the top level must be a mapping of sections" in problems[0]


def test_unsafe_yaml_tags_are_refused(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "server: !!python/object:os.system {}\n"))

    assert "YAML" in problems[0]


@pytest.mark.parametrize(
    ("text", "loc"),
    [
        ("servers: {}", "servers"),
        ("server: {prot: 1}", "server.prot"),
        ("session: {ttl: 1}", "session.ttl"),
        ("backends: [{name: a, url: 'http://a', timeout: 1}]", "backends[0].timeout"),
        ("aggregation: {mode: prefix}", "aggregation.mode"),
        (
            "backends: [{name: a, url: 'http://a'}]\naggregation: {tools: {a: {rename: {}}}}",
            "aggregation.tools.a.rename",
        ),
        (
            "backends: [{name: a, url: 'http://a'}]\n"
            "aggregation: {tools: {a: {overrides: {t: {title: x}}}}}",
            "aggregation.tools.a.overrides.t.title",
        ),
        ("limits: {max_connections: 1}", "limits.max_connections"),
    ],
)
def test_unknown_keys_are_rejected(tmp_path: Path, text: str, loc: str) -> None:
    problems = problems_of(write(tmp_path, text))

    assert len(problems) == 1
    assert problems[0].startswith(f"{loc}: unknown key (expected one of: ")


def test_odd_keys_are_quoted_in_locations(tmp_path: Path) -> None:
    text = """\
    backends: [{name: a, url: 'http://a'}]
    aggregation: {tools: {a: {overrides: {my.tool: {name: 'bad name'}}}}}
    """

    problems = problems_of(write(tmp_path, text))

    assert [loc_of(p) for p in problems] == ['aggregation.tools.a.overrides["my.tool"].name']


# --------------------------------------------------------------------------- fields


@pytest.mark.parametrize(
    "store",
    [
        "memory",
        "redis://127.0.0.1:6379/0",
        "redis://h",
        "redis://user:pw@h:6379",
        "redis://[::1]:6379/3",
        "rediss://h:6380/1?ssl_cert_reqs=none",
        "unix:///var/run/redis.sock",
        "unix:///var/run/redis.sock?db=2",
        "redis+sentinel://h1:26379/mymaster",
        "redis+sentinel://:pw@h1:26379,h2:26379,[::1]:26379/mymaster/4",
        "redis+cluster://h:7000",
        "redis+cluster://h:7000/0",
        "redis+cluster://a:7000,b:7001,c",
    ],
)
def test_valid_store_urls(store: str) -> None:
    assert SessionConfig(store=store).store == store


@pytest.mark.parametrize(
    ("store", "complaint"),
    [
        ("Memory", "must be 'memory' or a URL"),
        ("mongodb://h", "must be 'memory' or a URL"),
        ("REDIS://h", "must be 'memory' or a URL"),
        ("redis://", "empty or malformed host"),
        ("redis://h:99999", "invalid port"),
        ("redis://h:6379/zero", "database number"),
        ("redis://h:6379/0/1", "path must be empty or /db"),
        ("redis://::1:6379", "IPv6"),
        ("unix://relative.sock", "absolute socket path"),
        ("unix:///s.sock?db=x", "database number"),
        ("redis+sentinel://h1/mymaster", "explicit port"),
        ("redis+sentinel://h1:26379", "service name"),
        ("redis+sentinel://h1:26379/m/x", "database number"),
        ("redis+sentinel://h1:26379/m/1/2", "/service or /service/db"),
        ("redis://a:1,b:2", "single host:port"),
        ("redis+cluster://a:1,:2", "node"),
        ("redis+cluster://a:1/3", "only database 0"),
    ],
)
def test_invalid_store_urls(store: str, complaint: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(complaint)):
        SessionConfig(store=store)


@pytest.mark.parametrize(
    ("kind", "store"),
    [
        ("memory", "memory"),
        ("redis", "redis://h"),
        ("rediss", "rediss://h"),
        ("unix", "unix:///s"),
        ("redis+sentinel", "redis+sentinel://h:1/m"),
        ("redis+cluster", "redis+cluster://h:1"),
    ],
)
def test_store_kind(kind: str, store: str) -> None:
    assert SessionConfig(store=store).store_kind == kind


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("key_prefix", "vmcp"),
        ("key_prefix", "a b:"),
        ("ttl_seconds", 0),
        ("ttl_seconds", -1),
        ("ttl_seconds", float("inf")),
        ("cache_capacity", 0),
        ("store_timeout_seconds", 0),
        ("sweep_interval_seconds", 0),
    ],
)
def test_invalid_session_values(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        SessionConfig.model_validate({field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("host", ""),
        ("host", "http://h"),
        ("port", -1),
        ("port", 65536),
        ("path", "mcp"),
        ("path", "/mcp?x=1"),
        ("allowed_origins", ["localhost:6274"]),
        ("allowed_origins", ["http://h/path"]),
        ("allowed_hosts", ["http://h"]),
        ("allowed_hosts", ["h/x"]),
        ("max_body_bytes", 0),
        ("replica_id", "has space"),
    ],
)
def test_invalid_server_values(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        ServerConfig.model_validate({field: value})


@pytest.mark.parametrize("name", ["Notes", "", "has space", "dots.not.allowed", "x" * 65])
def test_invalid_backend_names(name: str) -> None:
    with pytest.raises(ValidationError):
        BackendConfig(name=name, url="http://h")


@pytest.mark.parametrize(
    "url",
    ["ftp://h/mcp", "h:9001/mcp", "http://", "http://h:0/mcp", "http://h:99999", "http://h#x"],
)
def test_invalid_backend_urls(url: str) -> None:
    with pytest.raises(ValidationError):
        BackendConfig(name="b", url=url)


@pytest.mark.parametrize(
    "headers",
    [
        {"Mcp-Session-Id": "x"},
        {"host": "x"},
        {"bad header": "x"},
        {"X-Key": "a\r\nInjected: 1"},
    ],
)
def test_invalid_backend_headers(headers: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        BackendConfig(name="b", url="http://h", headers=headers)


def test_tool_rules() -> None:
    with pytest.raises(ValidationError, match="both include and exclude: a"):
        BackendToolsConfig(include=("a", "b"), exclude=("a",))
    with pytest.raises(ValidationError, match="a, b are all renamed to 'c'"):
        BackendToolsConfig(overrides={"a": ToolOverride(name="c"), "b": ToolOverride(name="c")})
    with pytest.raises(ValidationError, match="needs a name, a description or visible: false"):
        ToolOverride()
    assert ToolOverride(description="only the text").name is None


@pytest.mark.parametrize("name", ["", "has space", "slash/name", "x" * 65])
def test_invalid_override_names(name: str) -> None:
    with pytest.raises(ValidationError):
        ToolOverride(name=name)


@pytest.mark.parametrize("name", ["a", "A.b-c_d", "x" * 64])
def test_valid_override_names(name: str) -> None:
    assert ToolOverride(name=name).name == name


@pytest.mark.parametrize("prefix_format", ["{backend}_", "{backend}.", "mcp-{backend}__", "", "x_"])
def test_valid_prefix_formats(prefix_format: str) -> None:
    assert AggregationConfig(prefix_format=prefix_format).prefix_format == prefix_format


@pytest.mark.parametrize(
    "prefix_format", ["{name}_", "{backend!r}", "{backend:>5}", "{backend} ", "{backend", "{0}"]
)
def test_invalid_prefix_formats(prefix_format: str) -> None:
    with pytest.raises(ValidationError):
        AggregationConfig(prefix_format=prefix_format)


def test_priority_order_without_repeats() -> None:
    with pytest.raises(ValidationError, match="more than once: a"):
        AggregationConfig(priority_order=("a", "b", "a"))


# --------------------------------------------------------------------------- cross-section


def test_empty_prefix_is_allowed_with_one_backend(tmp_path: Path) -> None:
    text = "backends: [{name: a, url: 'http://a'}]\naggregation: {prefix_format: ''}"

    assert load_config(write(tmp_path, text), environ={}).aggregation.prefix_format == ""


def test_prefix_without_backend_is_refused_with_several_backends_in_prefix_mode(
    tmp_path: Path,
) -> None:
    for prefix_format in ("", "x_"):
        text = TWO_BACKENDS + f"aggregation: {{prefix_format: '{prefix_format}'}}\n"

        problems = problems_of(write(tmp_path, text))

        assert len(problems) == 1
        assert problems[0].startswith("aggregation.prefix_format: ")
        assert "must contain {backend}" in problems[0]


@pytest.mark.parametrize("conflict", ["priority", "manual"])
def test_empty_prefix_is_allowed_with_several_backends_outside_prefix_mode(
    tmp_path: Path, conflict: str
) -> None:
    text = TWO_BACKENDS + f"aggregation: {{conflict: {conflict}, prefix_format: ''}}\n"

    assert load_config(write(tmp_path, text), environ={}).aggregation.conflict == conflict


def test_tools_must_name_configured_backends(tmp_path: Path) -> None:
    text = TWO_BACKENDS + "aggregation: {tools: {notes: {}, ghost: {}}}\n"

    problems = problems_of(write(tmp_path, text))

    assert problems == [
        "aggregation.tools.ghost: unknown backend 'ghost' (backends: notes, weather) (line 6)"
    ]


def test_cross_section_checks_also_guard_configs_built_in_code() -> None:
    with pytest.raises(ValidationError, match="duplicate backend name 'a'"):
        VmcpConfig(
            backends=(
                BackendConfig(name="a", url="http://a"),
                BackendConfig(name="a", url="http://b"),
            )
        )
    with pytest.raises(ValidationError, match="unknown backend 'b'"):
        VmcpConfig(
            backends=(BackendConfig(name="a", url="http://a"),),
            aggregation=AggregationConfig(priority_order=("b",)),
        )


# --------------------------------------------------------------------------- helpers


def test_with_overrides_revalidates_and_names_the_source(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL_FILE), environ={})

    changed = with_overrides(config, {"server": {"port": 7000}}, source="--port")

    assert changed.server.port == 7000
    assert changed.server.host == config.server.host
    assert changed.server.replica_id == config.server.replica_id
    assert config.server.port == 5000
    with pytest.raises(ConfigError) as caught:
        with_overrides(config, {"server": {"port": 70000}}, source="--port")
    assert str(caught.value).startswith("server.port: ")
    assert str(caught.value).endswith("(from --port)")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:secret@h/0", "redis://user:***@h/0"),
        ("http://h/mcp", "http://h/mcp"),
        ("unix:///run/redis.sock?db=1&password=pw", "unix:///run/redis.sock?db=1&password=***"),
        ("memory", "memory"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# --------------------------------------------------------------------------- auth

OIDC_FILE = """\
auth:
  resource_url: https://mcp.example.com/mcp
  incoming:
    type: oidc
    issuer: https://idp.example.com/
    audience: https://mcp.example.com/mcp
    jwks_url: https://idp.example.com/.well-known/jwks.json
    algorithms: [RS256, PS256]
    leeway_seconds: 5
    jwks_min_refresh_seconds: 60
    jwks_max_age_seconds: 3600
    jwks_timeout_seconds: 2
    extra_issuers:
      - {issuer: https://partner.example, jwks_file: /etc/vmcp/partner-jwks.json}
"""

SHA = "ab" * 32


def test_auth_defaults_to_anonymous() -> None:
    auth = load_config(None, environ={}).auth

    assert auth.resource_url is None
    assert auth.incoming.type == "anonymous"
    assert auth.incoming.algorithms == ("RS256", "ES256", "EdDSA")
    assert auth.incoming.leeway_seconds == 30
    assert auth.incoming.jwks_min_refresh_seconds == 30
    assert auth.incoming.tokens == ()


def test_every_oidc_key_is_read(tmp_path: Path) -> None:
    auth = load_config(write(tmp_path, OIDC_FILE), environ={}).auth
    incoming = auth.incoming

    assert auth.resource_url == "https://mcp.example.com/mcp"
    assert incoming.type == "oidc"
    assert incoming.issuer == "https://idp.example.com/"  # kept exactly: iss must match it
    assert incoming.audience == ("https://mcp.example.com/mcp",)
    assert incoming.jwks_url == "https://idp.example.com/.well-known/jwks.json"
    assert incoming.jwks_file is None
    assert incoming.algorithms == ("RS256", "PS256")
    assert incoming.leeway_seconds == 5
    assert incoming.jwks_min_refresh_seconds == 60
    assert incoming.jwks_max_age_seconds == 3600
    assert incoming.jwks_timeout_seconds == 2
    assert [(e.issuer, e.jwks_url, e.jwks_file) for e in incoming.extra_issuers] == [
        ("https://partner.example", None, "/etc/vmcp/partner-jwks.json")]


def test_static_tokens_are_read_and_hashes_lower_cased(tmp_path: Path) -> None:
    text = f"""\
    auth:
      incoming:
        type: static
        tokens:
          - {{token_sha256: {SHA.upper()}, issuer: ci, subject: deploy-bot}}
          - {{token_env: VMCP_TEST_TOKEN, issuer: ci, subject: alice}}
    """

    tokens = load_config(write(tmp_path, text), environ={}).auth.incoming.tokens

    assert [(t.token_sha256, t.token_env, t.issuer, t.subject) for t in tokens] == [
        (SHA, None, "ci", "deploy-bot"), (None, "VMCP_TEST_TOKEN", "ci", "alice")]


def test_auth_from_the_environment() -> None:
    environ = {
        "VMCP_AUTH__INCOMING__TYPE": "oidc",
        "VMCP_AUTH__INCOMING__ISSUER": "https://idp.example.com",
        "VMCP_AUTH__INCOMING__AUDIENCE": "a,b",
        "VMCP_AUTH__INCOMING__JWKS_URL": "https://idp.example.com/jwks",
        "VMCP_AUTH__INCOMING__ALGORITHMS": '["ES256"]',
        "VMCP_AUTH__RESOURCE_URL": "https://mcp.example.com/mcp",
    }

    auth = load_config(None, environ=environ).auth

    assert auth.incoming.type == "oidc"
    assert auth.incoming.audience == ("a", "b")
    assert auth.incoming.algorithms == ("ES256",)
    assert auth.resource_url == "https://mcp.example.com/mcp"


def test_auth_survives_with_overrides(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, OIDC_FILE), environ={})

    changed = with_overrides(config, {"server": {"port": 7000}})

    assert changed.auth == config.auth


def test_oidc_without_its_required_keys(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "auth: {incoming: {type: oidc}}"))

    assert problems == [
        "auth.incoming: type 'oidc' needs audience (what the tokens' aud must name); "
        "type 'oidc' needs exactly one of jwks_url and jwks_file; "
        "type 'oidc' needs issuer (the tokens' iss) (line 1)"]


def test_oidc_with_both_key_sources(tmp_path: Path) -> None:
    text = """\
    auth:
      incoming: {type: oidc, issuer: 'https://i', audience: a, jwks_url: 'https://i/k',
                 jwks_file: k.json}
    """

    assert problems_of(write(tmp_path, text)) == [
        "auth.incoming: type 'oidc' needs exactly one of jwks_url and jwks_file (line 2)"]


@pytest.mark.parametrize(("algorithms", "complaint"), [
    (["none"], "'none' is never accepted"),
    (["RS256", "HS256"], "'HS256' is symmetric"),
    (["hs512"], "'hs512' is symmetric"),
    (["RS257"], "unknown algorithm 'RS257'"),
    ([], "list at least one algorithm"),
])
def test_unsafe_or_unknown_algorithms(algorithms: list[str], complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={"VMCP_AUTH__INCOMING": json.dumps({
            "type": "oidc", "issuer": "https://i", "audience": "a", "jwks_url": "https://i/k",
            "algorithms": algorithms})})

    message = str(caught.value)
    assert message.startswith("auth.incoming.algorithms: ")
    assert complaint in message


@pytest.mark.parametrize(("incoming", "loc", "complaint"), [
    ({"type": "oidc", "issuer": "idp.example", "audience": "a", "jwks_url": "https://i/k"},
     "auth.incoming.issuer", "must be an http:// or https:// URL"),
    ({"type": "oidc", "issuer": "https://i?x=1", "audience": "a", "jwks_url": "https://i/k"},
     "auth.incoming.issuer", "must not have a ?query or #fragment"),
    ({"type": "oidc", "issuer": "https://i", "audience": "", "jwks_url": "https://i/k"},
     "auth.incoming.audience", "an audience must not be empty"),
    ({"type": "oidc", "issuer": "https://i", "audience": "a", "jwks_url": "ftp://i/k"},
     "auth.incoming.jwks_url", "must be an http:// or https:// URL"),
    ({"type": "oidc", "issuer": "https://i", "audience": "a", "jwks_url": "https://i/k",
      "leeway_seconds": -1}, "auth.incoming.leeway_seconds", "greater than or equal to 0"),
    ({"type": "oidc", "issuer": "https://i", "audience": "a", "jwks_url": "https://i/k",
      "extra_issuers": [{"issuer": "https://i", "jwks_url": "https://i/k2"}]},
     "auth.incoming", "issuer listed more than once: https://i"),
    ({"type": "oidc", "issuer": "https://i", "audience": "a", "jwks_url": "https://i/k",
      "extra_issuers": [{"issuer": "https://j"}]},
     "auth.incoming.extra_issuers[0]", "give exactly one of jwks_url and jwks_file"),
    ({"type": "static"}, "auth.incoming", "type 'static' needs at least one entry in tokens"),
    ({"type": "static", "tokens": [{"issuer": "ci", "subject": "bot"}]},
     "auth.incoming.tokens[0]", "give exactly one of token_sha256 and token_env"),
    ({"type": "static", "tokens": [{"token_sha256": SHA, "token_env": "T", "issuer": "ci",
                                    "subject": "bot"}]},
     "auth.incoming.tokens[0]", "give exactly one of token_sha256 and token_env"),
    ({"type": "static", "tokens": [{"token_sha256": "secret", "issuer": "ci",
                                    "subject": "bot"}]},
     "auth.incoming.tokens[0].token_sha256", "must be 64 hex digits"),
    ({"type": "static", "tokens": [{"token_env": "MY-TOKEN", "issuer": "ci",
                                    "subject": "bot"}]},
     "auth.incoming.tokens[0].token_env", "'MY-TOKEN' is not an environment variable name"),
    ({"type": "static", "tokens": [{"token_env": "T", "issuer": "", "subject": "bot"}]},
     "auth.incoming.tokens[0].issuer", "must be non-empty"),
    ({"type": "static", "tokens": [{"token_env": "T", "issuer": "ci", "subject": "b\u0000t"}]},
     "auth.incoming.tokens[0].subject", "free of control characters"),
    ({"type": "static", "tokens": [{"token_sha256": SHA, "issuer": "ci", "subject": "a"},
                                   {"token_sha256": SHA.upper(), "issuer": "ci",
                                    "subject": "b"}]},
     "auth.incoming", "tokens list token_sha256 the same hash more than once"),
    ({"type": "static", "issuer": "https://i",
      "tokens": [{"token_env": "T", "issuer": "ci", "subject": "a"}]},
     "auth.incoming", "issuer applies only to type 'oidc', not 'static'"),
    ({"tokens": [{"token_env": "T", "issuer": "ci", "subject": "a"}]},
     "auth.incoming", "tokens applies only to type 'static', not 'anonymous'"),
    ({"type": "jwt"}, "auth.incoming.type", "Input should be 'anonymous', 'oidc' or 'static'"),
])
def test_invalid_incoming_auth(incoming: dict[str, object], loc: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={"VMCP_AUTH": json.dumps({"incoming": incoming})})

    problems = str(caught.value).splitlines()
    assert len(problems) == 1, problems
    assert loc_of(problems[0]) == loc
    assert complaint in problems[0]
    assert problems[0].endswith("(from VMCP_AUTH)")


@pytest.mark.parametrize("url", ["mcp.example.com/mcp", "https://mcp.example.com/mcp#x",
                                 "https://mcp.example.com/mcp?a=1", 'https://h/"x"'])
def test_invalid_resource_url(url: str) -> None:
    problems = problems_of(None, {"VMCP_AUTH__RESOURCE_URL": url})

    assert [loc_of(p) for p in problems] == ["auth.resource_url"]


def test_unknown_auth_keys_are_listed(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "auth: {incoming: {type: oidc, secret: x}}"))

    assert any(p.startswith("auth.incoming.secret: unknown key (expected one of: type, issuer, ")
               for p in problems), problems


def test_status_windows_must_outlast_a_heartbeat() -> None:
    assert StatusConfig().expiry_seconds > StatusConfig().heartbeat_seconds
    with pytest.raises(ValueError, match="longer than heartbeat_seconds"):
        StatusConfig(heartbeat_seconds=5, expiry_seconds=5)
    with pytest.raises(ValueError, match="at least expiry_seconds"):
        StatusConfig(heartbeat_seconds=1, expiry_seconds=10, forget_seconds=5)
