"""S3 connection settings from the environment or from files mounted from a Kubernetes Secret.

Each setting is resolved in this order (first one set wins):

1. the ``EXFM_S3_*`` environment variable,
2. a file in the directory named by ``EXFM_S3_CREDENTIALS_DIR`` (a mounted Secret),
3. the standard AWS environment variable, where one exists.

Credentials never come from a job config or a CR spec. See ``docs/storage.md`` for the table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from exfm_trainer.storage.base import StorageError

CREDENTIALS_DIR_ENV = "EXFM_S3_CREDENTIALS_DIR"
MIN_PART_SIZE = 5 << 20
DEFAULT_PART_SIZE = 64 << 20


@dataclass(frozen=True)
class _Setting:
    env: str
    files: tuple[str, ...] = ()
    aws_env: tuple[str, ...] = ()


SETTINGS: dict[str, _Setting] = {
    "endpoint": _Setting("EXFM_S3_ENDPOINT", ("endpoint",), ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")),
    "access_key": _Setting(
        "EXFM_S3_ACCESS_KEY", ("accesskey", "access_key", "AWS_ACCESS_KEY_ID"), ("AWS_ACCESS_KEY_ID",)
    ),
    "secret_key": _Setting(
        "EXFM_S3_SECRET_KEY",
        ("secretkey", "secret_key", "AWS_SECRET_ACCESS_KEY"),
        ("AWS_SECRET_ACCESS_KEY",),
    ),
    "session_token": _Setting(
        "EXFM_S3_SESSION_TOKEN", ("sessiontoken", "session_token"), ("AWS_SESSION_TOKEN",)
    ),
    "region": _Setting("EXFM_S3_REGION", ("region",), ("AWS_REGION", "AWS_DEFAULT_REGION")),
    "secure": _Setting("EXFM_S3_SECURE", ("secure",)),
    "verify": _Setting("EXFM_S3_VERIFY_TLS", ("verify_tls",)),
    "ca_file": _Setting("EXFM_S3_CA_FILE", ("ca.crt",)),
    "part_size": _Setting("EXFM_S3_PART_SIZE"),
    "max_attempts": _Setting("EXFM_S3_MAX_ATTEMPTS"),
    "backoff_s": _Setting("EXFM_S3_BACKOFF_S"),
    "timeout_s": _Setting("EXFM_S3_TIMEOUT_S"),
    "create_bucket": _Setting("EXFM_S3_CREATE_BUCKET"),
}

CREDENTIAL_HINT = (
    "set EXFM_S3_ACCESS_KEY/EXFM_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), "
    f"or mount a Secret with files accesskey/secretkey and point {CREDENTIALS_DIR_ENV} at it"
)


@dataclass(frozen=True)
class S3Config:
    """Everything needed to reach one S3 endpoint."""

    endpoint: str = "s3.amazonaws.com"
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    secure: bool = True
    region: str | None = None
    verify_tls: bool = True
    ca_file: str | None = None
    part_size: int = DEFAULT_PART_SIZE
    max_attempts: int = 5
    backoff_s: float = 0.5
    timeout_s: float = 60.0
    create_bucket: bool = False
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def describe(self) -> str:
        """Endpoint and where the credentials came from (never the secret itself)."""
        src = self.sources.get("access_key", "nowhere")
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{self.endpoint} (access key from {src})"


def _parse_bool(name: str, value: str) -> bool:
    low = value.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise StorageError(f"{name}={value!r} is not a boolean: use true or false")


def _parse_number(name: str, value: str, kind: type) -> float | int:
    try:
        return kind(value.strip())
    except ValueError:
        raise StorageError(f"{name}={value!r} is not a valid {kind.__name__}") from None


def _lookup(key: str, env: Mapping[str, str], cred_dir: Path | None) -> tuple[str, str] | None:
    setting = SETTINGS[key]
    if env.get(setting.env):
        return env[setting.env], setting.env
    if cred_dir is not None:
        for fname in setting.files:
            path = cred_dir / fname
            if path.is_file():
                return path.read_text().strip(), str(path)
    for name in setting.aws_env:
        if env.get(name):
            return env[name], name
    return None


def load_s3_config(env: Mapping[str, str] | None = None) -> S3Config:
    """Resolve the S3 settings; raises StorageError naming the variable or file that is wrong."""
    env = os.environ if env is None else env
    cred_dir: Path | None = None
    if env.get(CREDENTIALS_DIR_ENV):
        cred_dir = Path(env[CREDENTIALS_DIR_ENV])
        if not cred_dir.is_dir():
            raise StorageError(
                f"{CREDENTIALS_DIR_ENV}={cred_dir} is not a directory: mount the S3 Secret there or unset it"
            )
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for key in SETTINGS:
        found = _lookup(key, env, cred_dir)
        if found is not None:
            values[key], sources[key] = found
    kwargs: dict[str, object] = {"sources": sources}
    secure: bool | None = None
    if "secure" in values:
        secure = _parse_bool(sources["secure"], values["secure"])
    if "endpoint" in values:
        endpoint = values["endpoint"].strip().rstrip("/")
        for scheme, is_tls in (("https://", True), ("http://", False)):
            if endpoint.startswith(scheme):
                endpoint = endpoint[len(scheme) :]
                if secure is not None and secure != is_tls:
                    raise StorageError(
                        f"{sources['endpoint']} uses {scheme} but {sources['secure']}={values['secure']}: "
                        "make them agree or drop the scheme from the endpoint"
                    )
                secure = is_tls
        if "/" in endpoint or not endpoint:
            raise StorageError(
                f"{sources['endpoint']}={values['endpoint']!r} must be host[:port] (optionally with "
                "http:// or https://), without a path"
            )
        kwargs["endpoint"] = endpoint
    if secure is not None:
        kwargs["secure"] = secure
    for key in ("access_key", "secret_key", "session_token", "region", "ca_file"):
        if key in values:
            kwargs[key] = values[key]
    if ("access_key" in values) != ("secret_key" in values):
        have, miss = ("access key", "secret key") if "access_key" in values else ("secret key", "access key")
        raise StorageError(f"S3 {have} is set but the {miss} is not: {CREDENTIAL_HINT}")
    if "verify" in values:
        kwargs["verify_tls"] = _parse_bool(sources["verify"], values["verify"])
    if "create_bucket" in values:
        kwargs["create_bucket"] = _parse_bool(sources["create_bucket"], values["create_bucket"])
    if "part_size" in values:
        part = int(_parse_number(sources["part_size"], values["part_size"], int))
        if part < MIN_PART_SIZE:
            raise StorageError(f"{sources['part_size']}={part} is below the S3 minimum part size 5 MiB")
        kwargs["part_size"] = part
    if "max_attempts" in values:
        kwargs["max_attempts"] = max(
            1, int(_parse_number(sources["max_attempts"], values["max_attempts"], int))
        )
    for key in ("backoff_s", "timeout_s"):
        if key in values:
            kwargs[key] = float(_parse_number(sources[key], values[key], float))
    return S3Config(**kwargs)  # type: ignore[arg-type]
