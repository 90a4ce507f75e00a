// The demo page: one photo, one model, one key -> a before/after view and a PNG to download.
// Plain JavaScript, no build step; it calls the same public API as any client. Text from the
// server is only ever set as textContent, never parsed as HTML.
const $ = (id) => document.getElementById(id);
// The key is kept in this browser once it has worked, until "Forget key".
const KEY_ITEM = "cutout.apiKey";
// What `python -m app keys create` makes (app/store/base.py): only such a key is checked while it is
// typed, so that a half-typed key never counts as a wrong one against this address's limit.
const KEY_SHAPE = /^co_[A-Za-z0-9_-]{43}$/;
// Options that cost extra when used (GET /v2/account's option_costs), as this form sends them.
const PRICED = ["bg_blur", "shadow"];
let photo = null;
let resultUrl = null;
let thumbUrl = null;
let account = null;  // GET /v2/account for the key in the field: prices, balance
let accountFor = "";
let accountNote = "The price shows once your key is in.";  // the price line while there is no account

const credits = (n) => `${n} credit${n === 1 ? "" : "s"}`;

const storage = {
  // localStorage can be missing or refuse (private windows, blocked storage): then nothing is remembered.
  get() { try { return localStorage.getItem(KEY_ITEM); } catch { return null; } },
  set(value) { try { localStorage.setItem(KEY_ITEM, value); } catch { /* not remembered */ } },
  clear() { try { localStorage.removeItem(KEY_ITEM); } catch { /* nothing to clear */ } },
};

function showRemembered(remembered) {
  $("forget").hidden = !remembered;
  $("remembered").hidden = !remembered;
}

function setSplit(percent) {
  $("split").value = String(percent);
  $("compare").style.setProperty("--split", `${percent}%`);
}

// Only the options that differ from the API's defaults are sent: a plain request stays plain.
function outputOptions() {
  const options = {};
  if ($("output_format").value !== "png") options.output_format = $("output_format").value;
  if ($("background").value === "color") options.bg_color = $("bg_color").value;
  if ($("background").value === "blur") options.bg_blur = "20";
  if ($("crop_to_bbox").checked) options.crop_to_bbox = "true";
  if ($("shadow").checked) options.shadow = "true";
  return options;
}

