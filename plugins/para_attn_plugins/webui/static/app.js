"use strict";
// para-attn-server's web page: a form built from the server's OpenAPI document, one job
// followed through its event stream (progress, previews, then the output), and the list
// of jobs. Every request carries the API key, if the server wants one, as a header: the
// event stream is read with fetch() (EventSource cannot send headers), and outputs and
// previews are fetched as blobs, so the key never goes into a URL (nor into a log).
// A picture or video field (its schema says so with contentMediaType and its kind as format)
// is a file picker that also takes a drop or a paste; the file goes in the JSON
// body as a data: URL, and "Use as input" puts a finished job's image there as job:<id>.
// The adapters (LoRA) the server offers are a field of their own: adapters.js. The hosts
// and their worker groups, refreshed with the list of jobs: hosts.js. A server of several
// models gets a selector that rebuilds the form for the model chosen: models.js.

const KEY = "para-attn-server.api-key";
const TERMINAL = new Set(["succeeded", "failed", "cancelled", "expired"]);
// A path on the server, where the server posts the job's events (the webhooks plugin), and
// which served model runs it (the selector's: models.js): the server's own fields, not the
// model's, and not a form's text.
const SKIPPED = new Set(["output_path", "webhook", "webhook_events_filter", "model"]);
const MEDIA_KINDS = new Set(["image", "mask", "video"]);
const LIST_LIMIT = 20;
const REFRESH_MS = 2000;
const $ = (id) => document.getElementById(id);

const page = {
  doc: null, // the OpenAPI document (the first model's request body)
  models: [], // the served models' names, the first the default (models.js)
  model: null, // the model whose form is shown
  choosing: 0, // counts the models chosen: a schema that arrives late is dropped
  fields: new Map(), // name -> {kind, nullable, required, input, error, media?, values?, thumbs?}
  job: null, // the job view shown
  stream: null, // AbortController of the shown job's event stream
  cancelling: null, // id of the job whose cancel was sent
  urls: {}, // object URLs by slot ("preview", "result"), revoked when replaced
  previewStep: -1,
  previewWanted: null, // {id, step, url} of the newest preview not yet fetched
  previewLoading: false,
  mine: new Map(), // jobs submitted from this page, the list when the server lists none
  listing: true, // false once GET /v1/jobs answered 404/405
};

class Unauthorized extends Error {}

// ---- HTTP ----------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = new Headers(options.headers);
  const key = sessionStorage.getItem(KEY);
  if (key) headers.set("Authorization", `Bearer ${key}`);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    askForKey(key ? "The server refused that key." : "");
    throw new Unauthorized();
  }
  return response;
}

async function json(response) {
  try {
    return await response.json();
  } catch {
    return {};
  }
}

// Runs an async action; a 401 already asked for the key, anything else is shown.
function run(action) {
  return action().catch((error) => {
    if (error instanceof Unauthorized || error.name === "AbortError") return;
    $("page-error").textContent = String(error.message || error);
    $("page-error").hidden = false;
  });
}

// Server-Sent Events from a fetch() body: yields {event, data} per message.
async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = "";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    // Lines end in \r\n, \n or \r; a \r last in the buffer may be half of a \r\n.
    const lines = buffer.split(/\r\n|\n|\r(?!$)/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (data.length) yield { event: event || "message", data: data.join("\n") };
        event = "";
        data = [];
        continue;
      }
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (name === "event") event = text;
      else if (name === "data") data.push(text);
    }
  }
}

// ---- the API key ---------------------------------------------------------------------

function askForKey(message) {
  stopStream();
  $("main").hidden = true;
  $("key-panel").hidden = false;
  $("key-error").textContent = message;
  $("api-key").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("api-key").value);
  $("api-key").value = "";
  $("key-panel").hidden = true;
  run(start);
});

// ---- the form, from the OpenAPI document ---------------------------------------------

