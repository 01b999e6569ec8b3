"""aiogram 3 calling the Bot API through pollhook's gateway.

Only the API server changes (TelegramAPIServer.from_base) and the gateway
key stands in for the token. Sends a text and a photo (multipart upload),
downloads a file, then shows the gateway's refusals as aiogram's usual
exceptions. One JSON line per step on stdout; any other failure exits 1.

Environment: GATEWAY (base URL), KEY, CHAT_ID, TEXT, PHOTO (path of the
image to upload), FILE_ID (a file the bot has), DOWNLOAD_TO (where to write
it), UNKNOWN_KEY (a key the gateway does not know), REFUSED_LIMIT (the
limit of the getUpdates call the gateway must refuse).
"""

import asyncio
import json
import os
import sys

import aiogram
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramAPIError
from aiogram.types import BufferedInputFile


def emit(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


def bot_with(key):
    # The one change: the API server. Files are fetched from {base}/file/bot{key}/{path}.
    api = TelegramAPIServer.from_base(os.environ["GATEWAY"])
    return Bot(token=key, session=AiohttpSession(api=api))


async def refusal(step, call):
    try:
        await call
    except TelegramAPIError as e:
        emit(step, exception=type(e).__name__, description=e.message)
    else:
        emit(step, exception=None)


async def main():
    emit("version", framework="aiogram", version=aiogram.__version__)
    chat_id = int(os.environ["CHAT_ID"])
    bot = bot_with(os.environ["KEY"])
    try:
        sent = await bot.send_message(chat_id, os.environ["TEXT"])
        emit("sendMessage", message_id=sent.message_id, chat_id=sent.chat.id, text=sent.text)

        with open(os.environ["PHOTO"], "rb") as f:
            photo = BufferedInputFile(f.read(), filename="pixels.png")
        sent = await bot.send_photo(chat_id, photo)
        biggest = sent.photo[-1]
        emit("sendPhoto", message_id=sent.message_id, file_id=biggest.file_id,
             file_size=biggest.file_size, width=biggest.width, height=biggest.height)

        file = await bot.get_file(os.environ["FILE_ID"])
        emit("getFile", file_path=file.file_path, file_size=file.file_size)
        await bot.download_file(file.file_path, destination=os.environ["DOWNLOAD_TO"])
        emit("download", size=os.path.getsize(os.environ["DOWNLOAD_TO"]))

        await refusal("getUpdates", bot.get_updates(limit=int(os.environ["REFUSED_LIMIT"])))
    finally:
        await bot.session.close()

    stranger = bot_with(os.environ["UNKNOWN_KEY"])
    try:
        await refusal("unknownKey", stranger.send_message(chat_id, "never sent"))
    finally:
        await stranger.session.close()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
