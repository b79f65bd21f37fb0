// @ts-check
// Small DOM and formatting helpers shared by the views.

/** @typedef {Node | string | number | null | undefined | false} Leaf @typedef {Leaf | Leaf[] | Leaf[][]} Child */

/**
 * Creates an element. Attributes named on* become event listeners; null, undefined and false ones are left out;
 * true gives an empty attribute.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, any> | null} [attributes]
 * @param {...Child} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function h(tag, attributes, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (name === "value" && "value" in element) /** @type {any} */ (element).value = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

/** @param {Node} parent @param {Child[]} children */
function append(parent, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, /** @type {Child[]} */ (child));
    else parent.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
}

/** Replaces an element's children. @param {Element} element @param {...Child} children */
export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
}

/** The element with this id, which the view has rendered. @param {string} id */
export function byId(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`#${id} is not on the page`);
  return element;
}

/** @param {string} status @param {string} [id] */
export function statusBadge(status, id) {
  return h("span", { class: "badge", "data-status": status, id }, status.replace("_", " "));
}

const finished = ["succeeded", "failed", "cancelled"];
/** @param {string} status */
export const isFinished = (status) => finished.includes(status);

/** @param {number | null | undefined} unixSeconds */
export function formatTime(unixSeconds) {
  if (!unixSeconds) return "—";
  return new Date(unixSeconds * 1000).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

/** @param {number | null | undefined} seconds */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

/** @param {number} bytes */
export function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = bytes, unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

/** @param {number | null | undefined} n */
export const formatNumber = (n) => (n === null || n === undefined ? "—" : n.toLocaleString());

/** @param {number | null | undefined} loss */
export const formatLoss = (loss) => (loss === null || loss === undefined ? "—" : loss.toFixed(4));

/** @param {number | null | undefined} rate */
export const formatRate = (rate) => (rate === null || rate === undefined ? "—" : rate.toExponential(2));

/**
 * A model's name (a checkpoint's, say) with a button that copies it and a link that tries it in the playground.
 * @param {string} model
 */
export function modelActions(model) {
  return [h("code", { class: "model-name" }, model), " ",
    h("button", { type: "button", class: "secondary small", "aria-label": `Copy ${model}`, onclick: () => copyText(model) }, "Copy"), " ",
    h("a", { href: `#/playground?model=${encodeURIComponent(model)}` }, "Try it")];
}

/** Copies text to the clipboard; on a plain-HTTP address (no Clipboard API there) through a selected text area. @param {string} text */
async function copyText(text) {
  try {
    if (navigator.clipboard) await navigator.clipboard.writeText(text);
    else {
      const area = h("textarea", { class: "visually-hidden", readonly: true }, text);
      document.body.append(area);
      area.select();
      const copied = document.execCommand("copy");
      area.remove();
      if (!copied) throw new Error("the browser refused");
    }
    toast(`Copied ${text}`);
  } catch (e) {
    toast(`Could not copy: ${/** @type {Error} */ (e).message}`, "error");
  }
}

/** Announces a short message to everyone, screen readers included. @param {string} message */
export function toast(message, kind = "info") {
  const region = byId("toast");
  replace(region, h("p", { class: `toast toast-${kind}` }, message));
  clearTimeout(Number(region.dataset.timer));
  region.dataset.timer = String(setTimeout(() => region.replaceChildren(), 6000));
}
