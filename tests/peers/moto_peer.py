"""moto, the S3/EC2 test peer (SPEC section 8), served the way Eucalyptus lays its services out:
S3 on one port, the EC2 Query API on another (on moto's single port, Query calls not signed with
SigV4 are routed to S3). Both share one moto state. In front of each sits a small fault injector,
switched over HTTP, so tests can make the cloud fail the way real ones do.

Usage: python moto_peer.py   (prints "ready S3PORT EC2PORT" once both listen on 127.0.0.1)
Faults: POST http://127.0.0.1:EC2PORT/_faults with a JSON body, e.g.
  {"ec2": "down"}            every EC2 call answers 500, nothing reaches moto
  {"ec2": "lose-register"}   RegisterImage reaches moto, but its reply is replaced by a 500
  {"s3_put_500": 2}          the next 2 S3 PUTs answer 500 without reaching moto
  {"s3_put_500": 2, "s3_put_500_on": ".part."}
                             the same, counting only PUTs whose path holds that text
  {"s3_hold_put": "part.01"} a PUT whose path holds that text is read, then never answered (it never
                             reaches moto) until the faults are next set: a client killed meanwhile
                             leaves that object unsent
  {"ec2": "hold-register", "register_name": "-image"}
                             a RegisterImage whose Name holds register_name (any, if not
                             given) reaches moto, which registers; its reply is held until the
                             faults are next set, then lost (a 500)
  {}                         no faults (and every held request is let go)
GET http://127.0.0.1:EC2PORT/_faults answers {"faults": ..., "held": ["PUT /bucket/key", ...]}: the
requests held so far, so a test knows when one is in the air.
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
from moto.moto_api._internal.recorder.models import Recorder
from werkzeug.serving import make_server

FAULTS = {}
LOCK = threading.Lock()
# Requests held so far ("METHOD path" or the Query action), and the event that lets them go: set,
# and replaced by a fresh one, whenever the faults are set again.
HELD = []
RELEASE = threading.Event()

ERROR_500 = (
    b'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
    b"<Code>InternalError</Code><Message>injected by the test peer</Message>"
    b"</Error></Errors><RequestID>fault</RequestID></Response>"
)


# moto's recorder appends an entry and its newline in two writes, unlocked: with parts PUT at
# once on several threads, two entries could interleave into one broken line. One at a time.
RECORDING = threading.Lock()
_record_request = Recorder._record_request


def _record_request_whole(self, *args, **kwargs):
    with RECORDING:
        return _record_request(self, *args, **kwargs)


Recorder._record_request = _record_request_whole


def answer_500(start_response):
    start_response("500 Internal Server Error", [("Content-Type", "text/xml")])
    return [ERROR_500]


def read_body(environ):
    """Reads the request body and puts it back, so the app behind still sees it."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def hold(what):
    """Blocks this request's thread until the faults are next set; then the reply is a 500."""
    with LOCK:
        HELD.append(what)
        release = RELEASE
    release.wait()


def set_faults(settings):
    global RELEASE
    with LOCK:
        FAULTS.clear()
        FAULTS.update(settings)
        RELEASE.set()
        RELEASE = threading.Event()


def ec2_faults(app):
    def serve(environ, start_response):
        if environ["PATH_INFO"] == "/_faults":
            if environ["REQUEST_METHOD"] == "POST":
                set_faults(json.loads(read_body(environ) or b"{}"))
            with LOCK:
                state = {"faults": FAULTS, "held": HELD}
                reply = json.dumps(state).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [reply]
        with LOCK:
            mode = FAULTS.get("ec2")
        if mode == "down":
            read_body(environ)
            return answer_500(start_response)
        if mode in ("lose-register", "hold-register"):
            body = read_body(environ)
            params = dict(urllib.parse.parse_qsl(body.decode("latin-1")))
            params.update(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
            name = params.get("Name", "")
            if params.get("Action") == "RegisterImage" and (
                mode == "lose-register" or FAULTS.get("register_name", "") in name
            ):
                # Let moto register it, then lose the reply on the way back (after holding it).
                for _ in app(environ, lambda *args, **kwargs: None):
                    pass
                if mode == "hold-register":
                    hold("RegisterImage " + name)
                return answer_500(start_response)
        return app(environ, start_response)

    return serve


def s3_faults(app):
    def serve(environ, start_response):
        if environ["REQUEST_METHOD"] == "PUT":
            with LOCK:
                left = FAULTS.get("s3_put_500", 0)
                if FAULTS.get("s3_put_500_on", "") not in environ["PATH_INFO"]:
                    left = 0
                if left:
                    FAULTS["s3_put_500"] = left - 1
                held = FAULTS.get("s3_hold_put")
            if left:
                read_body(environ)
                return answer_500(start_response)
            if held and held in environ["PATH_INFO"]:
                read_body(environ)
                hold("PUT " + environ["PATH_INFO"])
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
