"""A python-telegram-bot (v22) bot behind pollhook.

PTB's Application.run_webhook() always calls setWebhook: on a bot that
pollhook polls, that makes every getUpdates fail with 409 (a webhook is
active) until someone calls deleteWebhook. So run PTB the way its docs show
for custom webhook servers instead: no Updater, a small web server that checks
the secret token and puts each update on application.update_queue. The
handlers are ordinary PTB handlers.

Settings (environment variables):

  BOT_TOKEN             the bot's token (required)
  BOT_API               Bot API root, default https://api.telegram.org
                        (PTB calls {BOT_API}/bot{token}/{method})
  WEBHOOK_SECRET_TOKEN  the forward's secret_token in pollhook (recommended)
  HOST, PORT            where to listen, default 127.0.0.1 and 8080
  WEBHOOK_PATH          default /webhook
"""

import asyncio
import hmac
import logging
import os
import signal
import sys

from aiohttp import web
from telegram import Update
from telegram.ext import Application, CommandHandler, ContextTypes

TOKEN = os.environ["BOT_TOKEN"]
API = os.environ.get("BOT_API", "https://api.telegram.org")
SECRET_TOKEN = os.environ.get("WEBHOOK_SECRET_TOKEN") or None
HOST = os.environ.get("HOST", "127.0.0.1")
PORT = int(os.environ.get("PORT", "8080"))
PATH = os.environ.get("WEBHOOK_PATH", "/webhook")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    name = update.effective_user.first_name if update.effective_user else "there"
    await update.effective_message.reply_text(
        f"Hello, {name}! This is python-telegram-bot behind pollhook."
    )


def webhook_app(application: Application) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        if SECRET_TOKEN is not None:
            got = request.headers.get(SECRET_HEADER, "")
            if not hmac.compare_digest(got.encode(), SECRET_TOKEN.encode()):
                # Not 2xx: pollhook keeps the update and retries it, so a
                # misconfigured secret loses nothing once fixed.
                return web.Response(status=403, text="wrong secret token")
        update = Update.de_json(await request.json(), application.bot)
        # Queued, then answered: PTB processes it in the background, as
        # Telegram's own webhooks expect.
        await application.update_queue.put(update)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post(PATH, receive)
    return app


async def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    application = (
        Application.builder()
        .token(TOKEN)
        .base_url(f"{API}/bot")
        .base_file_url(f"{API}/file/bot")
        .updater(None)  # no polling and no setWebhook: pollhook does the receiving
        .build()
    )
    application.add_handler(CommandHandler("start", start))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    # initialize() calls getMe; start() runs the handlers on update_queue.
    async with application:
        await application.start()
        runner = web.AppRunner(webhook_app(application))
        await runner.setup()
        await web.TCPSite(runner, HOST, PORT).start()
        logging.info("python-telegram-bot on http://%s:%d%s", HOST, PORT, PATH)
        await stop.wait()
        await runner.cleanup()
        await application.stop()


if __name__ == "__main__":
    asyncio.run(main())
