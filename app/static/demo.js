// The demo page: one photo, one model, one key -> before/after and a PNG to download.
// Plain JavaScript, no build step; it calls the same public API as any client.
const $ = (id) => document.getElementById(id);
let photo = null;
let resultUrl = null;

function choose(file) {
  if (!file) return;
  photo = file;
  $("drop-text").textContent = `${file.name} (${Math.round(file.size / 1024)} KB)`;
  $("before").src = URL.createObjectURL(file);
  $("after").removeAttribute("src");
  $("download").hidden = true;
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
  try {
    const response = await fetch("v2/rembg/", { method: "POST", headers: { ApiKey: key }, body: form });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      showError(body?.error ?? { code: `http_${response.status}`, message: response.statusText });
      $("status").textContent = "";
      return;
    }
    const png = await response.blob();
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = URL.createObjectURL(png);
    $("after").src = resultUrl;
    $("download").href = resultUrl;
    $("download").download = photo.name.replace(/\.[^.]*$/, "") + "-cutout.png";
    $("download").hidden = false;
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
