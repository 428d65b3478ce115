"""moto, the S3/EC2 test peer (SPEC section 8), served the way Eucalyptus lays its services out:
S3 on one port, the EC2 Query API on another (on moto's single port, Query calls not signed with
SigV4 are routed to S3). Both share one moto state. In front of each sits a small fault injector,
switched over HTTP, so tests can make the cloud fail the way real ones do.

Usage: python moto_peer.py   (prints "ready S3PORT EC2PORT" once both listen on 127.0.0.1)
Faults: POST http://127.0.0.1:EC2PORT/_faults with a JSON body, e.g.
  {"ec2": "down"}            every EC2 call answers 500, nothing reaches moto
  {"ec2": "lose-register"}   RegisterImage reaches moto, but its reply is replaced by a 500
  {"s3_put_500": 2}          the next 2 S3 PUTs answer 500 without reaching moto
  {}                         no faults
Relies on moto.moto_server internals: moto is pinned (tests/peers/requirements.txt).
"""

import io
import json
import sys
import threading
import urllib.parse

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

FAULTS = {}
LOCK = threading.Lock()

ERROR_500 = (
    b'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
    b"<Code>InternalError</Code><Message>injected by the test peer</Message>"
    b"</Error></Errors><RequestID>fault</RequestID></Response>"
)


def answer_500(start_response):
    start_response("500 Internal Server Error", [("Content-Type", "text/xml")])
    return [ERROR_500]


def read_body(environ):
    """Reads the request body and puts it back, so the app behind still sees it."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def ec2_faults(app):
    def serve(environ, start_response):
        if environ["PATH_INFO"] == "/_faults":
            settings = json.loads(read_body(environ) or b"{}")
            with LOCK:
                FAULTS.clear()
                FAULTS.update(settings)
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(FAULTS).encode()]
        with LOCK:
            mode = FAULTS.get("ec2")
        if mode == "down":
            read_body(environ)
            return answer_500(start_response)
        if mode == "lose-register":
            body = read_body(environ)
            params = dict(urllib.parse.parse_qsl(body.decode("latin-1")))
            params.update(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
            if params.get("Action") == "RegisterImage":
                # Let moto register it, then lose the reply on the way back.
                for _ in app(environ, lambda *args, **kwargs: None):
                    pass
                return answer_500(start_response)
        return app(environ, start_response)

    return serve


def s3_faults(app):
    def serve(environ, start_response):
        if environ["REQUEST_METHOD"] == "PUT":
            with LOCK:
                left = FAULTS.get("s3_put_500", 0)
                if left:
                    FAULTS["s3_put_500"] = left - 1
            if left:
                read_body(environ)
                return answer_500(start_response)
        return app(environ, start_response)

    return serve


def main():
    host = "127.0.0.1"
    s3 = make_server(
        host,
        0,
        s3_faults(DomainDispatcherApplication(create_backend_app)),
        threaded=True,
        request_handler=MotoRequestHandler,
    )
    ec2 = make_server(
        host,
        0,
        ec2_faults(create_backend_app("ec2")),
        threaded=True,
        request_handler=MotoRequestHandler,
    )
    threading.Thread(target=s3.serve_forever, daemon=True).start()
    print(f"ready {s3.server_port} {ec2.server_port}", flush=True)
    ec2.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
