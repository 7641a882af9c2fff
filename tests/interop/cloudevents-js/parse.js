// Reads {"headers": {...}, "body": "..."} on stdin, parses it with the CloudEvents SDK for
// JavaScript (strict validation, as a receiver built on it would) and writes the events as a
// JSON array on stdout. Exits 1 with the SDK's validation errors on stderr if any event fails.
"use strict";

const { HTTP } = require("cloudevents");

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
  input += chunk;
});
process.stdin.on("end", () => {
  const message = JSON.parse(input);
  try {
    const parsed = HTTP.toEvent({ headers: message.headers, body: message.body });
    const events = Array.isArray(parsed) ? parsed : [parsed];
    process.stdout.write(JSON.stringify(events.map((event) => event.toJSON())));
  } catch (error) {
    process.stderr.write(`${error.message} ${JSON.stringify(error.errors || [])}\n`);
    process.exit(1);
  }
});
