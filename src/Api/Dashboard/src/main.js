// @ts-check
// The dashboard's entry point: a hash router over the views (#/jobs, #/jobs/{id}, #/compare, #/evals, #/evals/{id}, #/new, #/adapters, #/playground).
import { adaptersView } from "./adapters.js";
import { apiKey, setApiKey } from "./api.js";
import { compareView } from "./compare.js";
import { byId } from "./dom.js";
import { evalListView, evalRunView, evalView } from "./evals.js";
import { jobListView, jobView } from "./jobs.js";
import { newJobView } from "./new-job.js";
import { playgroundView } from "./playground.js";

/** @type {[RegExp, string, string, (main: HTMLElement, match: RegExpMatchArray, query: URLSearchParams) => (() => void) | void][]} */
const routes = [
  [/^\/jobs\/([\w-]+)$/, "jobs", "Job", (main, m) => jobView(main, m[1])],
  [/^\/jobs$/, "jobs", "Jobs", (main) => jobListView(main)],
  [/^\/compare$/, "compare", "Compare runs", (main, _, query) => compareView(main, query)],
  [/^\/evals\/([\w-]+)\/runs\/([\w-]+)$/, "evals", "Eval run", (main, m) => evalRunView(main, m[1], m[2])],
  [/^\/evals\/([\w-]+)$/, "evals", "Eval", (main, m) => evalView(main, m[1])],
  [/^\/evals$/, "evals", "Evals", (main) => evalListView(main)],
  [/^\/new$/, "new", "New job", (main) => newJobView(main)],
  [/^\/adapters$/, "adapters", "Adapters", (main) => adaptersView(main)],
  [/^\/playground$/, "playground", "Playground", (main, _, query) => playgroundView(main, query)],
];

/** @type {(() => void) | void} */
let leave;

function route() {
  const [path, search = ""] = location.hash.replace(/^#/, "").split("?");
  const found = routes.map(([pattern, ...rest]) => /** @type {const} */ ([path.match(pattern), ...rest])).find(([m]) => m);
  if (!found) { location.replace("#/jobs"); return; }
  const [match, section, title, render] = found;
  leave?.();
  const main = byId("main");
  leave = render(main, /** @type {RegExpMatchArray} */ (match), new URLSearchParams(search));
  document.title = `${title} · Adapter service`;
  for (const link of document.querySelectorAll("nav a[data-nav]")) {
    if (/** @type {HTMLElement} */ (link).dataset.nav === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  // Move focus to the new page's heading, as a full page load would, so keyboard and screen reader users follow.
  if (document.activeElement !== document.body) main.querySelector("h1")?.focus();
}

// With auth on, every call needs a key: entered once, kept in localStorage, sent as a Bearer key.
const keyInput = /** @type {HTMLInputElement} */ (byId("api-key"));
keyInput.value = apiKey();
keyInput.addEventListener("change", () => { setApiKey(keyInput.value.trim()); route(); });

window.addEventListener("hashchange", route);
route();
