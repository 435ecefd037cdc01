// The onboarding page: rate movies, see recommendations. Plain JS, same-origin API only.
"use strict";

const K = 10;
const ratings = new Map(); // item_id -> {rating, title, year}
const $ = (id) => document.getElementById(id);
let pending = 0;

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

// Five radio buttons in a fieldset named after the movie: arrow keys move, space picks.
function stars(item, where) {
  const group = el("fieldset", { class: "stars", "data-item-id": String(item.item_id) });
  group.append(el("legend", { text: `Your rating of ${describe(item)}` }));
  for (let value = 5; value >= 1; value--) {
    const id = `${where}-${item.item_id}-${value}`;
    const input = el("input", { type: "radio", id, name: `${where}-${item.item_id}`, value: String(value) });
    if (ratings.get(item.item_id)?.rating === value) input.checked = true;
    input.addEventListener("change", () => rate(item, value));
    const label = el("label", { for: id, title: `${value} star${value > 1 ? "s" : ""}`, text: "★" });
    label.append(el("span", { class: "sr", style: "position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)", text: ` ${value} star${value > 1 ? "s" : ""}` }));
    group.append(input, label);
  }
  return group;
}

function movieRow(item, where) {
  const info = el("div", {},
    el("div", { class: "title", text: describe(item) }),
    el("div", { class: "meta", text: (item.genres || []).join(", ") }));
  return el("li", { class: "movie", "data-item-id": String(item.item_id) }, info, stars(item, where));
}

function rate(item, value) {
  ratings.set(item.item_id, { rating: value, title: item.title, year: item.year, genres: item.genres });
  for (const input of document.querySelectorAll(`fieldset[data-item-id="${item.item_id}"] input`)) {
    input.checked = Number(input.value) === value;
  }
  renderRated();
  refresh();
}

function unrate(itemId) {
  ratings.delete(itemId);
  for (const input of document.querySelectorAll(`fieldset[data-item-id="${itemId}"] input`)) {
    input.checked = false;
  }
  renderRated();
  refresh();
}

function renderRated() {
  const list = $("rated");
  list.replaceChildren();
  for (const [itemId, r] of ratings) {
    const clear = el("button", { type: "button", class: "clear", "aria-label": `Remove your rating of ${describe(r)}`, text: "remove" });
    clear.addEventListener("click", () => unrate(itemId));
    list.append(el("li", { class: "movie", "data-item-id": String(itemId) },
      el("span", { text: `${describe(r)} — ${"★".repeat(r.rating)}` }), clear));
  }
  if (!ratings.size) list.append(el("li", { class: "meta", text: "Nothing rated yet." }));
}

function profile() {
  const user = {};
  const gender = $("gender").value;
  if (gender) user.gender = gender;
  const age = parseInt($("age").value, 10);
  if (Number.isInteger(age) && age > 0 && age <= 150) user.age = age;
  for (const name of ["occupation", "zip"]) {
    const value = $(name).value.trim();
    if (value) user[name] = value.slice(0, 64);
  }
  return user;
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, init);
  const data = await response.json();
  if (!response.ok) {
    const detail = Array.isArray(data.detail) ? data.detail[0] : { msg: data.detail };
    throw new Error(`${(detail.loc || []).slice(1).join(".")} ${detail.msg}`.trim());
  }
  return data;
}

async function refresh() {
  const mine = ++pending;
  const body = {
    user: profile(),
    ratings: [...ratings].map(([item_id, r]) => ({ item_id, rating: r.rating })),
    k: K,
    exclude_rated: true,
  };
  $("status").textContent = "Updating…";
  try {
    const data = await api("/v1/recommendations", body);
    if (mine !== pending) return; // a newer rating's answer is on its way
    const list = $("recs");
    list.replaceChildren();
    for (const item of data.items) {
      list.append(el("li", { "data-item-id": String(item.item_id), "data-score": String(item.score) },
        el("span", { text: describe(item) }),
        el("span", { class: "score", "aria-label": `predicted rating ${item.score.toFixed(1)} of 5`, text: `${item.score.toFixed(2)} ★` })));
    }
    $("recs").setAttribute("data-ratings", String(body.ratings.length));
    $("status").textContent = ratings.size
      ? `Based on your ${ratings.size} rating${ratings.size > 1 ? "s" : ""}.`
      : "Rate a movie to personalise these (now: popular with people like you).";
  } catch (error) {
    if (mine === pending) $("status").textContent = `Could not update: ${error.message}`;
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

async function start() {
  $("search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(search, 200); });
  $("profile").addEventListener("change", refresh);
  $("profile").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
  renderRated();
  try {
    const [onboarding, model] = await Promise.all([api("/v1/onboarding?n=12"), api("/v1/model")]);
    $("onboarding").replaceChildren(...onboarding.items.map((item) => movieRow(item, "ask")));
    $("footer").textContent = `melu · model ${model.version} · ${model.dataset} · ${model.n_items} movies`;
  } catch (error) {
    $("status").textContent = `The service is not ready: ${error.message}`;
    return;
  }
  refresh();
}

start();