function resolve(doc, schema) {
  while (schema && schema.$ref) schema = doc.components.schemas[schema.$ref.split("/").pop()];
  return schema || {};
}

// A property's schema with Optional[X] (X or null) folded into X, and `nullable` set.
function flatten(doc, schema) {
  const { oneOf, anyOf, ...outer } = resolve(doc, schema);
  let inner = {};
  let nullable = false;
  if (oneOf || anyOf) {
    const choices = (oneOf || anyOf).map((choice) => resolve(doc, choice));
    const rest = choices.filter((choice) => choice.type !== "null");
    nullable = rest.length < choices.length;
    inner = rest.length === 1 ? rest[0] : { type: "json" };
  }
  const merged = { ...inner, ...outer };
  if (Array.isArray(merged.type)) {
    nullable ||= merged.type.includes("null");
    const types = merged.type.filter((type) => type !== "null");
    merged.type = types.length === 1 ? types[0] : "json";
  }
  if (merged.const !== undefined) merged.enum = [merged.const];
  return { ...merged, nullable };
}

// The kind of picture or video a string schema takes ("image", "mask", "video"), or null.
function mediaMark(schema) {
  const mark = schema.contentMediaType ? schema.format : undefined;
  return MEDIA_KINDS.has(mark) ? mark : null;
}

// {kind, many, accept} for a picture or video field (one, or a list of them), else null.
function mediaOf(doc, schema) {
  const one = mediaMark(schema);
  if (one) return { kind: one, many: false, accept: schema.contentMediaType };
  if (schema.type === "array" && schema.items) {
    const item = flatten(doc, schema.items);
    const kind = mediaMark(item);
    if (kind) return { kind, many: true, accept: item.contentMediaType };
  }
  return null;
}

function kindOf(schema, media) {
  if (media) return "media";
  if (schema.enum) return "enum";
  return ["string", "integer", "number", "boolean"].includes(schema.type) ? schema.type : "json";
}

// Bounds such as 2**63 - 1 lose their last digits as JS numbers: show them rounded.
const number = (n) => (Math.abs(n) >= 1e15 ? n.toExponential(2) : String(n));

function limits(schema, kind, media) {
  const parts = [];
  if (media) {
    const what = media.kind === "video" ? "a video" : media.kind === "mask" ? "a mask picture" : "a picture";
    const files = media.many ? `${what}, or several` : what;
    return `${files}: choose a file, drop it here or paste it`;
  }
  if (kind === "enum") parts.push(`one of ${schema.enum.join(", ")}`);
  else if (kind === "json") parts.push(`JSON (${schema.type || "any"})`);
  else parts.push(kind === "string" ? "text" : kind);
  const [min, max] = [schema.minimum ?? schema.exclusiveMinimum, schema.maximum ?? schema.exclusiveMaximum];
  if (min !== undefined && max !== undefined) parts.push(`${number(min)} to ${number(max)}`);
  else if (min !== undefined) parts.push(`at least ${number(min)}`);
  else if (max !== undefined) parts.push(`at most ${number(max)}`);
  if (schema.multipleOf !== undefined) parts.push(`a multiple of ${schema.multipleOf}`);
  if (schema.minLength) parts.push(`at least ${schema.minLength} characters`);
  if (schema.maxLength !== undefined) parts.push(`up to ${schema.maxLength} characters`);
  if (schema.default !== undefined && schema.default !== null) parts.push(`default ${JSON.stringify(schema.default)}`);
  return parts.join("; ") + (schema.description ? `. ${schema.description}` : "");
}

