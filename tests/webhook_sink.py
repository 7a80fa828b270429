#!/usr/bin/env python3
"""A webhook receiver for the notification tests: verifies every request with the Standard Webhooks
reference library (PyPI `standardwebhooks`, an implementation independent of crm-iam's), prints
`READY <port>`, then one JSON line per request: {"verified": true, "id", "timestamp", "payload"} or
{"verified": false, "error"} (answered 401). The first FAIL_FIRST requests are answered 503.
Usage: webhook_sink.py SECRET [PORT [FAIL_FIRST]] (PORT 0 = any free port)."""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SECRET = sys.argv[1]
PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 0
fail_first = int(sys.argv[3]) if len(sys.argv) > 3 else 0
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global fail_first
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        with lock:
            if fail_first > 0:
                fail_first -= 1
                self.send_response(503)
                self.end_headers()
                return
        try:
            payload = Webhook(SECRET).verify(body, dict(self.headers.items()))
            line = {
                "verified": True,
                "id": self.headers["webhook-id"],
                "timestamp": self.headers["webhook-timestamp"],
                "content_type": self.headers.get("content-type"),
                "payload": payload,
            }
            status = 204
        except WebhookVerificationError as e:
            line, status = {"verified": False, "error": str(e)}, 401
        with lock:
            print(json.dumps(line), flush=True)
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print(f"READY {server.server_address[1]}", flush=True)
server.serve_forever()
