// The reference the C# tokenizers are compared with: Hugging Face's own JavaScript tokenizers.
//
//   node tokenize.mjs < request.json
//     request: {"tokenizer": "path/tokenizer.json", "config": "path/tokenizer_config.json", "texts": [...], "decode": [[ids], ...]}
//     answer:  {"ids": [[...]] (encode(text)), "plain": [[...]] (add_special_tokens: false),
//               "decoded": [...] (decode(plain)), "decodedSkip": [...] (decode(ids, skip_special_tokens)),
//               "decodedIds": [{"text", "skip"}] (decode of each "decode" list both ways)}
//   node tokenize.mjs --serve      (benchmarks) first line: the request above without "decode"; answers "ready";
//     then each line "round" encodes every text once (add_special_tokens: false) and answers {"ms", "tokens"}.
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { Tokenizer } from "@huggingface/tokenizers";

const load = (request) => new Tokenizer(JSON.parse(readFileSync(request.tokenizer, "utf8")),
  request.config ? JSON.parse(readFileSync(request.config, "utf8")) : {});
// The reference refuses to decode an empty list; the text of no tokens is "".
const decode = (tokenizer, ids, skip) => ids.length === 0 ? "" : tokenizer.decode(ids, { skip_special_tokens: skip });

if (process.argv.includes("--serve")) {
  let tokenizer, texts;
  for await (const line of createInterface({ input: process.stdin })) {
    if (!tokenizer) {
      const request = JSON.parse(line);
      tokenizer = load(request);
      texts = request.texts;
      console.log("ready");
    } else if (line === "round") {
      const start = performance.now();
      let tokens = 0;
      for (const text of texts) tokens += tokenizer.encode(text, { add_special_tokens: false }).ids.length;
      console.log(JSON.stringify({ ms: performance.now() - start, tokens }));
    }
  }
} else {
  const request = JSON.parse(readFileSync(0, "utf8"));
  const tokenizer = load(request);
  const ids = [], plain = [], decoded = [], decodedSkip = [];
  for (const text of request.texts ?? []) {
    const withSpecial = tokenizer.encode(text).ids, without = tokenizer.encode(text, { add_special_tokens: false }).ids;
    ids.push(withSpecial);
    plain.push(without);
    decoded.push(decode(tokenizer, without, false));
    decodedSkip.push(decode(tokenizer, withSpecial, true));
  }
  const decodedIds = (request.decode ?? []).map((list) => ({ text: decode(tokenizer, list, false), skip: decode(tokenizer, list, true) }));
  process.stdout.write(JSON.stringify({ ids, plain, decoded, decodedSkip, decodedIds }));
}