function makeInput(name, schema, kind) {
  let input;
  if (kind === "enum") {
    input = document.createElement("select");
    // Option values are JSON; "(none)" has an empty one, so the field is left out.
    if (schema.nullable) input.add(new Option("(none)", ""));
    for (const value of schema.enum) input.add(new Option(String(value), JSON.stringify(value)));
    if (schema.default !== undefined) input.value = JSON.stringify(schema.default);
  } else if (kind === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = schema.default === true;
  } else if (kind === "integer" || kind === "number") {
    input = document.createElement("input");
    input.type = "number";
    if (schema.minimum !== undefined) input.min = schema.minimum;
    if (schema.maximum !== undefined) input.max = schema.maximum;
    input.step = schema.multipleOf ?? (kind === "integer" ? 1 : "any");
    if (schema.default != null) input.value = schema.default;
  } else if (kind === "string") {
    input = document.createElement(name.includes("prompt") ? "textarea" : "input");
    if (schema.maxLength !== undefined) input.maxLength = schema.maxLength;
    if (schema.default != null) input.value = schema.default;
  } else {
    input = document.createElement("textarea");
    if (schema.default !== undefined) input.value = JSON.stringify(schema.default);
  }
  input.id = `field-${name}`;
  input.name = name;
  return input;
}

// ---- picture and video fields ---------------------------------------------------------

// The file picker of a media field, in a zone that also takes a dropped or pasted file,
// with a thumbnail of each value and a Clear button.
function makeMediaInput(name, media, field) {
  const zone = document.createElement("div");
  zone.className = "media-zone";
  zone.id = `zone-${name}`;
  zone.tabIndex = 0; // focusable, so a paste can target it
  const input = document.createElement("input");
  input.type = "file";
  input.accept = media.kind === "video" ? "video/*,image/gif" : media.accept || "image/*";
  input.multiple = media.many;
  const thumbs = document.createElement("div");
  thumbs.className = "thumbs";
  thumbs.id = `thumbs-${name}`;
  const clear = document.createElement("button");
  clear.type = "button";
  clear.className = "clear";
  clear.id = `clear-${name}`;
  clear.textContent = "Clear";
  clear.hidden = true;
  clear.setAttribute("aria-label", `Clear ${name}`);
  zone.append(input, thumbs, clear);
  Object.assign(field, { input, zone, thumbs, clear, media, values: [] });

  input.addEventListener("change", () => run(() => addFiles(field, [...input.files])));
  clear.addEventListener("click", () => setMedia(field, []));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    run(() => addFiles(field, [...(event.dataTransfer?.files || [])]));
  });
  return zone;
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// Files chosen, dropped or pasted: each sent as a data: URL (a list field keeps adding).
async function addFiles(field, files) {
  if (!files.length) return;
  const chosen = field.media.many ? files : files.slice(0, 1);
  const values = [];
  for (const file of chosen) {
    const value = await readAsDataUrl(file);
    values.push({ value, url: URL.createObjectURL(file), type: file.type, label: file.name });
  }
  setMedia(field, field.media.many ? [...field.values, ...values] : values);
  field.input.value = ""; // the values are kept here; choosing the same file again still fires
}

// A media field's values: each {value (what the body sends), url (its thumbnail), type, label}.
function setMedia(field, values) {
  for (const old of field.values) if (!values.includes(old)) URL.revokeObjectURL(old.url);
  field.values = values;
  field.error.textContent = "";
  field.input.removeAttribute("aria-invalid");
  field.thumbs.replaceChildren(...values.map((item) => thumbnail(item, field.media.kind)));
  field.clear.hidden = values.length === 0;
}

function thumbnail(item, kind) {
  const figure = document.createElement("figure");
  figure.className = "thumb";
  const video = kind === "video" && !(item.type || "").startsWith("image/");
  const element = document.createElement(video ? "video" : "img");
  element.src = item.url;
  if (video) element.muted = true;
  else element.alt = item.label;
  const caption = document.createElement("figcaption");
  caption.textContent = item.label;
  figure.append(element, caption);
  return figure;
}

// The media field a file of this type goes to when it is pasted outside any field: the
// one that holds the focus, else the first empty one of its kind, else the first of its kind.
function pasteTarget(type) {
  const fields = [...page.fields.values()].filter((field) => field.media);
  const focused = fields.find((field) => field.zone.contains(document.activeElement));
  if (focused) return focused;
  const video = type.startsWith("video/");
  const fits = fields.filter((field) => (field.media.kind === "video") === video);
  return fits.find((field) => field.values.length === 0) || fits[0] || null;
}

