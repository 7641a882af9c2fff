// Reads {"schema": ..., "documents": [...]} on stdin and prints, per document, whether the
// schema accepts it and Ajv's errors. Ajv compiles in strict mode, so a schema keyword Ajv
// does not know, or an unknown format, fails the compilation itself.
"use strict";

const Ajv2020 = require("ajv/dist/2020");
const addFormats = require("ajv-formats");

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const { schema, documents } = JSON.parse(input);
  const ajv = new Ajv2020({ strict: true, allErrors: true });
  addFormats(ajv);
  const validate = ajv.compile(schema);
  const results = documents.map((document) => {
    const valid = validate(document);
    return { valid, errors: valid ? [] : validate.errors };
  });
  process.stdout.write(JSON.stringify(results));
});
