// A grammY webhook bot that runs unchanged behind pollhook.
//
// pollhook POSTs every update to this server exactly as Telegram would, with
// the X-Telegram-Bot-Api-Secret-Token header, so grammY's own
// webhookCallback(bot, "http", { secretToken }) receives it and checks it.
//
// Settings (environment variables):
//
//   BOT_TOKEN             the bot's token (required)
//   BOT_API               Bot API root, default https://api.telegram.org
//                         (grammY calls ${BOT_API}/bot${token}/${method})
//   BOT_USERNAME          the bot's username: grammY then needs no getMe call
//                         (without it, grammY calls getMe on the first update)
//   WEBHOOK_SECRET_TOKEN  the forward's secret_token in pollhook (recommended)
//   HOST, PORT            where to listen, default 127.0.0.1 and 8080
//   WEBHOOK_PATH          default /webhook
//   WEBHOOK_REPLY         1: answer sendMessage inside the webhook reply (JSON);
//                         pollhook executes the call. Default 0: the bot calls
//                         the Bot API itself.

import { createServer } from "node:http";
import { Bot, webhookCallback } from "grammy";

const env = process.env;
const token = env.BOT_TOKEN;
if (!token) {
  console.error("BOT_TOKEN is not set");
  process.exit(2);
}
const apiRoot = env.BOT_API || "https://api.telegram.org";
const host = env.HOST || "127.0.0.1";
const port = Number(env.PORT || 8080);
const path = env.WEBHOOK_PATH || "/webhook";
const secretToken = env.WEBHOOK_SECRET_TOKEN || undefined;
const replyInWebhook = env.WEBHOOK_REPLY === "1";

const botInfo = env.BOT_USERNAME
  ? {
      id: Number(token.split(":")[0]),
      is_bot: true,
      first_name: env.BOT_USERNAME,
      username: env.BOT_USERNAME,
      can_join_groups: true,
      can_read_all_group_messages: false,
      supports_inline_queries: false,
      can_connect_to_business: false,
      has_main_web_app: false,
    }
  : undefined;

const bot = new Bot(token, {
  botInfo,
  client: {
    apiRoot,
    // grammY's webhook replies: the call goes back in the HTTP answer and
    // pollhook makes it (the bot needs no route to the Bot API for it).
    canUseWebhookReply: (method) => replyInWebhook && method === "sendMessage",
  },
});

bot.command("start", (ctx) =>
  ctx.reply(`Hello, ${ctx.from?.first_name ?? "there"}! This is grammY behind pollhook.`),
);

const handleUpdate = webhookCallback(bot, "http", { secretToken });

createServer((req, res) => {
  if (req.method !== "POST" || req.url !== path) {
    res.writeHead(404).end();
    return;
  }
  handleUpdate(req, res).catch((err) => {
    // A handler that throws answers 500: pollhook keeps the update and
    // retries it later, in order.
    console.error("webhook failed:", err);
    if (!res.headersSent) res.writeHead(500);
    res.end();
  });
}).listen(port, host, () => {
  const mode = replyInWebhook ? "webhook replies" : "calls from the bot";
  console.error(`grammY bot on http://${host}:${port}${path}, answering with ${mode}`);
});

for (const signal of ["SIGINT", "SIGTERM"]) process.once(signal, () => process.exit(0));
