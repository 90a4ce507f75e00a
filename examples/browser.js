// In a web page: `image` is a File or Blob, e.g. from <input type="file">.
// Resolves to the cut-out PNG as a Blob; rejects with the API's error (code, message, request_id).
async function removeBackground(image, apiKey, model = "falcon", api = "http://localhost:8000") {
  const form = new FormData();
  form.append("image", image);
  form.append("model", model);
  const response = await fetch(`${api}/v2/rembg/`, {
    method: "POST",
    headers: { ApiKey: apiKey },
    body: form,
  });
  if (!response.ok) {
    const { error } = await response.json();
    throw Object.assign(new Error(error.message), error);
  }
  return {
    png: await response.blob(),
    creditsRemaining: Number(response.headers.get("X-Credits-Remaining")),
  };
}
