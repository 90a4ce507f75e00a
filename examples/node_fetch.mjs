// Node.js 20+ on a server, built-ins only (fetch, FormData, Blob): `node node_fetch.mjs a.jpg b.jpg ...`
// writes a-cutout.png, b-cutout.png, ... All photos are sent at once: the API queues one key's
// requests beyond its plan's limit, so Promise.all needs no retry loop (only a 429 past the queue).
import { readFile, writeFile } from "node:fs/promises";
import { basename, extname } from "node:path";

const api = process.env.CUTOUT_URL ?? "http://localhost:8000";

async function removeBackground(path, model = "falcon") {
  const form = new FormData();
  form.append("image", new Blob([await readFile(path)]), basename(path));
  form.append("model", model);
  const response = await fetch(`${api}/v2/rembg/`, {
    method: "POST",
    headers: { ApiKey: process.env.CUTOUT_API_KEY },
    body: form,
    signal: AbortSignal.timeout(120_000),
  });
  if (!response.ok) {
    const { error } = await response.json();
    const summary = `${response.status} ${error.code}: ${error.message} (${error.request_id})`;
    throw Object.assign(new Error(summary), { code: error.code, requestId: error.request_id, status: response.status });
  }
  const out = `${basename(path, extname(path))}-cutout.png`;
  await writeFile(out, Buffer.from(await response.arrayBuffer()));
  return { out, creditsRemaining: Number(response.headers.get("X-Credits-Remaining")) };
}

const photos = process.argv.length > 2 ? process.argv.slice(2) : ["photo.jpg"];
try {
  const results = await Promise.all(photos.map((photo) => removeBackground(photo)));
  for (const { out } of results) console.log("wrote", out);
  console.log("credits left:", Math.min(...results.map((r) => r.creditsRemaining)));
} catch (error) {
  console.error(error.message);
  process.exit(1);
}
