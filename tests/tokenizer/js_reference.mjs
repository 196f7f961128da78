// Independent reference: encodes strings with @lenml/tokenizers (HF tokenizers.js-compatible) and prints
// their ids as JSON. Usage: node js_reference.mjs NODE_MODULES_DIR TOKENIZER_JSON INPUT_JSON OUTPUT_JSON
// INPUT_JSON is a JSON array of strings; OUTPUT_JSON gets a JSON array of id arrays (no BOS/EOS added).
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const [modulesDir, tokenizerPath, inputPath, outputPath] = process.argv.slice(2);
if (!outputPath) {
  console.error("usage: node js_reference.mjs NODE_MODULES_DIR TOKENIZER_JSON INPUT_JSON OUTPUT_JSON");
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(modulesDir), "noop.js"));
const { TokenizerLoader } = require("@lenml/tokenizers");

const tokenizerJSON = JSON.parse(readFileSync(tokenizerPath, "utf8"));
// A plain PreTrainedTokenizer: no BOS/EOS, no legacy/cleanup options from a tokenizer_config.
const tokenizer = TokenizerLoader.fromPreTrained({
  tokenizerJSON,
  tokenizerConfig: { tokenizer_class: "PreTrainedTokenizer", clean_up_tokenization_spaces: false },
});
const inputs = JSON.parse(readFileSync(inputPath, "utf8"));
const out = inputs.map((s) => tokenizer.encode(s, { add_special_tokens: false }));
writeFileSync(outputPath, JSON.stringify(out));
