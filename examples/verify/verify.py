"""A webhook receiver that verifies pollhook's Standard Webhooks signatures
with the official `standardwebhooks` library (PyPI), using only the standard
library besides it.

Valid request: 204 No Content, and a line `verified <webhook-id> update <id>`
on stdout. Forged, tampered, stale or unsigned: 401, and a line
`rejected <webhook-id>: <reason>`. A non-2xx answer makes pollhook keep the
update and retry it, so nothing is lost while a secret is misconfigured.

Settings (environment variables):

  SIGNING_SECRET  the whsec_... secret this backend knows (required). During a
                  key rotation pollhook signs with every configured secret, so
                  the backend needs only one of them.
  HOST, PORT      where to listen, default 127.0.0.1 and 8080
  WEBHOOK_PATH    default /webhook
"""

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

WEBHOOK = Webhook(os.environ["SIGNING_SECRET"])
HOST = os.environ.get("HOST", "127.0.0.1")
PORT = int(os.environ.get("PORT", "8080"))
PATH = os.environ.get("WEBHOOK_PATH", "/webhook")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != PATH:
            return self.answer(404, b"not found")
        msg_id = self.headers.get("webhook-id", "-")
        try:
            # The exact bytes received, before any JSON parsing: a signature
            # covers bytes, not a re-serialised object.
            update = WEBHOOK.verify(body, dict(self.headers.items()))
        except WebhookVerificationError as e:
            print(f"rejected {msg_id}: {e}", flush=True)
            return self.answer(401, f"rejected: {e}".encode())
        print(f"verified {msg_id} update {update.get('update_id')}", flush=True)
        # Handle `update` here. An empty 2xx body: nothing for pollhook to
        # execute (a body with a "method" field would be a Bot API call).
        self.answer(204, b"")

    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    server = ThreadingHTTPServer((HOST, PORT), Handler)
    print(f"verifying on http://{HOST}:{PORT}{PATH}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
