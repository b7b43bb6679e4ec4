"""One settings path for web, workers, CLI and tests.

Values come from the environment, then a `.env` file in the working directory
(the environment wins). Reading settings connects to nothing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values

DEFAULTS = {
    "DATABASE_URL": "",
    "REDIS_URL": "",
    "PUSH_TOKENS": "",
    "PUSH_SIGNING_SECRETS": "",
    "MAX_CUSTOM_DATA_KEYS": "100",
    "PUSH_TIMEZONE": "UTC",
    "MAX_BODY_BYTES": "65536",
    "QUEUE_HIGH_WATER": "1000000",
    "PORT": "8000",
    "INTERNAL_PORT": "",  # set: /metrics and /status only there, never on PORT
    "REDIS_SENTINELS": "",  # host:port,... of Redis Sentinels: the master is found through them
    "REDIS_SENTINEL_MASTER": "",
    "REDIS_MIN_REPLICAS": "0",  # n > 0: a push is 202 through Redis only once n replicas have it
    "PUSHLINE_QUEUE_PREFIX": "pushline",
    "PUSHLINE_BATCH_SIZE": "500",
    "PUSHLINE_BATCH_WAIT_MS": "20",
    "PUSHLINE_LEASE_SECONDS": "60",
    "PUSHLINE_WORKER_STALL_SECONDS": "120",
    "PUSHLINE_WORKER_CONCURRENCY": "0",  # 0: one pool process per CPU (Celery's default)
    "PUSHLINE_WORKER_POOL": "prefork",  # or threads
    "PUSHLINE_RETENTION_DAYS": "0",  # 0: off; beat's retention task then deletes nothing
    "LOG_LEVEL": "INFO",
}

_SOURCE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


SENTINEL_SCHEME = "redis+sentinel"


def sentinel_url(redis_url: str, sentinels: str, master: str) -> str:
    """REDIS_URL itself, or with REDIS_SENTINELS one URL that says it all, so that
    every client made from settings.redis_url finds the master through Sentinel:
    redis+sentinel://[:password@]host:port,host:port/<master>/<db>. REDIS_URL then
    gives only the password and the db number."""
    hosts = [h.strip() for h in sentinels.split(",") if h.strip()]
    if not hosts or redis_url.startswith(SENTINEL_SCHEME + "://"):  # none, or made already
        return redis_url
    if not master:
        raise ConfigError("REDIS_SENTINELS is set but REDIS_SENTINEL_MASTER (the monitored master's name) is not")
    for host in hosts:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ConfigError(f"REDIS_SENTINELS: {host!r} is not host:port")
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url) if redis_url else None
    password = parts.password if parts else None
    db = (parts.path.lstrip("/") or "0") if parts else "0"
    auth = f":{password}@" if password else ""
    return f"{SENTINEL_SCHEME}://{auth}{','.join(hosts)}/{master}/{db}"


class ConfigError(ValueError):
    """A setting is unusable; the message is one line an operator can act on."""


@dataclass(frozen=True)
class Token:
    source: str
    secret: str = field(repr=False)


def parse_tokens(raw: str) -> tuple[Token, ...]:
    """`tok1,paris:tok2` -> tokens; a bare token belongs to source `default`."""
    tokens = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        source, sep, secret = entry.rpartition(":")
        if not sep:
            source = "default"
        if not _SOURCE_NAME.match(source):
            raise ConfigError(f"PUSH_TOKENS: source name {source!r} must match {_SOURCE_NAME.pattern}")
        if not secret:
            raise ConfigError(f"PUSH_TOKENS: source {source!r} has an empty token")
        tokens.append(Token(source, secret))
    return tuple(tokens)


def parse_secrets(raw: str) -> dict[str, str]:
    """`paris:s1,lyon:s2` -> {source: secret}: pushes of that source must be signed."""
    secrets = {}
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        source, sep, secret = entry.rpartition(":")
        if not sep or not source or not secret:
            raise ConfigError("PUSH_SIGNING_SECRETS entries are source:secret")
        secrets[source] = secret
    return secrets


MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    tokens: tuple[Token, ...]
    signing_secrets: dict[str, str]
    max_custom_data_keys: int
    timezone: str
    max_body_bytes: int
    queue_high_water: int
    port: int
    queue_prefix: str
    batch_size: int
    batch_wait_ms: int
    lease_seconds: int
    log_level: str
    worker_stall_seconds: int = 120
    worker_concurrency: int = 0
    internal_port: int | None = None
    redis_min_replicas: int = 0
    worker_pool: str = "prefork"
    retention_days: int = 0

    @property
    def tzinfo(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @classmethod
    def from_mapping(cls, values: dict[str, str]) -> Settings:
        merged = {**DEFAULTS, **{k: v for k, v in values.items() if v is not None}}

        def integer(name: str, minimum: int = 1, maximum: int | None = None) -> int:
            try:
                value = int(merged[name])
            except ValueError:
                raise ConfigError(f"{name} must be an integer, got {merged[name]!r}") from None
            if value < minimum:
                raise ConfigError(f"{name} must be at least {minimum}, got {value}")
            if maximum is not None and value > maximum:
                raise ConfigError(f"{name} must be at most {maximum}, got {value}")
            return value

        tz = merged["PUSH_TIMEZONE"].strip() or "UTC"
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"PUSH_TIMEZONE {tz!r} is not an IANA time zone name") from None

        pool = merged["PUSHLINE_WORKER_POOL"].strip().lower() or "prefork"
        if pool not in ("prefork", "threads"):
            raise ConfigError(f"PUSHLINE_WORKER_POOL must be prefork or threads, not {pool!r}")

        return cls(
            database_url=merged["DATABASE_URL"].strip(),
            redis_url=sentinel_url(merged["REDIS_URL"].strip(), merged["REDIS_SENTINELS"],
                                   merged["REDIS_SENTINEL_MASTER"].strip()),
            redis_min_replicas=integer("REDIS_MIN_REPLICAS", minimum=0, maximum=16),
            tokens=parse_tokens(merged["PUSH_TOKENS"]),
            signing_secrets=parse_secrets(merged["PUSH_SIGNING_SECRETS"]),
            max_custom_data_keys=integer("MAX_CUSTOM_DATA_KEYS"),
            timezone=tz,
            max_body_bytes=integer("MAX_BODY_BYTES"),
            queue_high_water=integer("QUEUE_HIGH_WATER"),
            port=integer("PORT"),
            internal_port=(integer("INTERNAL_PORT", minimum=1, maximum=65535)
                           if merged["INTERNAL_PORT"].strip() else None),
            queue_prefix=merged["PUSHLINE_QUEUE_PREFIX"].strip() or "pushline",
            batch_size=integer("PUSHLINE_BATCH_SIZE", maximum=5000),  # a batch is one transaction
            batch_wait_ms=integer("PUSHLINE_BATCH_WAIT_MS", minimum=0),
            lease_seconds=integer("PUSHLINE_LEASE_SECONDS", minimum=5),
            log_level=merged["LOG_LEVEL"].strip().upper() or "INFO",
            worker_stall_seconds=integer("PUSHLINE_WORKER_STALL_SECONDS", minimum=5),
            worker_concurrency=integer("PUSHLINE_WORKER_CONCURRENCY", minimum=0, maximum=256),
            retention_days=integer("PUSHLINE_RETENTION_DAYS", minimum=0),
            worker_pool=pool,
        )

    @classmethod
    def from_env(cls, env_file: str = ".env") -> Settings:
        file_values = dotenv_values(env_file) if os.path.exists(env_file) else {}
        values = {k: v for k, v in file_values.items() if v is not None}
        values.update({k: os.environ[k] for k in DEFAULTS if k in os.environ})
        return cls.from_mapping(values)

    def require(self, *names: str) -> None:
        """Fail with one line when a tier is started without what it needs."""
        for name in names:
            if name == "DATABASE_URL" and not self.database_url:
                raise ConfigError("DATABASE_URL is not set (e.g. postgresql://user@host:5432/pushline)")
            if name == "REDIS_URL" and not self.redis_url:
                raise ConfigError("REDIS_URL is not set (e.g. redis://host:6379/0)")
            if name == "PUSH_TOKENS" and not self.tokens:
                raise ConfigError("PUSH_TOKENS is empty: set at least one token (name:token or token), comma-separated")

    def check_production(self) -> None:
        """What the web tier refuses to serve with, one line each."""
        self.require("PUSH_TOKENS")
        sources = {t.source for t in self.tokens}
        for token in self.tokens:
            if len(token.secret) < MIN_TOKEN_LENGTH:
                raise ConfigError(f"PUSH_TOKENS: the token of source {token.source!r} is shorter than "
                                  f"{MIN_TOKEN_LENGTH} characters")
        for source, secret in self.signing_secrets.items():
            if source not in sources:
                raise ConfigError(f"PUSH_SIGNING_SECRETS: no token has source {source!r}")
            if any(secret == t.secret for t in self.tokens):
                raise ConfigError(f"PUSH_SIGNING_SECRETS: the secret of source {source!r} equals a push token")
