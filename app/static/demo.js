// The demo page: one photo, one model, one key -> a before/after view and a PNG to download.
// Plain JavaScript, no build step; it calls the same public API as any client.
const $ = (id) => document.getElementById(id);
// The key is kept in this browser once it has worked, until "Forget key".
const KEY_ITEM = "cutout.apiKey";
let photo = null;
let resultUrl = null;

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

function choose(file) {
  if (!file) return;
  photo = file;
  $("drop-text").textContent = `${file.name} (${Math.round(file.size / 1024)} KB)`;
  $("before").src = URL.createObjectURL(file);
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
  $("error").textContent = `${error.code}: ${error.message}` + (error.request_id ? ` (${error.request_id})` : "");
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

const remembered = storage.get();
if (remembered) $("key").value = remembered;
showRemembered(Boolean(remembered));
$("forget").addEventListener("click", () => {
  storage.clear();
  $("key").value = "";
  showRemembered(false);
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
    // The mask's confidence (docs/models.md, "Confidence and model=auto"): below 0.5, look at the edges or try aurora.
    const confidence = Number(response.headers.get("X-Mask-Confidence"));
    const escalated = response.headers.get("X-Model-Escalated") === "true" ? ", auto escalated to aurora" : "";
    $("confidence").textContent = `Mask confidence ${confidence.toFixed(2)}` +
      (confidence < 0.5 ? " (low: check the edges, or try aurora)" : "") + escalated;
    $("confidence").hidden = false;
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    $("status").textContent = `Done in ${seconds} s with ${response.headers.get("X-Model")}: ` +
      `${response.headers.get("X-Credits-Charged")} credit(s) charged, ${response.headers.get("X-Credits-Remaining")} left.`;
  } catch (error) {
    showError({ code: "network_error", message: String(error) });
    $("status").textContent = "";
  } finally {
    $("submit").disabled = false;
  }
});
