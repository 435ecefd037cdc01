// The onboarding page: rate movies, see recommendations. Plain JS, same-origin API only.
"use strict";

const K = 10;
const AGE = [1, 120];
const ratings = new Map(); // item_id -> {rating, title, year, genres}
const $ = (id) => document.getElementById(id);
let pending = 0;
let occupations = []; // the values the model knows (GET /v1/model user_values)

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function describe(item) {
  // MovieLens titles usually end with their year already: "Vertigo (1958)"
  const year = item.year && !/\(\d{4}\)\s*$/.test(item.title) ? ` (${item.year})` : "";
  return `${item.title}${year}`;
}

const starText = (value) => `${Number.isInteger(value) ? value : value.toFixed(1)}★`;

// "Because you rated Star Wars (1977) 5★ and Fargo (1996) 4★"; "" without support items.
function reasonText(because) {
  if (!Array.isArray(because) || !because.length) return "";
  const parts = because.map((b) => `${describe(b)} ${starText(b.rating)}`);
  const last = parts.pop();
  return `Because you rated ${parts.length ? `${parts.join(", ")} and ${last}` : last}`;
}

// Stars as a WAI-ARIA radio group: one tab stop (the rated star, else 1★); arrows move the
// focus only; Space, Enter or a click rates. No request until a star is chosen.
function stars(item, where) {
  const group = el("div", { class: "stars", role: "radiogroup", "data-item-id": String(item.item_id),
    "aria-label": `Your rating of ${describe(item)}` });
  for (let value = 1; value <= 5; value++) {
    const star = el("button", { type: "button", role: "radio", id: `${where}-${item.item_id}-${value}`,
      "data-value": String(value), "aria-label": `${value} star${value > 1 ? "s" : ""}`, text: "★" });
    star.addEventListener("click", () => rate(item, value));
    group.append(star);
  }
  group.addEventListener("keydown", (event) => moveFocus(group, event));
  paint(group, ratings.get(item.item_id)?.rating);
  return group;
}

function moveFocus(group, event) {
  const buttons = [...group.querySelectorAll("button")];
  const at = buttons.indexOf(document.activeElement);
  const to = { ArrowRight: at + 1, ArrowUp: at + 1, ArrowLeft: at - 1, ArrowDown: at - 1,
    Home: 0, End: buttons.length - 1 }[event.key];
  if (to === undefined || at < 0) return;
  event.preventDefault();
  const next = buttons[Math.max(0, Math.min(buttons.length - 1, to))];
  for (const b of buttons) b.tabIndex = b === next ? 0 : -1;
  next.focus();
}

function paint(group, rating) {
  for (const star of group.querySelectorAll("button")) {
    const value = Number(star.dataset.value);
    star.setAttribute("aria-checked", String(value === rating));
    star.classList.toggle("on", rating !== undefined && value <= rating);
    star.tabIndex = value === (rating ?? 1) ? 0 : -1;
  }
}

function movieRow(item, where) {
  const info = el("div", {},
    el("div", { class: "title", text: describe(item) }),
    el("div", { class: "meta", text: (item.genres || []).join(", ") }));
  return el("li", { class: "movie", "data-item-id": String(item.item_id) }, info, stars(item, where));
}

function repaint(itemId) {
  const rating = ratings.get(itemId)?.rating;
  for (const group of document.querySelectorAll(`.stars[data-item-id="${itemId}"]`)) paint(group, rating);
}

function rate(item, value) {
  ratings.set(item.item_id, { rating: value, title: item.title, year: item.year, genres: item.genres });
  repaint(item.item_id);
  renderRated();
  refresh();
}

function unrate(itemIds) {
  for (const itemId of itemIds) { ratings.delete(itemId); repaint(itemId); }
  renderRated();
  refresh();
}

function renderRated() {
  const list = $("rated");
  list.replaceChildren();
  for (const [itemId, r] of ratings) {
    const clear = el("button", { type: "button", class: "small", "aria-label": `Remove your rating of ${describe(r)}`, text: "remove" });
    clear.addEventListener("click", () => unrate([itemId]));
    list.append(el("li", { class: "movie", "data-item-id": String(itemId) },
      el("span", { text: `${describe(r)} — ${"★".repeat(r.rating)}` }), clear));
  }
  if (!ratings.size) list.append(el("li", { class: "meta", text: "Nothing rated yet." }));
  $("clear-all").disabled = !ratings.size;
}

