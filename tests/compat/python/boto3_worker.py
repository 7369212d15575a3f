"""boto3 worker for credvend's conformance suite (tests/compat/main.rs).

Usage: boto3_worker.py ENDPOINT_URL REGION CALLS BUCKET KEY

Runs with only the container-credentials variables set, like a sync worker: resolves
credentials through botocore's default chain, calls sts:GetCallerIdentity CALLS times
on one client, then puts and gets s3://BUCKET/KEY. Prints one JSON line on success;
on any failure prints the SDK's own error on stderr and exits 3.
"""

import json
import sys

import boto3
import botocore


def main() -> None:
    endpoint_url, region, calls, bucket, key = sys.argv[1:6]
    try:
        session = boto3.Session()
        sts = session.client("sts", endpoint_url=endpoint_url, region_name=region)
        arns = {sts.get_caller_identity()["Arn"] for _ in range(int(calls))}
        s3 = session.client("s3", endpoint_url=endpoint_url, region_name=region)
        body = f"credvend compat {key}".encode()
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        read_back = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        credentials = session.get_credentials()
    except Exception as error:  # the SDK's error, reported as the worker's outcome
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(3)
    print(
        json.dumps(
            {
                "arns": sorted(arns),
                "s3_round_trip": read_back == body,
                "method": credentials.method if credentials is not None else None,
                "boto3": boto3.__version__,
                "botocore": botocore.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
