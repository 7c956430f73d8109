"""A local S3 stand-in (moto's server, over real HTTP) and both storage backends over it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from app.storage import AudioStorage, LocalStorage, S3Storage
from config.settings import S3Settings

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "chorus-test", "aws_secret_access_key": "chorus-test-secret"}


class S3StandIn:
    """moto's S3 on 127.0.0.1 in a thread: child processes reach it like any S3 endpoint."""

    def __init__(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self.client: Any = boto3.client(
            "s3", endpoint_url=self.url, region_name=REGION, **CREDENTIALS
        )

    def new_bucket(self) -> str:
        name = f"chorus-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=bucket)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def env(self, bucket: str, prefix: str = "audio") -> dict[str, str]:
        """What a Chorus process needs to keep its audio in ``bucket``."""
        return {
            "STORAGE_URL": f"s3://{bucket}/{prefix}",
            "S3_ENDPOINT_URL": self.url,
            "S3_REGION": REGION,
            "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
        }


@pytest.fixture(scope="session")
def s3() -> Iterator[S3StandIn]:
    stand_in = S3StandIn()
    yield stand_in
    stand_in.server.stop()


def s3_settings(s3: S3StandIn, bucket: str, prefix: str = "audio") -> S3Settings:
    return S3Settings(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=s3.url,
        region=REGION,
        addressing_style="path",
        access_key_id=CREDENTIALS["aws_access_key_id"],
        secret_access_key=CREDENTIALS["aws_secret_access_key"],
        connect_timeout=2.0,
        read_timeout=5.0,
        max_attempts=2,
    )


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AudioStorage]:
    """Each storage backend in turn: the contract every caller relies on."""
    if request.param == "local":
        yield LocalStorage(tmp_path / "audio")
        return
    stand_in: S3StandIn = request.getfixturevalue("s3")
    yield S3Storage(s3_settings(stand_in, stand_in.new_bucket()), spool_dir=tmp_path / "spool")
