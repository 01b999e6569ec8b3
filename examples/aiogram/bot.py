"""An aiogram 3 webhook bot that runs unchanged behind pollhook.

pollhook POSTs every update to this server exactly as Telegram would, with
the X-Telegram-Bot-Api-Secret-Token header, so aiogram's own
SimpleRequestHandler receives it and checks the secret.

Settings (environment variables):

  BOT_TOKEN             the bot's token (required)
  BOT_API               Bot API root, default https://api.telegram.org
                        (any Telegram-style server serving {BOT_API}/bot{token}/{method})
  WEBHOOK_SECRET_TOKEN  the forward's secret_token in pollhook (recommended)
  HOST, PORT            where to listen, default 127.0.0.1 and 8080
  WEBHOOK_PATH          default /webhook
  WEBHOOK_REPLY         1: answer inside the webhook reply (handle_in_background=False);
                        pollhook executes the call. Default 0: the bot calls the
                        Bot API itself (handle_in_background=True).
"""

import logging
import os
import sys

from aiohttp import web

from aiogram import Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.filters import CommandStart
from aiogram.types import Message
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application

TOKEN = os.environ["BOT_TOKEN"]
API = os.environ.get("BOT_API", "https://api.telegram.org")
SECRET_TOKEN = os.environ.get("WEBHOOK_SECRET_TOKEN") or None
HOST = os.environ.get("HOST", "127.0.0.1")
PORT = int(os.environ.get("PORT", "8080"))
PATH = os.environ.get("WEBHOOK_PATH", "/webhook")
REPLY_IN_WEBHOOK = os.environ.get("WEBHOOK_REPLY", "0") == "1"

dispatcher = Dispatcher()


@dispatcher.message(CommandStart())
async def start(message: Message):
    name = message.from_user.first_name if message.from_user else "there"
    answer = message.answer(f"Hello, {name}! This is aiogram behind pollhook.")
    if REPLY_IN_WEBHOOK:
        # Returned, not awaited: aiogram puts the call in the webhook reply
        # (multipart/form-data) and pollhook makes it against the Bot API.
        return answer
    await answer


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    session = AiohttpSession(api=TelegramAPIServer.from_base(API))
    bot = Bot(TOKEN, session=session)
    app = web.Application()
    SimpleRequestHandler(
        dispatcher,
        bot,
        secret_token=SECRET_TOKEN,
        handle_in_background=not REPLY_IN_WEBHOOK,
    ).register(app, path=PATH)
    setup_application(app, dispatcher, bot=bot)
    mode = "webhook replies" if REPLY_IN_WEBHOOK else "calls from the bot"
    logging.info("aiogram bot on http://%s:%d%s, answering with %s", HOST, PORT, PATH, mode)
    web.run_app(app, host=HOST, port=PORT, print=None)


if __name__ == "__main__":
    main()
