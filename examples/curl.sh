# Writes the cut-out to out.png; on an error, curl exits 22 and out.png holds the JSON error.
curl -sS --fail-with-body -H "ApiKey: $CUTOUT_API_KEY" \
     -F "image=@photo.jpg" -F "model=falcon" \
     -o out.png "${CUTOUT_URL:-http://localhost:8000}/v2/rembg/"
