"use strict";
// The served models on the web page. A server with several (GET /server_status lists them
// under models, the first the default) gets a selector in the header; choosing one rebuilds
// the form from that model's request schema (GET /v1/models/{name}/schema; the first's from
// the OpenAPI document, as on a server of one) and sends its name as the job's model. A job
// of the first model leaves model out, as on a server of one; the adapters (LoRA) are the
// first model's only, so only its form offers them. Loaded before app.js, whose helpers
// (api, json, resolve, requestBody, buildForm, $) these functions call once the page has
// started. Server data goes in as text only (Option's text and value).

const MODEL_FIELD = "model"; // the request field naming the served model

// The served models' names, the first the default ([] from a server that lists none).
// /server_status answers 503 while no group is ready, with the same body.
async function servedModels() {
  const response = await api("/server_status", { headers: { Accept: "application/json" } });
  if (!response.ok && response.status !== 503) throw new Error(`server status: ${response.status}`);
  return ((await json(response)).models || []).map((model) => String(model.name));
}

// A hub id's name has one "/" (owner/name): each part is a segment of its own.
function schemaPath(name) {
  return `/v1/models/${name.split("/").map(encodeURIComponent).join("/")}/schema`;
}

// The document and request body the form of model `name` is built from.
async function modelSchema(name) {
  if (name === page.models[0]) return { doc: page.doc, body: requestBody(page.doc) };
  const response = await api(schemaPath(name), { headers: { Accept: "application/json" } });
  const schema = await json(response);
  if (!response.ok) throw new Error(`schema of ${name}: ${response.status} ${schema.error || ""}`);
  // Its $refs point into $defs: the same lookup as the OpenAPI document's components.
  const doc = { components: { schemas: schema.$defs || {} } };
  return { doc, body: resolve(doc, schema) };
}

// The selector, shown when there is a choice; the header names the model otherwise.
function offerModels(names) {
  page.models = names;
  const select = $("model-select");
  select.replaceChildren(...names.map((name) => new Option(name, name)));
  $("model-choice").hidden = names.length < 2;
  $("model").hidden = names.length >= 2;
}

// Builds the form of model `name` (null: the first). A model chosen while another's schema
// was still on its way wins: the older answer is dropped.
async function chooseModel(name) {
  const chosen = name ?? page.models[0] ?? null;
  const asked = ++page.choosing;
  const { doc, body } = chosen === null ? { doc: page.doc, body: requestBody(page.doc) } : await modelSchema(chosen);
  if (asked !== page.choosing) return;
  buildForm(doc, body);
  clearErrors();
  if (chosen === null || chosen === page.models[0]) await offerAdapters(doc, body);
  page.model = chosen;
  $("model-select").value = chosen ?? "";
}

// The job's model: named unless it is the first (the server's default).
function withModel(inputs) {
  return page.model && page.model !== page.models[0] ? { ...inputs, [MODEL_FIELD]: page.model } : inputs;
}

document.getElementById("model-select").addEventListener("change", (event) => run(() => chooseModel(event.target.value)));