document.addEventListener("paste", (event) => {
  const files = [...(event.clipboardData?.files || [])];
  if (!files.length || $("main").hidden) return;
  // Text pasted into a text field stays text there, even when the clipboard holds a picture too.
  const typing = document.activeElement?.matches("textarea, input:not([type=file])");
  if (typing && event.clipboardData.types.includes("text/plain")) return;
  const field = pasteTarget(files[0].type || "");
  if (!field) return;
  event.preventDefault();
  run(() => addFiles(field, files));
});

// A file dropped beside a field would make the browser open it, leaving the page.
for (const type of ["dragover", "drop"]) {
  document.addEventListener(type, (event) => {
    if (event.dataTransfer?.types.includes("Files")) event.preventDefault();
  });
}

// The first field that takes a picture (named "image" first, as diffusers names it).
function imageField() {
  const fields = [...page.fields.entries()].filter(([, field]) => field.media?.kind === "image");
  const named = fields.find(([name]) => name === "image");
  return (named || fields[0] || [])[1] || null;
}

// "Use as input": the job's output (already fetched) as job:<id> in the first picture field.
function useAsInput(view, blob) {
  const field = imageField();
  if (!field) return;
  const label = `job ${view.id.slice(0, 8)}`;
  const item = { value: `job:${view.id}`, url: URL.createObjectURL(blob), type: blob.type, label };
  setMedia(field, field.media.many ? [...field.values, item] : [item]);
  field.zone.scrollIntoView({ block: "nearest" });
  field.zone.focus();
}

// The schema of POST /v1/jobs's JSON body.
function requestBody(doc) {
  return resolve(doc, doc.paths["/v1/jobs"].post.requestBody.content["application/json"].schema);
}

function buildForm(doc, body = requestBody(doc)) {
  $("model").textContent = (body.title || "").replace(/Input$/, "");
  const required = new Set(body.required || []);
  // The adapters are offered apart, when the server lists some (adapters.js).
  const names = Object.keys(body.properties || {}).filter((name) => !SKIPPED.has(name) && name !== ADAPTERS);
  names.sort((a, b) => (b === "prompt") - (a === "prompt")); // the prompt first, the rest in order
  const container = $("fields");
  container.replaceChildren();
  for (const field of page.fields.values()) if (field.media) setMedia(field, []);
  page.fields.clear();
  for (const name of names) {
    const schema = flatten(doc, body.properties[name]);
    const media = mediaOf(doc, schema);
    const kind = kindOf(schema, media);
    const row = document.createElement("div");
    row.className = `field field-${kind}`;
    const label = document.createElement("label");
    label.htmlFor = `field-${name}`;
    label.textContent = name + (required.has(name) ? " (required)" : "");
    const hint = document.createElement("small");
    hint.id = `hint-${name}`;
    hint.className = "hint";
    hint.textContent = limits(schema, kind, media);
    const error = document.createElement("p");
    error.id = `error-${name}`;
    error.className = "field-error error";
    error.setAttribute("role", "alert");
    const field = { kind, nullable: schema.nullable, required: required.has(name), error };
    const control = media ? makeMediaInput(name, media, field) : makeInput(name, schema, kind);
    field.input ??= control;
    field.input.id = `field-${name}`;
    field.input.name = name;
    field.input.setAttribute("aria-describedby", `hint-${name} error-${name}`);
    row.append(label, control, hint, error);
    container.append(row);
    page.fields.set(name, field);
  }
}

class FieldError extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