function size(bytes) {
  return bytes < 1024 * 1024 ? `${Math.max(1, Math.round(bytes / 1024))} KB` : `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

// What the chosen model and options cost with this key, before the click.
function showPrice() {
  const price = $("price");
  price.classList.remove("short");
  price.replaceChildren();
  // Each model's price in its option's text: "ghost: fastest · 1 credit" (none without a key).
  for (const option of $("model").options) {
    option.dataset.name ??= option.textContent;
    const priced = account?.models[option.value];
    option.textContent = option.dataset.name + (priced && !account.unlimited ? ` · ${credits(priced.cost)}` : "");
  }
  if (!account) {
    price.textContent = accountNote;
    return;
  }
  const model = account.models[$("model").value];
  if (!model) {
    price.textContent = "This key's server does not offer that model.";
    return;
  }
  const options = outputOptions();
  const cost = model.cost + PRICED.filter((name) => name in options)
    .reduce((sum, name) => sum + (account.option_costs?.[name] ?? 0), 0);
  const strong = document.createElement("strong");
  if (account.unlimited) {
    strong.textContent = "free";
    price.append("This is ", strong, " with this key (unlimited)");
    return;
  }
  strong.textContent = credits(cost);
  price.append("This costs ", strong, ` of your ${credits(account.credits)}`);
  price.classList.toggle("short", cost > account.credits);
  if (cost > account.credits) price.append(": top up first");
}

// The account behind the key in the field (balance, prices): asked once per complete key.
async function loadAccount() {
  const key = $("key").value.trim();
  if (key === accountFor) return;
  account = null;
  accountFor = key;
  if (!key) accountNote = "The price shows once your key is in.";
  else if (!KEY_SHAPE.test(key)) accountNote = "A whole key is co_ and 43 more characters.";
  else accountNote = "Checking the key…";
  showPrice();
  if (!KEY_SHAPE.test(key)) return;
  try {
    const response = await fetch("v2/account", { headers: { ApiKey: key } });
    const body = await response.json().catch(() => null);
    if (key !== $("key").value.trim()) return;  // typed on meanwhile
    if (response.ok) account = body;
    else accountNote = body?.error?.message ?? `This key was refused (HTTP ${response.status}).`;
  } catch (error) {
    accountNote = "The server could not be reached to price this.";
  }
  showPrice();
}

function choose(file) {
  if (!file) return;
  photo = file;
  $("drop-text").textContent = file.name;
  $("drop-hint").textContent = `${size(file.size)} · click or drop to change`;
  if (thumbUrl) URL.revokeObjectURL(thumbUrl);
  thumbUrl = URL.createObjectURL(file);
  $("thumb").src = thumbUrl;
  $("thumb").hidden = false;
  $("drop").classList.add("chosen");
  $("empty").hidden = true;
  $("before").src = thumbUrl;
  $("after").removeAttribute("src");
  $("compare").classList.remove("done", "alone");
  setSplit(100);
  $("split-label").hidden = true;
  $("download").hidden = true;
  $("confidence").hidden = true;
  $("result").hidden = false;
  $("submit").disabled = false;
}

function showError(error) {
  const details = document.createElement("small");
  details.textContent = [error.code, error.request_id].filter(Boolean).join(" · ");
  $("error").replaceChildren(String(error.message), details);
  $("error").hidden = false;
}

$("file").addEventListener("change", () => choose($("file").files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  choose(event.dataTransfer.files[0]);
});
$("split").addEventListener("input", () => setSplit(Number($("split").value)));
// Live preview: the chosen colour is painted behind the transparent cut-out already shown, at once and
// free of charge; "Remove background" then returns it composited, as the file to download.
function previewBackground() {
  $("after").style.background = $("background").value === "color" ? $("bg_color").value : "";  // "": checkerboard
}
$("background").addEventListener("change", () => {
  $("bg_color").disabled = $("background").value !== "color";
  previewBackground();
});
$("bg_color").addEventListener("input", previewBackground);
for (const id of ["model", "background", "shadow", "crop_to_bbox", "output_format"]) $(id).addEventListener("change", showPrice);
$("key").addEventListener("input", loadAccount);

const remembered = storage.get();
if (remembered) $("key").value = remembered;
showRemembered(Boolean(remembered));
loadAccount();
$("forget").addEventListener("click", () => {
  storage.clear();
  $("key").value = "";
  showRemembered(false);
  loadAccount();
  $("key").focus();
});

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = $("key").value.trim();
  if (!key) {
    showError({ code: "invalid_api_key", message: "Paste your API key first." });
    return;
  }
  $("error").hidden = true;
  $("submit").disabled = true;
  $("status").textContent = "Working…";
  $("compare").classList.add("working");
  const started = performance.now();
  const form = new FormData();
  form.append("image", photo);
  form.append("model", $("model").value);
  for (const [name, value] of Object.entries(outputOptions())) form.append(name, value);
  try {
    const response = await fetch("v2/rembg/", { method: "POST", headers: { ApiKey: key }, body: form });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      showError(body?.error ?? { code: `http_${response.status}`, message: response.statusText });
      $("status").textContent = "";
      return;
    }
    storage.set(key);
    showRemembered(true);
    const picture = await response.blob();
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = URL.createObjectURL(picture);
    $("after").src = resultUrl;
    await $("after").decode().catch(() => {});
    // A crop changes the size: then the answer is shown alone, not over the photo.
    const sameSize = $("after").naturalWidth === $("before").naturalWidth &&
      $("after").naturalHeight === $("before").naturalHeight;
    $("compare").classList.add("done");
    $("compare").classList.toggle("alone", !sameSize);
    setSplit(50);
    $("split-label").hidden = !sameSize;
    const extension = { "image/webp": "webp", "image/jpeg": "jpg" }[picture.type] ?? "png";
    $("download").href = resultUrl;
    $("download").download = photo.name.replace(/\.[^.]*$/, "") + `-cutout.${extension}`;
    $("download").textContent = `Download ${extension.toUpperCase()}`;
    $("download").hidden = false;
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    const charged = Number(response.headers.get("X-Credits-Charged"));
    const remaining = response.headers.get("X-Credits-Remaining");  // absent for an unlimited key
    let bill = charged ? `${credits(charged)} charged` : "nothing charged";
    if (remaining !== null) {
      bill += `, ${credits(Number(remaining))} left`;
      if (account) account.credits = Number(remaining);
    }
    $("status").textContent = `Done in ${seconds} s with ${response.headers.get("X-Model")}: ${bill}.`;
    // The mask's confidence (docs/models.md, "Confidence and model=auto"): below the threshold auto
    // escalates at (the account's models.auto), look at the edges.
    const confidence = Number(response.headers.get("X-Mask-Confidence"));
    const low = account?.models.auto?.escalates_below_confidence;
    const escalated = response.headers.get("X-Model-Escalated") === "true" ? ", auto escalated to aurora" : "";
    $("confidence").textContent = `Mask confidence ${confidence.toFixed(2)}` +
      (low !== undefined && confidence < low ? " (low: check the edges, or try aurora)" : "") + escalated;
    $("confidence").hidden = false;
    showPrice();
    // On a phone the result is below the form: bring it into view.
    if (matchMedia("(max-width: 860px)").matches) $("result").scrollIntoView({ behavior: "smooth", block: "start" });
  } catch (error) {
    showError({ code: "network_error", message: String(error) });
    $("status").textContent = "";
  } finally {
    $("submit").disabled = false;
    $("compare").classList.remove("working");
  }
});