// The profile, or null when a field is invalid (its error is shown beside it).
function profile() {
  const user = {};
  const gender = $("gender").value;
  if (gender) user.gender = gender;
  const ageText = $("age").value.trim();
  const age = Number(ageText);
  const badAge = $("age").validity.badInput || (ageText && !(Number.isInteger(age) && age >= AGE[0] && age <= AGE[1]));
  fieldError("age", badAge ? `Age must be a whole number from ${AGE[0]} to ${AGE[1]}.` : "");
  if (ageText && !badAge) user.age = age;
  const job = $("occupation").value.trim();
  const known = occupations.find((o) => o.toLowerCase() === job.toLowerCase());
  const badJob = job && occupations.length && known === undefined;
  fieldError("occupation", badJob ? `“${job}” is not an occupation this model knows: pick one from the list or leave it empty.` : "");
  if (job && !badJob) user.occupation = known ?? job;
  const zip = $("zip").value.trim();
  if (zip) user.zip = zip;
  return badAge || badJob ? null : user;
}

function fieldError(name, message) {
  $(`${name}-error`).textContent = message;
  if (message) $(name).setAttribute("aria-invalid", "true");
  else $(name).removeAttribute("aria-invalid");
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  };
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw Object.assign(new Error("cannot reach the server"), { offline: true });
  }
  const data = await response.json().catch(() => ({ detail: `${response.status} ${response.statusText}` }));
  if (!response.ok) {
    const detail = Array.isArray(data.detail) ? data.detail[0] : { msg: data.detail };
    throw new Error(`${(detail.loc || []).slice(1).join(".")} ${detail.msg}`.trim());
  }
  return data;
}

function showStatus(text, problem = false) {
  $("status").textContent = text;
  $("status").classList.toggle("problem", problem);
  $("retry").hidden = !problem;
  $("recs").classList.toggle("stale", problem);
  if (problem) $("recs").setAttribute("data-stale", "true");
  else $("recs").removeAttribute("data-stale");
}

function recommendation(item, rank) {
  const reason = reasonText(item.because);
  const what = el("div", { class: "what" },
    el("div", { class: "title", text: describe(item) }),
    el("div", { class: "meta", text: (item.genres || []).join(", ") }));
  if (reason) what.append(el("div", { class: "why", text: reason }));
  return el("li", { "data-item-id": String(item.item_id), "data-score": String(item.score) },
    el("span", { class: "rank", "aria-hidden": "true", text: String(rank) }), what,
    el("span", { class: "score", "aria-label": `predicted rating ${item.score.toFixed(1)} of 5`, text: `${item.score.toFixed(2)} ★` }));
}

async function refresh() {
  const mine = ++pending;
  const user = profile();
  if (user === null) {
    showStatus("Not updated: correct the highlighted field in “About you”.", true);
    $("retry").hidden = true;
    return;
  }
  const body = { user, ratings: [...ratings].map(([item_id, r]) => ({ item_id, rating: r.rating })), k: K, exclude_rated: true };
  $("status").textContent = "Updating…";
  try {
    const data = await api("/v1/recommendations", body);
    if (mine !== pending) return; // a newer rating's answer is on its way
    $("recs").replaceChildren(...data.items.map((item, i) => recommendation(item, i + 1)));
    $("recs").setAttribute("data-ratings", String(body.ratings.length));
    showStatus(ratings.size
      ? `Based on your ${ratings.size} rating${ratings.size > 1 ? "s" : ""}.`
      : "Rate a movie to personalise these (now: popular with people like you).");
  } catch (error) {
    if (mine !== pending) return;
    const stale = $("recs").children.length ? " The list below is from before your last change." : "";
    showStatus(error.offline
      ? `You seem to be offline: the server cannot be reached.${stale}`
      : `Could not update: ${error.message}.${stale}`, true);
  }
}

let searchTimer = 0;
async function search() {
  const text = $("search").value.trim();
  const list = $("results");
  if (!text) { list.replaceChildren(); return; }
  try {
    const page = await api(`/v1/items?limit=8&search=${encodeURIComponent(text)}`);
    list.replaceChildren(...page.items.map((item) => movieRow(item, "found")));
    if (!page.items.length) list.append(el("li", { class: "meta", text: "No movie with that title." }));
  } catch (error) {
    list.replaceChildren(el("li", { class: "meta", text: `Search failed: ${error.message}` }));
  }
}

let ready = false; // onboarding and model info loaded

async function load() {
  try {
    const [onboarding, model] = await Promise.all([api("/v1/onboarding?n=12"), api("/v1/model")]);
    $("onboarding").replaceChildren(...onboarding.items.map((item) => movieRow(item, "ask")));
    occupations = model.user_values?.occupation || [];
    $("occupations").replaceChildren(...occupations.map((o) => el("option", { value: o })));
    $("footer").textContent = `melu · model ${model.version} · ${model.dataset} · ${model.n_items} movies`;
  } catch (error) {
    showStatus(`The service is not ready: ${error.message}.`, true);
    return;
  }
  ready = true;
  refresh();
}

function start() {
  $("search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(search, 200); });
  $("profile").addEventListener("change", refresh);
  $("profile").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
  $("clear-all").addEventListener("click", () => unrate([...ratings.keys()]));
  $("retry").addEventListener("click", () => (ready ? refresh() : load()));
  renderRated();
  load();
}

start();
