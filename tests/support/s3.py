"""A local S3 API for the object-storage tests: moto's server mode on a free loopback port.

Two flavours: an open one (any credentials), and one that checks every request against IAM, where no
user exists, so every request is denied (the "access denied" cases). Each test uses its own bucket.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from include.local.net import free_port, wait_healthy
from tests.support import PROJECT_ROOT

CREDENTIALS = {"login": "testing", "password": "testing"}  # moto accepts any key unless it checks IAM


@dataclass
class S3Server:
    url: str
    process: subprocess.Popen

    def connection(self) -> dict:
        """An Airflow ``aws`` connection (JSON form) that reaches this server."""
        return {"conn_type": "aws", **CREDENTIALS, "extra": {"endpoint_url": self.url, "region_name": "us-east-1"}}

    def connection_env(self, conn_id: str = "aws_default") -> dict[str, str]:
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(self.connection())}

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=CREDENTIALS["login"],
            aws_secret_access_key=CREDENTIALS["password"],
            region_name="us-east-1",
        )

    def upload(self, bucket: str, key: str, source: Path) -> str:
        client = self.client()
        if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
            client.create_bucket(Bucket=bucket)
        client.upload_file(str(source), bucket, key)
        return f"s3://{bucket}/{key}"

    def read(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def launch_s3(log_dir: Path, deny_all: bool = False) -> S3Server:
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(log_dir)}
    if deny_all:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"  # check IAM from the first request: nobody is allowed
    log = (log_dir / f"moto_{port}.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = S3Server(f"http://127.0.0.1:{port}", process)
    wait_healthy(f"{server.url}/moto-api/", process)
    return server
