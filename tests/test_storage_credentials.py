"""S3 settings: env vars, a mounted Secret directory, precedence and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from exfm_trainer.storage import StorageError
from exfm_trainer.storage.credentials import DEFAULT_PART_SIZE, load_s3_config


def test_defaults_and_aws_env() -> None:
    cfg = load_s3_config(
        {"AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk", "AWS_REGION": "eu-west-1"}
    )
    assert (cfg.endpoint, cfg.secure, cfg.region) == ("s3.amazonaws.com", True, "eu-west-1")
    assert (cfg.access_key, cfg.secret_key, cfg.part_size) == ("ak", "sk", DEFAULT_PART_SIZE)
    assert "sk" not in repr(cfg) and "AWS_ACCESS_KEY_ID" in cfg.describe()


def test_exfm_env_scheme_and_tuning() -> None:
    cfg = load_s3_config(
        {
            "EXFM_S3_ENDPOINT": "http://minio.exfm.svc:9000/",
            "EXFM_S3_ACCESS_KEY": "a",
            "EXFM_S3_SECRET_KEY": "b",
            "AWS_ACCESS_KEY_ID": "ignored",
            "AWS_SECRET_ACCESS_KEY": "ignored",
            "EXFM_S3_PART_SIZE": str(16 << 20),
            "EXFM_S3_MAX_ATTEMPTS": "7",
            "EXFM_S3_BACKOFF_S": "0.25",
            "EXFM_S3_CREATE_BUCKET": "yes",
        }
    )
    assert (cfg.endpoint, cfg.secure, cfg.access_key) == ("minio.exfm.svc:9000", False, "a")
    assert (cfg.part_size, cfg.max_attempts, cfg.backoff_s, cfg.create_bucket) == (16 << 20, 7, 0.25, True)
    assert load_s3_config({"EXFM_S3_ENDPOINT": "m:9000", "EXFM_S3_SECURE": "false"}).secure is False


def test_secret_directory(tmp_path: Path) -> None:
    (tmp_path / "accesskey").write_text("file-ak\n")
    (tmp_path / "secretkey").write_text("file-sk\n")
    (tmp_path / "endpoint").write_text("https://s3.example:443")
    cfg = load_s3_config({"EXFM_S3_CREDENTIALS_DIR": str(tmp_path), "AWS_ACCESS_KEY_ID": "env-ak"})
    assert (cfg.access_key, cfg.secret_key, cfg.endpoint, cfg.secure) == (
        "file-ak",
        "file-sk",
        "s3.example:443",
        True,
    )
    assert cfg.sources["access_key"] == str(tmp_path / "accesskey")
    # An explicit EXFM_ variable beats the file.
    assert (
        load_s3_config({"EXFM_S3_CREDENTIALS_DIR": str(tmp_path), "EXFM_S3_ACCESS_KEY": "x"}).access_key
        == "x"
    )


@pytest.mark.parametrize(
    ("env", "match"),
    [
        (
            {"EXFM_S3_CREDENTIALS_DIR": "/nonexistent/exfm"},
            "EXFM_S3_CREDENTIALS_DIR=/nonexistent/exfm is not a directory",
        ),
        ({"EXFM_S3_ACCESS_KEY": "a"}, "access key is set but the secret key is not.*EXFM_S3_SECRET_KEY"),
        ({"EXFM_S3_ENDPOINT": "https://h:1", "EXFM_S3_SECURE": "false"}, "make them agree"),
        ({"EXFM_S3_ENDPOINT": "h:1/path"}, "EXFM_S3_ENDPOINT.*without a path"),
        ({"EXFM_S3_SECURE": "maybe"}, "EXFM_S3_SECURE='maybe' is not a boolean"),
        ({"EXFM_S3_PART_SIZE": "1024"}, "EXFM_S3_PART_SIZE=1024 is below the S3 minimum part size"),
        ({"EXFM_S3_MAX_ATTEMPTS": "many"}, "EXFM_S3_MAX_ATTEMPTS='many' is not a valid int"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], match: str) -> None:
    with pytest.raises(StorageError, match=match):
        load_s3_config(env)
