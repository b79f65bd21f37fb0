// Renders chats with Hugging Face's Jinja and tokenizes the text with Hugging Face's tokenizers, as
// transformers' apply_chat_template(tokenize=True) does: the reference for the service's chat prompts.
// stdin: {"now"?: ISO time, "cases": [{"tokenizer_dir", "template"?, "messages", "tools"?, "kwargs"?, "add_generation_prompt"}]}
// stdout: [{"text", "ids"} or {"error"}], one per case.
// strftime_now reads the clock through `new Date()`: pinned to the input's "now" so both sides print the same date.
const input = JSON.parse((await import("node:fs")).readFileSync(0, "utf8"));
const RealDate = Date;
globalThis.Date = class extends RealDate {
  constructor(...args) { super(...(args.length ? args : [input.now ?? "2026-12-05T12:00:00Z"])); }
};
const { Template } = await import("@huggingface/jinja");
import { Tokenizer } from "@huggingface/tokenizers";
import fs from "node:fs";

const tokenizers = new Map();
function load(dir) {
  if (!tokenizers.has(dir)) {
    const config = JSON.parse(fs.readFileSync(`${dir}/tokenizer_config.json`, "utf8"));
    const tokenizer = new Tokenizer(JSON.parse(fs.readFileSync(`${dir}/tokenizer.json`, "utf8")), config);
    tokenizers.set(dir, { tokenizer, config });
  }
  return tokenizers.get(dir);
}
// A special token in tokenizer_config.json is a string or {"content": ...}.
const tokenText = (t) => (t == null ? "" : typeof t === "string" ? t : t.content ?? "");

const results = input.cases.map((c) => {
  try {
    const { tokenizer, config } = load(c.tokenizer_dir);
    const source = c.template ?? config.chat_template;
    const text = new Template(source).render({
      messages: c.messages,
      ...(c.tools ? { tools: c.tools } : {}),
      add_generation_prompt: c.add_generation_prompt,
      bos_token: tokenText(config.bos_token),
      eos_token: tokenText(config.eos_token),
      ...(c.kwargs ?? {}),
    });
    return { text, ids: tokenizer.encode(text, { add_special_tokens: false }).ids };
  } catch (e) {
    return { error: String(e?.message ?? e) };
  }
});
process.stdout.write(JSON.stringify(results));
