"use strict";
// The adapters (LoRA) on the web page: when the server offers some (GET /v1/loras answers
// 200 and lists at least one), the form's "loras" field lists them, each with a checkbox and
// a scale (a number, default 1); the ones ticked go in the job's body as
// loras: [{name, scale}]. Where the route is absent (404: the model applies no adapters) or
// lists none, the field is left off the form. The job shown says which adapters it applies.
// Loaded before app.js, whose helpers (api, json, flatten, $) these functions call once the
// page has started. Server data goes in as text only (textContent, attributes).

const ADAPTERS = "loras"; // the request field

// The scale's schema (limits, default) from the request schema's loras items.
function scaleSchema(doc, field) {
  const list = flatten(doc, field);
  const item = flatten(doc, list.items || {});
  return flatten(doc, (item.properties || {}).scale || {});
}

// The loras field, when the request schema has one and the server offers adapters.
async function offerAdapters(doc, body) {
  const field = (body.properties || {})[ADAPTERS];
  if (!field) return;
  const response = await api("/v1/loras", { headers: { Accept: "application/json" } });
  if (!response.ok) return; // 404: this model applies none
  const names = ((await json(response)).data || []).map((item) => String(item.name));
  if (!names.length) return;
  const scale = scaleSchema(doc, field);
  const row = document.createElement("fieldset");
  row.className = "field field-loras";
  row.id = `field-${ADAPTERS}`;
  row.tabIndex = -1; // a 400 about it moves the focus here
  row.setAttribute("aria-describedby", `hint-${ADAPTERS} error-${ADAPTERS}`);
  const legend = document.createElement("legend");
  legend.textContent = ADAPTERS;
  const items = names.map((name) => adapterRow(name, scale));
  const hint = document.createElement("small");
  hint.id = `hint-${ADAPTERS}`;
  hint.className = "hint";
  const range = scale.minimum !== undefined && scale.maximum !== undefined ? `, ${scale.minimum} to ${scale.maximum}` : "";
  hint.textContent = `adapters (LoRA): tick one or more, each at its scale (a number${range}; 1: as trained)`;
  const error = document.createElement("p");
  error.id = `error-${ADAPTERS}`;
  error.className = "field-error error";
  error.setAttribute("role", "alert");
  row.append(legend, ...items.map((item) => item.element), hint, error);
  $("fields").append(row);
  page.fields.set(ADAPTERS, { kind: "loras", input: row, error, collect: () => chosenAdapters(items) });
}

// One adapter: a checkbox named after it and its scale.
function adapterRow(name, scale) {
  const element = document.createElement("div");
  element.className = "adapter";
  const check = document.createElement("input");
  check.type = "checkbox";
  check.id = `lora-${name}`;
  check.value = name;
  const label = document.createElement("label");
  label.htmlFor = check.id;
  label.textContent = name;
  const value = document.createElement("input");
  value.type = "number";
  value.id = `lora-scale-${name}`;
  value.step = "any";
  if (scale.minimum !== undefined) value.min = scale.minimum;
  if (scale.maximum !== undefined) value.max = scale.maximum;
  value.value = scale.default ?? 1;
  value.setAttribute("aria-label", `scale of ${name}`);
  element.append(check, label, value);
  return { name, check, value, element };
}

// The body's loras: the ticked adapters in the order listed; undefined when none is ticked.
function chosenAdapters(items) {
  const chosen = items.filter((item) => item.check.checked);
  if (!chosen.length) return undefined;
  return chosen.map(({ name, value }) => {
    const text = value.value.trim();
    return text === "" ? { name } : { name, scale: Number(text) }; // empty: the server's default
  });
}

// The adapters the shown job applies, under its state.
function showJobAdapters(view) {
  const loras = view.loras || [];
  $("job-loras").textContent = loras.length
    ? `Adapters: ${loras.map((lora) => `${lora.name} × ${lora.scale}`).join(", ")}`
    : "";
  $("job-loras").hidden = !loras.length;
}