// The request body: every field the user filled in; empty optional fields are left out
// (the server's default applies).
function collect() {
  const inputs = {};
  for (const [name, field] of page.fields) {
    const { kind, input } = field;
    if (field.collect) {
      const value = field.collect(); // a field of its own making (the adapters)
      if (value !== undefined) inputs[name] = value;
      continue;
    }
    if (kind === "media") {
      // Left out when empty: the server's default applies, or it names a required field.
      const values = field.values.map((item) => item.value);
      if (values.length) inputs[name] = field.media.many ? values : values[0];
      continue;
    }
    if (kind === "boolean") {
      inputs[name] = input.checked;
      continue;
    }
    const text = input.value;
    const empty = text.trim() === "";
    if (kind === "string" && !(empty && field.nullable)) inputs[name] = text;
    else if (empty) continue;
    else if (kind === "integer" || kind === "number") inputs[name] = Number(text);
    else {
      try {
        inputs[name] = JSON.parse(text); // enum options hold JSON too
      } catch {
        throw new FieldError(name, "not valid JSON");
      }
    }
  }
  return inputs;
}

function clearErrors() {
  $("form-error").textContent = "";
  for (const field of page.fields.values()) {
    field.error.textContent = "";
    field.input.removeAttribute("aria-invalid");
  }
}

function showFieldError(name, message) {
  const field = page.fields.get(name.split("[")[0]); // images[1]: the second of a list
  field.error.textContent = message;
  field.input.setAttribute("aria-invalid", "true");
  field.input.focus();
}

async function submit() {
  clearErrors();
  let inputs;
  try {
    inputs = collect();
  } catch (error) {
    if (!(error instanceof FieldError)) throw error;
    showFieldError(error.field, error.message);
    return;
  }
  $("generate").disabled = true;
  try {
    const response = await api("/v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(withModel(inputs)),
    });
    const body = await json(response);
    if (response.status === 201) {
      page.mine.set(body.id, body);
      watch(body);
      await refreshJobs();
    } else if (response.status === 400 && page.fields.has(String(body.field).split("[")[0])) {
      showFieldError(body.field, body.error);
    } else {
      const retry = response.headers.get("Retry-After");
      const after = retry ? ` (retry in ${retry} s)` : "";
      $("form-error").textContent = `${response.status}: ${body.error || response.statusText}${after}`;
    }
  } finally {
    $("generate").disabled = false;
  }
}

$("job-form").addEventListener("submit", (event) => {
  event.preventDefault();
  run(submit);
});

// ---- one job: state, progress, preview, output ---------------------------------------

function stopStream() {
  if (page.stream) page.stream.abort();
  page.stream = null;
}

function setUrl(slot, blob) {
  if (page.urls[slot]) URL.revokeObjectURL(page.urls[slot]);
  page.urls[slot] = blob ? URL.createObjectURL(blob) : null;
  return page.urls[slot];
}

function watch(view) {
  stopStream();
  setUrl("preview", null);
  setUrl("result", null);
  page.previewStep = -1;
  page.previewWanted = null;
  $("preview-box").hidden = true;
  $("result-box").hidden = true;
  $("result").replaceChildren();
  $("progress").value = 0;
  $("progress-text").textContent = "";
  $("job-empty").hidden = true;
  $("job-detail").hidden = false;
  page.job = null;
  showJob(view);
  const controller = new AbortController();
  page.stream = controller;
  run(() => follow(view.id, controller.signal));
}

