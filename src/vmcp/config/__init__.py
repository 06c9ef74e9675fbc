"""The gateway's configuration: a YAML file, overridden by ``VMCP_*`` environment variables.

Layout of the file (every key optional except each backend's ``name`` and ``url``)::

    server:      {host, port, path, allowed_origins, allowed_hosts, max_body_bytes, replica_id,
                  admin: {host, port}}
    session:     {store, key_prefix, ttl_seconds, cache_capacity, store_timeout_seconds,
                  sweep_interval_seconds}
    backends:    [{name, url, transport, headers, connect_timeout_seconds, call_timeout_seconds,
                   auth: {type: none | header | forward | token_exchange,
                          name, value | value_env, token_url, audience, client_id,
                          client_secret_env, scope, allow_headers}}]
    aggregation: {conflict, prefix_format, priority_order,
                  tools: {<backend>: {include, exclude, overrides: {<tool>: {name, description}}}}}
    limits:      {max_concurrent_backend_connects, max_sessions_per_identity,
                  call_timeout_seconds}
    composite_tools: [{name, description, parameters, timeout_seconds, max_parallel,
                      hide_tools, output: {<field>: {type, value, description}},
                      steps: [{id, type: tool | elicitation | for_each, depends_on, when,
                               timeout_seconds, default,
                               on_error: {action: abort | continue | retry, retries,
                                          delay_seconds},
                               tool, arguments, message, schema, on_decline,
                               items, max_parallel, max_iterations,
                               step: {tool, arguments}}]}]
    stateless:   {upstream_idle_seconds, catalog_ttl_seconds, answer_timeout_seconds}
    audit:       {enabled, sink: stdout | file:PATH, event_types, include_arguments,
                  redact_keys, max_data_bytes, queue_size}
    auth:        {resource_url,
                  authz: {type: cedar, policies_file, entities_file, group_claims},
                  incoming: {type: anonymous | oidc | static,
                             issuer, audience, jwks_url | jwks_file, algorithms, leeway_seconds,
                             jwks_min_refresh_seconds, jwks_max_age_seconds, jwks_timeout_seconds,
                             extra_issuers: [{issuer, jwks_url | jwks_file}],
                             tokens: [{token_sha256 | token_env, issuer, subject}]}}

Environment overrides are named ``VMCP_<SECTION>__<KEY>`` (``VMCP_SERVER__PORT=5000``,
``VMCP_SESSION__STORE=redis://127.0.0.1:6379/0``) and win over the file:

* path segments are separated by ``__`` and lower-cased, so deeper keys work too
  (``VMCP_AGGREGATION__TOOLS__NOTES__EXCLUDE=delete_note``); a numeric segment addresses an
  item of a list that the file already has (``VMCP_BACKENDS__0__URL=...``);
* ``VMCP_<SECTION>`` without ``__`` replaces or deep-merges a whole section given as JSON
  (``VMCP_BACKENDS='[{"name": "notes", "url": "http://..."}]'``); other ``VMCP_`` names
  without ``__`` are not configuration and are ignored, so unrelated variables never break
  start-up;
* a scalar value is passed as the raw string and converted by validation (``"5000"`` becomes
  5000; an empty string stays empty, so ``VMCP_AGGREGATION__PREFIX_FORMAT=`` means ``""``);
  a list of strings is JSON (``["a", "b"]``) or comma-separated (``a,b``); a mapping or a list
  of mappings is JSON.

The environment is read by hand rather than through pydantic-settings so that a bad variable
is reported like any other problem - with its location and the variable's name - instead of
aborting on the first undecodable value.

Every model is frozen: attributes cannot be reassigned and sequences are tuples. Problems are
collected, not raised one at a time: :func:`load_config` raises one :class:`ConfigError` whose
message has one problem per line, each starting with its location (``backends[1].url: ...``),
followed by the file line it came from or the environment variable that set it.
"""

from __future__ import annotations

from vmcp.config._checks import (
    ASYMMETRIC_ALGORITHMS,
    AUDIT_EVENT_TYPES,
    DEFAULT_ALGORITHMS,
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
    EXPOSED_NAME_PATTERN,
    ConflictMode,
    IncomingAuthType,
    OutgoingAuthType,
    StoreKind,
    Transport,
    redact_url,
)
from vmcp.config.advice import stdio_warnings
from vmcp.config.auth import (
    AuthConfig,
    AuthzConfig,
    IncomingAuthConfig,
    OutgoingAuthConfig,
    StaticTokenConfig,
    TrustedIssuerConfig,
)
from vmcp.config.backends import (
    AggregationConfig,
    BackendConfig,
    BackendConnectionsConfig,
    BackendToolsConfig,
    EnvFrom,
    ToolOverride,
)
from vmcp.config.composite import (
    CompositeToolConfig,
    InnerStep,
    OnError,
    OutputField,
    StepConfig,
)
from vmcp.config.loading import (
    load_config,
    unmatched_env_warnings,
    with_overrides,
)
from vmcp.config.models import (
    AdminConfig,
    AuditConfig,
    HealthConfig,
    LimitsConfig,
    ServerConfig,
    SessionConfig,
    StatelessConfig,
    StatusConfig,
    TelemetryConfig,
    VmcpConfig,
)

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "AUDIT_EVENT_TYPES",
    "DEFAULT_ALGORITHMS",
    "ENV_NESTED_DELIMITER",
    "ENV_PREFIX",
    "EXPOSED_NAME_PATTERN",
    "AdminConfig",
    "AggregationConfig",
    "AuditConfig",
    "AuthConfig",
    "AuthzConfig",
    "BackendConfig",
    "BackendConnectionsConfig",
    "BackendToolsConfig",
    "CompositeToolConfig",
    "ConflictMode",
    "EnvFrom",
    "HealthConfig",
    "IncomingAuthConfig",
    "IncomingAuthType",
    "InnerStep",
    "LimitsConfig",
    "OnError",
    "OutgoingAuthConfig",
    "OutgoingAuthType",
    "OutputField",
    "ServerConfig",
    "SessionConfig",
    "StatelessConfig",
    "StaticTokenConfig",
    "StatusConfig",
    "StepConfig",
    "StoreKind",
    "TelemetryConfig",
    "ToolOverride",
    "Transport",
    "TrustedIssuerConfig",
    "VmcpConfig",
    "load_config",
    "redact_url",
    "stdio_warnings",
    "unmatched_env_warnings",
    "with_overrides",
]

