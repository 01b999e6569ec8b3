"""python-telegram-bot (v21+) calling the Bot API through pollhook's gateway.

Only base_url and base_file_url change and the gateway key stands in for the
token. Sends a text and a photo (multipart upload), downloads a file, then
shows the gateway's refusals as PTB's usual exceptions. One JSON line per
step on stdout; any other failure exits 1.

Environment: as aiogram_gateway.py.
"""

import asyncio
import json
import os

import telegram
from telegram import Bot
from telegram.error import TelegramError


def emit(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


def bot_with(key):
    gw = os.environ["GATEWAY"]
    # The one change: PTB appends the token (here the key) to both URLs.
    return Bot(token=key, base_url=f"{gw}/bot", base_file_url=f"{gw}/file/bot")


async def refusal(step, call):
    try:
        await call()
    except TelegramError as e:
        emit(step, exception=type(e).__name__, description=e.message)
    else:
        emit(step, exception=None)


async def main():
    emit("version", framework="python-telegram-bot", version=telegram.__version__)
    chat_id = int(os.environ["CHAT_ID"])
    # `async with` runs initialize(), which calls getMe.
    async with bot_with(os.environ["KEY"]) as bot:
        emit("getMe", id=bot.id, username=bot.username)
        sent = await bot.send_message(chat_id, os.environ["TEXT"])
        emit("sendMessage", message_id=sent.message_id, chat_id=sent.chat.id, text=sent.text)

        with open(os.environ["PHOTO"], "rb") as f:
            sent = await bot.send_photo(chat_id, photo=f.read(), filename="pixels.png")
        biggest = sent.photo[-1]
        emit("sendPhoto", message_id=sent.message_id, file_id=biggest.file_id,
             file_size=biggest.file_size, width=biggest.width, height=biggest.height)

        file = await bot.get_file(os.environ["FILE_ID"])
        # PTB makes file_path the download URL: {base_file_url}{key}/{path}.
        emit("getFile", file_path=file.file_path, file_size=file.file_size)
        await file.download_to_drive(os.environ["DOWNLOAD_TO"])
        emit("download", size=os.path.getsize(os.environ["DOWNLOAD_TO"]))

        limit = int(os.environ["REFUSED_LIMIT"])
        await refusal("getUpdates", lambda: bot.get_updates(limit=limit))

    # initialize() calls getMe, which the gateway refuses for an unknown key.
    await refusal("unknownKey", bot_with(os.environ["UNKNOWN_KEY"]).initialize)


if __name__ == "__main__":
    asyncio.run(main())
