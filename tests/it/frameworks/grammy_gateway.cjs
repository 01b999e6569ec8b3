// grammY (1.x) calling the Bot API through pollhook's gateway.
//
// Only client.apiRoot changes and the gateway key stands in for the token;
// files are downloaded from `${apiRoot}/file/bot${key}/${file_path}`, as
// grammY's docs show. Sends a text and a photo (multipart upload), downloads
// a file, then shows the gateway's refusals as GrammyError. One JSON line per
// step on stdout; any other failure exits 1.
//
// Environment: as aiogram_gateway.py. CommonJS, so NODE_PATH can point at
// the node_modules holding grammy (FRAMEWORKS_NODE_MODULES).

const fs = require("node:fs");
const path = require("node:path");
const { Bot, GrammyError, InputFile } = require("grammy");

const env = (name) => {
  const value = process.env[name];
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const emit = (step, fields) => console.log(JSON.stringify({ step, ...fields }));

const gateway = env("GATEWAY");
// The one change: the API root.
const botWith = (key) => new Bot(key, { client: { apiRoot: gateway } });

async function refusal(step, call) {
  try {
    await call();
  } catch (e) {
    if (!(e instanceof GrammyError)) throw e;
    emit(step, { exception: e.constructor.name, error_code: e.error_code, description: e.description });
    return;
  }
  emit(step, { exception: null });
}

async function main() {
  const grammyDir = path.dirname(path.dirname(require.resolve("grammy")));
  const { version } = JSON.parse(fs.readFileSync(path.join(grammyDir, "package.json"), "utf8"));
  emit("version", { framework: "grammY", version });

  const chatId = Number(env("CHAT_ID"));
  const key = env("KEY");
  const bot = botWith(key);

  let sent = await bot.api.sendMessage(chatId, env("TEXT"));
  emit("sendMessage", { message_id: sent.message_id, chat_id: sent.chat.id, text: sent.text });

  const photo = new InputFile(fs.readFileSync(env("PHOTO")), "pixels.png");
  sent = await bot.api.sendPhoto(chatId, photo);
  const biggest = sent.photo[sent.photo.length - 1];
  emit("sendPhoto", {
    message_id: sent.message_id,
    file_id: biggest.file_id,
    file_size: biggest.file_size,
    width: biggest.width,
    height: biggest.height,
  });

  const file = await bot.api.getFile(env("FILE_ID"));
  emit("getFile", { file_path: file.file_path, file_size: file.file_size });
  const response = await fetch(`${gateway}/file/bot${key}/${file.file_path}`);
  if (!response.ok) throw new Error(`download answered HTTP ${response.status}`);
  fs.writeFileSync(env("DOWNLOAD_TO"), Buffer.from(await response.arrayBuffer()));
  emit("download", { size: fs.statSync(env("DOWNLOAD_TO")).size });

  await refusal("getUpdates", () => bot.api.getUpdates({ limit: Number(env("REFUSED_LIMIT")) }));
  const stranger = botWith(env("UNKNOWN_KEY"));
  await refusal("unknownKey", () => stranger.api.sendMessage(chatId, "never sent"));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