// The job's event stream until the job ends. A stream can end early (a proxy's timeout, a
// server restart, a dropped connection): then the page asks how the job stands and, while
// it has not ended, opens the stream again a second later.
async function follow(id, signal) {
  const ended = () => signal.aborted || page.job?.id !== id || TERMINAL.has(page.job.state);
  while (!ended()) {
    const response = await api(`/v1/jobs/${id}/events`, { signal, headers: { Accept: "text/event-stream" } });
    if (!response.ok) throw new Error(`events of job ${id}: ${response.status} ${(await json(response)).error || ""}`);
    try {
      for await (const { event, data } of readEvents(response.body)) {
        if (signal.aborted) return;
        const message = JSON.parse(data);
        if (event === "state") showJob(message);
        else if (event === "progress") showJob({ ...page.job, step: message.step, total: message.total });
        else if (event === "preview") showPreview(id, message);
      }
    } catch (error) {
      if (!(error instanceof TypeError)) throw error; // TypeError: the connection dropped
    }
    if (ended()) return;
    showJob(await json(await api(`/v1/jobs/${id}`, { signal })));
    if (!ended()) await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function showJob(view) {
  if (!view.id || (page.job && page.job.id !== view.id)) return;
  // An ended job stays ended: a view sent before it ended (Cancel's answer, sent while the
  // job still ran) can arrive after the event that says it ended.
  if (page.job && TERMINAL.has(page.job.state) && !TERMINAL.has(view.state)) return;
  const first = !page.job || page.job.state !== view.state;
  page.job = view;
  if (page.mine.has(view.id)) page.mine.set(view.id, view);
  $("job-id").textContent = view.id;
  $("job-state").textContent = view.state;
  $("job-state").dataset.state = view.state;
  $("job-error").textContent = view.error || "";
  showJobAdapters(view);
  $("cancel").disabled = TERMINAL.has(view.state) || page.cancelling === view.id;
  if (view.step != null) showProgress(view.step, view.total);
  else $("progress-text").textContent = progressText(view);
  if (first) {
    renderRow(view);
    if (view.state === "succeeded") run(() => showOutput(view));
  }
}

function showProgress(step, total) {
  if (total) {
    $("progress").max = total;
    $("progress").value = step;
    $("progress-text").textContent = `${step} of ${total}`;
  } else {
    $("progress").removeAttribute("value"); // indeterminate
    $("progress-text").textContent = `step ${step}`;
  }
}

// One preview request at a time, for the newest preview only: a browser holds six
// connections to a host, and preview downloads that pile up would starve Cancel.
function showPreview(id, message) {
  page.previewWanted = { id, ...message };
  if (!page.previewLoading) run(loadPreviews);
}

async function loadPreviews() {
  page.previewLoading = true;
  try {
    while (page.previewWanted) {
      const { id, step, url } = page.previewWanted;
      page.previewWanted = null;
      // A preview that arrives late (a later one shown, the job ended or changed) is dropped.
      const late = () => page.job?.id !== id || step <= page.previewStep || page.urls.result;
      if (late()) continue;
      const response = await api(url);
      const blob = await response.blob(); // read whole, so the connection is free again
      if (!response.ok || late()) continue;
      page.previewStep = step;
      $("preview").src = setUrl("preview", blob);
      $("preview-caption").textContent = `Preview after step ${step}`;
      $("preview-box").hidden = false;
    }
  } finally {
    page.previewLoading = false;
  }
}

async function showOutput(view) {
  const response = await api(view.output_url || `/v1/jobs/${view.id}/output`);
  if (!response.ok) throw new Error(`output of job ${view.id}: ${response.status} ${(await json(response)).error || ""}`);
  const blob = await response.blob();
  if (page.job?.id !== view.id) return;
  const url = setUrl("result", blob);
  const info = document.createElement("span");
  info.textContent = `${blob.type || "unknown type"}, ${blob.size} bytes. `;
  const link = document.createElement("a");
  link.href = url;
  link.download = `${view.id}.${view.file_type || "bin"}`;
  link.textContent = "Download";
  let element = null;
  if (blob.type.startsWith("image/")) {
    element = new Image();
    element.alt = `Output of job ${view.id}`;
    element.addEventListener("load", () => info.prepend(`${element.naturalWidth} × ${element.naturalHeight} `));
  } else if (blob.type.startsWith("video/")) {
    element = document.createElement("video");
    element.controls = true;
    element.addEventListener("loadedmetadata", () => info.prepend(`${element.videoWidth} × ${element.videoHeight} `));
  }
  if (element) {
    element.id = "output";
    element.src = url;
  }
  $("result").replaceChildren(...(element ? [element] : []));
  $("result-caption").replaceChildren(info, link);
  if (blob.type.startsWith("image/") && imageField()) {
    const use = document.createElement("button");
    use.type = "button";
    use.id = "use-as-input";
    use.className = "secondary";
    use.textContent = "Use as input";
    use.title = `Put job:${view.id} in the form's picture field`;
    use.addEventListener("click", () => useAsInput(view, blob));
    $("result-caption").append(" ", use);
  }
  $("preview-box").hidden = true;
  $("result-box").hidden = false;
}

$("cancel").addEventListener("click", () =>
  run(async () => {
    const job = page.job;
    if (!job) return;
    page.cancelling = job.id;
    $("cancel").disabled = true;
    // Cancelling twice is harmless, so a request lost with its connection (a kept-alive
    // socket the server had just closed) is sent again, at most three times.
    let response = null;
    for (let attempt = 1; !response; attempt++) {
      try {
        response = await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
      } catch (error) {
        if (!(error instanceof TypeError) || attempt === 3) throw error;
      }
    }
    const body = await json(response);
    if (response.ok) showJob(body);
    else $("job-error").textContent = `cancel: ${body.error || response.status}`;
  }),
);

// ---- the list of jobs ----------------------------------------------------------------

function progressText(view) {
  if (view.state === "queued") return view.queue_position ? `queued, ${view.queue_position} ahead` : "queued, next";
  if (view.step == null) return "";
  return view.total ? `${view.step} of ${view.total}` : `step ${view.step}`;
}

function makeRow(view) {
  const row = document.createElement("tr");
  row.dataset.jobId = view.id;
  const open = document.createElement("button");
  open.type = "button";
  open.className = "link";
  open.textContent = view.id.slice(0, 8);
  open.title = `Show job ${view.id}`;
  open.addEventListener("click", () => watch(view));
  const cells = [view.state, progressText(view), new Date(view.created_at * 1000).toLocaleTimeString()];
  row.insertCell().append(open);
  for (const text of cells) row.insertCell().textContent = text;
  row.cells[1].className = "state";
  row.cells[1].dataset.state = view.state;
  return row;
}

function renderRow(view) {
  const old = $("jobs-list").querySelector(`tr[data-job-id="${view.id}"]`);
  if (old) old.replaceWith(makeRow(view));
}

function renderJobs(views) {
  $("jobs-list").replaceChildren(...views.map(makeRow));
}

async function refreshJobs() {
  if (page.listing) {
    const response = await api(`/v1/jobs?limit=${LIST_LIMIT}`);
    if (response.ok) {
      renderJobs((await json(response)).data || []);
      $("jobs-note").textContent = "";
      return;
    }
    if (response.status !== 404 && response.status !== 405) throw new Error(`list of jobs: ${response.status}`);
    page.listing = false;
  }
  $("jobs-note").textContent = "This server does not list its jobs: these are the jobs sent from this page.";
  for (const [id, view] of page.mine) {
    if (TERMINAL.has(view.state) || id === page.job?.id) continue; // the shown job has its stream
    const response = await api(`/v1/jobs/${id}`);
    if (response.status === 404) page.mine.delete(id); // forgotten after --result-ttl
    else if (response.ok) page.mine.set(id, await json(response));
  }
  renderJobs([...page.mine.values()].reverse().slice(0, LIST_LIMIT));
}

// ---- start ---------------------------------------------------------------------------

let refresher = null;

async function start() {
  page.doc = await json(await api("/schema/openapi.json"));
  offerModels(await servedModels());
  await chooseModel(page.models.includes(page.model) ? page.model : null); // the one chosen before a 401
  $("page-error").hidden = true;
  $("main").hidden = false;
  await refreshJobs();
  await refreshHosts();
  refresher ??= setInterval(() => {
    if (document.hidden || $("main").hidden) return;
    run(refreshJobs);
    run(refreshHosts);
  }, REFRESH_MS);
}

run(start);
