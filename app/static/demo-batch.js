// Many photos at once on the demo page: sent as one batch (POST /v2/batches), a progress bar per
// photo and for the batch, and the ZIP at the end. Additive: it builds its own section and reads
// the API key and model from the page's form (demo.js) or the key the browser remembers.
"use strict";

(() => {
  const section = document.createElement("section");
  section.id = "batch";
  section.className = "panel";
  section.innerHTML = `
    <h2>Many photos</h2>
    <p class="lede">Choose several: they go as one batch, with the model and key above, and come back as one ZIP.</p>
    <div class="batch-pick">
      <input id="batch-files" type="file" accept="image/*" multiple>
      <button id="batch-send" class="primary" type="button" disabled>Remove all backgrounds</button>
    </div>
    <p class="batch-total"><progress id="batch-progress" max="1" value="0" hidden></progress>
      <span id="batch-status" role="status"></span></p>
    <ul id="batch-items"></ul>
    <a id="batch-zip" class="button" download="cutouts.zip" hidden>Download all (ZIP)</a>`;
  (document.querySelector("main") || document.body).appendChild(section);

  const files = section.querySelector("#batch-files");
  const send = section.querySelector("#batch-send");
  const bar = section.querySelector("#batch-progress");
  const status = section.querySelector("#batch-status");
  const list = section.querySelector("#batch-items");
  const zip = section.querySelector("#batch-zip");
  const PROGRESS = { queued: 0.1, running: 0.5, succeeded: 1, failed: 1, cancelled: 1, expired: 1 };

  const apiKey = () => {
    const typed = document.getElementById("key");
    if (typed && typed.value.trim()) return typed.value.trim();
    try { return localStorage.getItem("cutout.apiKey") || ""; } catch { return ""; }
  };
  const call = async (path, init = {}) => {
    const response = await fetch(path, { ...init, headers: { ApiKey: apiKey(), ...(init.headers || {}) } });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
    }
    return response;
  };

  // One photo's line: its bar, its state, and our error's message when it failed (red, not blue).
  const show = (line, item) => {
    line.meter.value = PROGRESS[item.status];
    line.label.textContent = `${line.name}: ${item.status}${item.error ? ` (${item.error.message})` : ""}`;
    line.row.classList.toggle("failed", item.status === "failed");
  };

  files.addEventListener("change", () => { send.disabled = files.files.length === 0; });

  send.addEventListener("click", async () => {
    send.disabled = true;
    zip.hidden = true;
    list.replaceChildren();
    const form = new FormData();
    const rows = [...files.files].map((file) => {
      form.append("images", file, file.name);
      const row = document.createElement("li");
      const meter = document.createElement("progress");
      meter.max = 1;
      meter.value = 0;
      const label = document.createElement("span");
      label.textContent = `${file.name}: uploading`;
      row.append(meter, label);
      list.appendChild(row);
      return { row, meter, label, name: file.name };
    });
    const model = document.getElementById("model");
    if (model && model.value) form.append("model", model.value);
    bar.hidden = false;
    bar.value = 0;
    try {
      status.textContent = "Uploading…";
      const batch = await (await call("v2/batches", { method: "POST", body: form })).json();
      let current = batch;
      while (current.status !== "completed") {
        current.items.forEach((item, i) => show(rows[i], item));
        const ended = current.items.filter((item) => PROGRESS[item.status] === 1).length;
        bar.value = ended / current.items.length;
        status.textContent = `${ended} of ${current.items.length} done`;
        await new Promise((resolve) => setTimeout(resolve, 1000));
        current = await (await call(current.url.replace(/^\//, ""))).json();
      }
      current.items.forEach((item, i) => show(rows[i], item));
      bar.value = 1;
      const counts = current.counts;
      status.textContent = `Done: ${counts.succeeded} cut out, ${counts.failed} failed.`;
      if (counts.succeeded > 0) {
        const archive = await (await call(current.zip_url.replace(/^\//, ""))).blob();
        zip.href = URL.createObjectURL(archive);
        zip.hidden = false;
      }
    } catch (err) {
      status.textContent = `Error: ${err.message}`;
    } finally {
      send.disabled = files.files.length === 0;
    }
  });
})();
