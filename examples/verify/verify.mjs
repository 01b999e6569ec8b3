// A webhook receiver that verifies pollhook's Standard Webhooks signatures
// with the official `standardwebhooks` library (npm) on node:http.
//
// Valid request: 204 No Content, and a line `verified <webhook-id> update <id>`
// on stdout. Forged, tampered, stale or unsigned: 401, and a line
// `rejected <webhook-id>: <reason>`. A non-2xx answer makes pollhook keep the
// update and retry it, so nothing is lost while a secret is misconfigured.
//
// Settings (environment variables):
//
//   SIGNING_SECRET  the whsec_... secret this backend knows (required). During
//                   a key rotation pollhook signs with every configured
//                   secret, so the backend needs only one of them.
//   HOST, PORT      where to listen, default 127.0.0.1 and 8080
//   WEBHOOK_PATH    default /webhook

import { createServer } from "node:http";
import { Webhook } from "standardwebhooks";

const env = process.env;
const webhook = new Webhook(env.SIGNING_SECRET ?? "");
const host = env.HOST || "127.0.0.1";
const port = Number(env.PORT || 8080);
const path = env.WEBHOOK_PATH || "/webhook";

createServer((req, res) => {
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    if (req.method !== "POST" || req.url !== path) {
      res.writeHead(404).end("not found");
      return;
    }
    // The exact bytes received, before any JSON parsing: a signature covers
    // bytes, not a re-serialised object.
    const body = Buffer.concat(chunks);
    const msgId = req.headers["webhook-id"] ?? "-";
    let update;
    try {
      update = webhook.verify(body, req.headers);
    } catch (err) {
      console.log(`rejected ${msgId}: ${err.message}`);
      res.writeHead(401, { "Content-Type": "text/plain; charset=utf-8" });
      res.end(`rejected: ${err.message}`);
      return;
    }
    console.log(`verified ${msgId} update ${update?.update_id}`);
    // Handle `update` here. An empty 2xx body: nothing for pollhook to
    // execute (a body with a "method" field would be a Bot API call).
    res.writeHead(204).end();
  });
}).listen(port, host, () => {
  console.log(`verifying on http://${host}:${port}${path}`);
});

for (const signal of ["SIGINT", "SIGTERM"]) process.once(signal, () => process.exit(0));
