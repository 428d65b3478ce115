"""Looks at what landed in the moto test peer, with boto3 and moto's request recorder, and prints
JSON for the Rust tests to assert on.

  moto_check.py S3URL EC2URL objects BUCKET          keys, sizes and ETags in BUCKET
  moto_check.py S3URL EC2URL download BUCKET DIR     every object of BUCKET into DIR
  moto_check.py S3URL EC2URL images                  our images, as DescribeImages shows them
  moto_check.py S3URL EC2URL recorded RECORDING      the requests moto received, parsed
  moto_check.py S3URL EC2URL deregister IMAGE_ID     deregisters an image, as an operator might
  moto_check.py S3URL EC2URL setup-auth              an IAM user with a key, then SigV4 checking on
  moto_check.py S3URL EC2URL verify-v2 RECORDING KEY SECRET
        recomputes, with botocore's signers as the oracle, the signature of every recorded request
        signed V2 (S3's HMAC-SHA1 header, the Query API's HmacSHA256 parameter); moto checks none
"""

import base64
import json
import os
import sys
import urllib.parse
import urllib.request

import boto3
from botocore.auth import HmacV1Auth, SigV2Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.config import Config
from botocore.credentials import Credentials


def clients(s3_url, ec2_url, key="test", secret="test"):
    common = dict(region_name="us-east-1", aws_access_key_id=key, aws_secret_access_key=secret)
    s3 = boto3.client(
        "s3", endpoint_url=s3_url, config=Config(s3={"addressing_style": "path"}), **common
    )
    # SigV4 with the ec2 scope: moto's main port routes it to EC2.
    ec2 = boto3.client("ec2", endpoint_url=s3_url, **common)
    iam = boto3.client("iam", endpoint_url=s3_url, **common)
    return s3, ec2, iam


def objects(s3, bucket):
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return [{"key": o["Key"], "size": o["Size"], "etag": o["ETag"].strip('"')} for o in listed]


class Recorded:
    """One request from moto's recording: method, URL, headers as sent, the body decoded, and the
    parameters of its query string and, for a POST, its form body."""

    def __init__(self, line):
        entry = json.loads(line)
        self.method = entry["method"]
        self.url = entry["url"]
        self.headers = entry.get("headers") or {}
        body = entry.get("body") or ""
        if entry.get("body_encoded"):
            body = base64.b64decode(body).decode("latin-1")
        self.split = urllib.parse.urlsplit(self.url)
        self.params = dict(urllib.parse.parse_qsl(self.split.query))
        if self.method == "POST":
            self.params.update(urllib.parse.parse_qsl(body))

    def header(self, name, default=None):
        return next((v for k, v in self.headers.items() if k.lower() == name), default)


def recorded_requests(path):
    # A last line without its newline is an entry moto is still writing: not a request yet.
    with open(path) as lines:
        return [Recorded(line) for line in lines if line.endswith("\n")]


def recorded(path):
    return [
        {
            "method": r.method,
            "path": r.split.path,
            "params": r.params,
            "acl": r.header("x-amz-acl"),
            "authorization": r.header("authorization", ""),
        }
        for r in recorded_requests(path)
    ]


class RecordedDateV1Auth(HmacV1Auth):
    """botocore's S3 V2 signer, signing with the Date the request carried instead of now."""

    def __init__(self, credentials, date):
        super().__init__(credentials)
        self.date = date

    def _get_date(self):
        return self.date


def verify_v2(path, key, secret):
    credentials = Credentials(key, secret)
    checked, mismatches = 0, []
    for r in recorded_requests(path):
        authorization = r.header("authorization", "")
        if r.method == "POST" and r.params.get("SignatureVersion") == "2":
            # The Query API: botocore signs against the URL the request went to.
            request = AWSRequest(method="POST", url=f"http://{r.header('host')}{r.split.path or '/'}")
            _, expected = SigV2Auth(credentials).calc_signature(request, r.params)
            given = r.params.get("Signature")
        elif authorization.startswith("AWS "):
            headers = HTTPHeaders()
            for name, value in r.headers.items():
                headers[name] = value
            signer = RecordedDateV1Auth(credentials, r.header("date", ""))
            expected = signer.get_signature(r.method, r.split, headers)
            given = authorization.rsplit(":", 1)[1]
        else:
            continue
        checked += 1
        if expected != given:
            mismatches.append({"method": r.method, "url": r.url, "given": given, "expected": expected})
    return {"checked": checked, "mismatches": mismatches}


def main(argv):
    s3_url, ec2_url, command, *rest = argv
    # Once SigV4 checking is on, boto3 must sign with a key moto's IAM knows.
    s3, ec2, iam = clients(
        s3_url,
        ec2_url,
        os.environ.get("CHECK_KEY", "test"),
        os.environ.get("CHECK_SECRET", "test"),
    )
    if command == "objects":
        result = objects(s3, rest[0])
    elif command == "download":
        bucket, target = rest
        os.makedirs(target, exist_ok=True)
        for o in objects(s3, bucket):
            s3.download_file(bucket, o["key"], os.path.join(target, o["key"]))
        result = objects(s3, bucket)
    elif command == "images":
        result = [
            {"id": i["ImageId"], "name": i.get("Name"), "type": i.get("ImageType")}
            for i in ec2.describe_images(Owners=["self"])["Images"]
        ]
    elif command == "deregister":
        ec2.deregister_image(ImageId=rest[0])
        result = {"deregistered": rest[0]}
    elif command == "recorded":
        result = recorded(rest[0])
    elif command == "verify-v2":
        result = verify_v2(*rest)
    elif command == "setup-auth":
        iam.create_user(UserName="proxy")
        iam.put_user_policy(
            UserName="proxy",
            PolicyName="all",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="proxy")["AccessKey"]
        # Not form-encoded: moto reads the raw body as the number of requests left unchecked.
        request = urllib.request.Request(
            s3_url.rstrip("/") + "/moto-api/reset-auth",
            data=b"0",
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(request).read()
        result = {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    else:
        raise SystemExit(f"unknown command {command}")
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
