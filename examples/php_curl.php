<?php
$api = getenv("CUTOUT_URL") ?: "http://localhost:8000";
$ch = curl_init("$api/v2/rembg/");
curl_setopt_array($ch, [
    CURLOPT_POST => true,
    CURLOPT_HTTPHEADER => ["ApiKey: " . getenv("CUTOUT_API_KEY")],
    CURLOPT_POSTFIELDS => [
        "image" => new CURLFile("photo.jpg", "image/jpeg"),
        "model" => "falcon",
    ],
    CURLOPT_RETURNTRANSFER => true,
]);
$body = curl_exec($ch);
if ($body === false) {
    fwrite(STDERR, "request failed: " . curl_error($ch) . "\n");
    exit(1);
}
$status = curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
if ($status !== 200) {
    $error = json_decode($body, true)["error"];
    fwrite(STDERR, "$status {$error['code']}: {$error['message']} ({$error['request_id']})\n");
    exit(1);
}
file_put_contents("out.png", $body);
echo "saved out.png\n";
