"""The one typed config object. Every field is also settable as JOBQUEUE_<NAME>."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "jobqueue-grpc"


class Settings(BaseSettings):
    """Server configuration. Defaults suit one laptop; the comments say what a bad value breaks."""

    model_config = SettingsConfigDict(env_prefix="JOBQUEUE_", frozen=True, extra="ignore")

    host: str = Field(
        "127.0.0.1",
        description="Address to listen on; 0.0.0.0 exposes the server: turn on auth.",
    )
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    database_url: str | None = Field(
        None,
        description="PostgreSQL URL. Unset: an embedded PostgreSQL is started in data_dir.",
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Home of the embedded PostgreSQL; its data survives restarts.",
    )
    metrics_port: int = Field(
        9464, ge=0, le=65535, description="Prometheus /metrics HTTP port; 0 turns metrics off."
    )
    metrics_host: str = Field("127.0.0.1", description="Address the metrics port binds to.")
    grace_period: float = Field(
        10.0,
        ge=0,
        description="Seconds SIGTERM waits for in-flight outcomes before releasing the rest. "
        "Keep it below Kubernetes' terminationGracePeriodSeconds or work is cut off.",
    )
    reflection: bool = Field(True, description="gRPC server reflection (grpcurl needs it).")
    migrate_on_start: bool = Field(
        True, description="Apply migrations at start (under an advisory lock)."
    )
    payload_max_bytes: int = Field(
        1024 * 1024, ge=2, description="Largest JSON payload accepted, in bytes once encoded."
    )
    max_message_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest gRPC message received. Too small refuses big batches; too large "
        "lets one client hold much memory.",
    )
    default_max_attempts: int = Field(5, ge=1, le=1000)
    lease_duration: float = Field(
        30.0,
        ge=1.0,
        description="Seconds a lease lasts unless extended. Too short re-runs slow jobs that "
        "are still running (duplicate execution); too long delays recovery from dead workers.",
    )
    backoff_base: float = Field(1.0, ge=0, description="Retry backoff base, seconds.")
    backoff_cap: float = Field(3600.0, ge=0, description="Retry backoff cap, seconds.")
    max_batch_size: int = Field(1000, ge=1, le=10000, description="Most jobs in EnqueueBatch.")
    max_page_size: int = Field(1000, ge=1, description="Most items in one list page.")
    default_page_size: int = Field(100, ge=1)
    max_in_flight: int = Field(
        1000, ge=1, description="Cap on a Lease stream's max_in_flight (and its default)."
    )
    db_pool_min: int = Field(2, ge=1)
    db_pool_max: int = Field(
        10, ge=2, description="Connections per server; replicas x this must fit max_connections."
    )
    reaper_interval: float = Field(
        1.0, gt=0, description="Seconds between sweeps for expired leases and due jobs."
    )
    schedule_misfire_grace: float = Field(
        60.0,
        ge=1,
        description="Seconds a schedule's tick may be late and still run whatever its "
        "missed-tick policy; older ticks are missed (the policy decides). Too small counts a "
        "slow restart's ticks as missed; too large runs ticks long after their time.",
    )
    # -- retention (the pruner; 0 keeps for ever) ---------------------------------------------
    retention_succeeded: float = Field(
        86_400.0,
        ge=0,
        description="Seconds a SUCCEEDED job is kept after it finished (1 day); 0 keeps for ever. "
        "Too long grows the jobs table and slows every count; too short loses results clients "
        "still poll for with GetJob.",
    )
    retention_cancelled: float = Field(
        7 * 86_400.0, ge=0, description="Seconds a CANCELLED job is kept (7 days); 0: for ever."
    )
    retention_failed: float = Field(
        7 * 86_400.0,
        ge=0,
        description="Seconds a FAILED job row is kept (7 days); 0: for ever. Its dead letter is a "
        "separate copy with its own retention, so requeue still works after the row is gone.",
    )
    dead_letter_retention: float = Field(
        0.0,
        ge=0,
        description="Seconds a dead letter is kept after it failed; 0 (the default) keeps it "
        "until an operator requeues, deletes or purges it.",
    )
    prune_interval: float = Field(
        60.0, gt=0, description="Seconds between pruning rounds (each replica runs one)."
    )
    prune_batch_size: int = Field(
        500,
        ge=1,
        le=100_000,
        description="Rows deleted per statement. Large batches hold many row locks at once and "
        "can stall dispatch; small ones just take more statements.",
    )
    # -- production hardening: auth, TLS, limits (see README "Production") --------------------
    auth_tokens_file: Path | None = Field(
        None,
        description="File of `role:token` lines (roles: producer, worker, admin; # comments). "
        "Set, or auth_tokens set: every call but health and reflection needs a bearer token. "
        "Unset both: no authentication, so never expose such a server beyond a trusted network.",
    )
    auth_tokens: SecretStr | None = Field(
        None,
        description="`role:token` entries separated by commas or newlines, from the environment "
        "(JOBQUEUE_AUTH_TOKENS), never a flag: a token on a command line leaks through ps.",
    )
    tls_cert: Path | None = Field(
        None, description="PEM server certificate (chain); with tls_key turns TLS on."
    )
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert.")
    tls_client_ca: Path | None = Field(
        None,
        description="PEM CA bundle; set, every client must present a certificate it signed (mTLS).",
    )
    max_lease_streams: int = Field(
        1000,
        ge=1,
        description="Most Lease streams open on one server; more get RESOURCE_EXHAUSTED. Each "
        "holds memory and a dispatcher slot; too low turns workers away.",
    )
    lease_open_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a new Lease stream may take to send `open`; past it the stream ends "
        "DEADLINE_EXCEEDED and frees its max_lease_streams slot. Too low refuses workers on a slow "
        "link; too high lets idle connections hold slots that real workers need.",
    )
    max_concurrent_rpcs: int = Field(
        10_000,
        ge=1,
        description="Most calls (streams included) a server runs at once; more get "
        "RESOURCE_EXHAUSTED. Bounds memory against a flood; keep it above max_lease_streams.",
    )
    max_concurrent_streams: int = Field(
        1000,
        ge=1,
        description="HTTP/2 streams per connection; a client past it waits for a free one.",
    )
    keepalive_time: float = Field(
        30.0,
        gt=0,
        description="Seconds between the server's pings on an idle connection. Too long keeps "
        "dead peers (and their leases) around; too short wastes traffic.",
    )
    keepalive_timeout: float = Field(
        10.0, gt=0, description="Seconds without a ping ack before the peer is declared dead."
    )
    keepalive_min_ping_interval: float = Field(
        10.0,
        gt=0,
        description="Shortest interval between client pings the server accepts; clients pinging "
        "faster are disconnected (too_many_pings). Must not exceed what clients use (10 s).",
    )
    max_watches_per_connection: int = Field(
        100,
        ge=1,
        description="Most WatchJob/WatchJobs streams one client connection holds at once; more "
        "get RESOURCE_EXHAUSTED (TOO_MANY_WATCHES). Too low breaks a dashboard or a client "
        "waiting on many jobs; too high lets one client hold many database reads per change.",
    )
    max_watches: int = Field(
        10_000,
        ge=1,
        description="Most watches on one server; each change notice is fanned out to them.",
    )
    http_port: int = Field(
        8080,
        ge=0,
        le=65535,
        description="HTTP port for Connect, gRPC-Web and JSON (curl) calls and the dashboard at "
        "/; binds `host`; 0 turns it off. Same auth, roles, limits and metrics as gRPC.",
    )
    http_cors_origins: str = Field(
        "",
        description="Origins (comma-separated, or *) whose browser pages may call the HTTP port "
        "from another origin; empty: no CORS headers (the dashboard is same-origin).",
    )
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description="Server processes sharing the gRPC port (SO_REUSEPORT), each a replica "
        "with its own event loop: more cores used. The first also serves HTTP and /metrics.",
    )
    # Set by `processes` for the extra processes it starts (and for the first): bind the gRPC
    # port with SO_REUSEPORT. Off otherwise, so that a port already taken fails the start.
    reuse_port: bool = Field(False, description="Share the gRPC port (set by `processes`).")
    log_level: str = Field("INFO")
    log_format: str = Field("text", pattern="^(text|json)$")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.backoff_cap < self.backoff_base:
            raise ValueError("backoff_cap must be >= backoff_base")
        if self.db_pool_min > self.db_pool_max:
            raise ValueError("db_pool_min must be <= db_pool_max")
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size must be <= max_page_size")
        return self

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        return self
