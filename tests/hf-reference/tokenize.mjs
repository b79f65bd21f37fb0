// The reference the C# tokenizers are compared with: Hugging Face's own JavaScript tokenizers.
//
//   node tokenize.mjs < request.json
//     request: {"tokenizer": "path/tokenizer.json", "config": "path/tokenizer_config.json", "texts": [...],
//               "specialTexts": [...], "random": {"seed", "count", "maxLength"}}
//     answer:  {"plain": [[...]] (encode(text, add_special_tokens: false) per text), "decoded": [...] (decode(plain)),
//               "ids": [[...]] (encode(text) per special text), "decodedSkip": [...] (decode(ids, skip_special_tokens)),
//               "randomIds": [[...]] (random id lists, half of the ids single characters or <0xNN> bytes, which split
//               UTF-8 across tokens), "decodedIds": [{"text", "skip"}] (decode of each random list both ways)}
//   node tokenize.mjs --serve      (benchmarks) first line: the request above without "decode"; answers "ready";
//     then each line "round" encodes every text once (add_special_tokens: false) and answers {"ms", "tokens"}.
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { Tokenizer } from "@huggingface/tokenizers";

const load = (request) => new Tokenizer(JSON.parse(readFileSync(request.tokenizer, "utf8")),
  request.config ? JSON.parse(readFileSync(request.config, "utf8")) : {});
// The reference refuses to decode an empty list; the text of no tokens is "".
const decode = (tokenizer, ids, skip) => ids.length === 0 ? "" : tokenizer.decode(ids, { skip_special_tokens: skip });

function randomLists(tokenizer, { seed, count, maxLength }) {
  let state = seed >>> 0;
  const next = (n) => {   // mulberry32: reproducible without a package
    state = (state + 0x6d2b79f5) >>> 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
  };
  const vocab = tokenizer.model.vocab;
  const small = [...vocab.keys()].filter((id) => vocab[id] !== undefined && ([...vocab[id]].length === 1 || /^<0x[0-9A-F]{2}>$/.test(vocab[id])));
  const ids = [...vocab.keys()].filter((id) => vocab[id] !== undefined);
  return Array.from({ length: count }, () => Array.from({ length: 1 + next(maxLength) },
    () => (next(2) === 0 ? small[next(small.length)] : ids[next(ids.length)])));
}

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
  const plain = (request.texts ?? []).map((text) => tokenizer.encode(text, { add_special_tokens: false }).ids);
  const decoded = plain.map((list) => decode(tokenizer, list, false));
  const ids = (request.specialTexts ?? []).map((text) => tokenizer.encode(text).ids);
  const decodedSkip = ids.map((list) => decode(tokenizer, list, true));
  const randomIds = randomLists(tokenizer, request.random ?? { seed: 1, count: 0, maxLength: 1 });
  const decodedIds = randomIds.map((list) => ({ text: decode(tokenizer, list, false), skip: decode(tokenizer, list, true) }));
  process.stdout.write(JSON.stringify({ ids, plain, decoded, decodedSkip, randomIds, decodedIds }));
}
