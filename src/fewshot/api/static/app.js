// The fewshot playground: few-shot prompt editor, streamed generation from POST /generate_stream,
// timings, prefix-cache report, "copy as code" and API-key handling. Plain ES modules, no build.

import { ApiError, auth, fetchJSON, headers, responseError } from "./api.js";
import { BUILTIN_PRESETS, loadPresets } from "./presets.js";
import { DEFAULT_SEPARATOR, parsePrompt, renderPrompt } from "./prompt.js";
import { curlSnippet, pythonSnippet } from "./snippets.js";
import { readSSE } from "./sse.js";

const $ = (id) => document.getElementById(id);

const el = {
  model: $("model"),
  preset: $("preset"),
  modeExamples: $("mode-examples"),
  modeRaw: $("mode-raw"),
  examplesEditor: $("examples-editor"),
  rawEditor: $("raw-editor"),
  task: $("task"),
  inputLabel: $("input-label"),
  outputLabel: $("output-label"),
  exampleList: $("example-list"),
  addExample: $("add-example"),
  query: $("query"),
  preview: $("prompt-preview"),
  raw: $("raw-prompt"),
  promptNote: $("prompt-note"),
  end: $("end-sequence"),
  maxTokens: $("max-new-tokens"),
  maxTokensRange: $("max-new-tokens-range"),
  temperature: $("temperature"),
  temperatureRange: $("temperature-range"),
  topP: $("top-p"),
  topK: $("top-k"),
  repetitionPenalty: $("repetition-penalty"),
  seed: $("seed"),
  more: $("more"),
  generate: $("generate"),
  stop: $("stop"),
  copyCode: $("copy-code"),
  output: $("output"),
  runState: $("run-state"),
  stat: {
    ttft: $("stat-ttft"),
    tps: $("stat-tps"),
    tokens: $("stat-tokens"),
    finish: $("stat-finish"),
    cache: $("stat-cache"),
  },
  alert: $("alert"),
  alertTitle: $("alert-title"),
  alertMessage: $("alert-message"),
  alertClose: $("alert-close"),
  authPanel: $("auth-panel"),
  authStatus: $("auth-status"),
  authForm: $("auth-form"),
  apiKey: $("api-key"),
  apiKeyForget: $("api-key-forget"),
  serverInfo: $("server-info"),
  dialog: $("code-dialog"),
  dialogClose: $("code-close"),
  tabPython: $("tab-python"),
  tabCurl: $("tab-curl"),
  codePanel: $("code-panel"),
  codeText: $("code-text"),
  codeCopy: $("code-copy"),
  copyStatus: $("copy-status"),
};

const state = {
  presets: BUILTIN_PRESETS,
  presetSource: "built-in",
  edited: false, // the prompt or settings changed since the last preset was applied
  info: null,
  authRequired: false,
  controller: null,
  rawDirty: false, // raw text edited since it was rendered from the examples
  codeLang: "python",
};

// ---------------------------------------------------------------- alerts and auth

const ERROR_TITLES = {
  validation: "Invalid setting",
  authentication: "API key needed",
  overloaded: "Server busy",
  generation: "Generation failed",
};
const STATUS_TITLES = { 401: "API key needed", 403: "Forbidden", 404: "Not found", 422: "Invalid setting", 429: "Server busy", 503: "Model not ready" };

// Inputs named by a server validation message (e.g. "`parameters.top_p`: ..."), by parameter.
const PARAM_INPUTS = () => ({
  top_p: el.topP,
  top_k: el.topK,
  repetition_penalty: el.repetitionPenalty,
  seed: el.seed,
  temperature: el.temperature,
  max_new_tokens: el.maxTokens,
  stop: el.end,
  inputs: mode() === "raw" ? el.raw : el.query,
});

function markInvalid(message) {
  for (const [name, input] of Object.entries(PARAM_INPUTS())) {
    if (new RegExp(`\\b${name}\\b`).test(message)) {
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-errormessage", "alert-message");
      if (input.closest("details")) input.closest("details").open = true;
    }
  }
}

function showError(err, title) {
  const api = err instanceof ApiError;
  const status = api && err.status ? ` (${err.status})` : "";
  const base = (api && (ERROR_TITLES[err.type] || STATUS_TITLES[err.status])) || (api ? "Server error" : "Error");
  el.alertTitle.textContent = title || `${base}${status}`;
  el.alertMessage.textContent = err.message || String(err);
  el.alert.hidden = false;
  el.alert.scrollIntoView({ block: "nearest" });
  if (api && (err.status === 400 || err.status === 422 || err.type === "validation")) markInvalid(err.message);
  if (api && err.status === 401) requireAuth(true);
}

function clearError() {
  el.alert.hidden = true;
  el.alertMessage.textContent = "";
  for (const input of document.querySelectorAll("[aria-invalid=true]")) {
    input.removeAttribute("aria-invalid");
    input.removeAttribute("aria-errormessage");
  }
}

function requireAuth(refused = false) {
  state.authRequired = true;
  el.authPanel.hidden = false;
  el.apiKey.value = auth.get();
  if (refused) {
    el.authStatus.textContent = auth.get()
      ? "The server refused this API key. Enter a valid one."
      : "This server requires an API key.";
    el.apiKey.focus();
  }
}

function setupAuth() {
  if (auth.get()) {
    el.authPanel.hidden = false;
    el.apiKey.value = auth.get();
  }
  el.authForm.addEventListener("submit", (e) => {
    e.preventDefault();
    auth.set(el.apiKey.value.trim());
    clearError();
    el.authStatus.textContent = "API key saved.";
    loadModels();
    if (state.presetSource !== "server") refreshPresets();
  });
  el.apiKeyForget.addEventListener("click", () => {
    auth.set("");
    el.apiKey.value = "";
    el.authStatus.textContent = "API key removed.";
    if (!state.authRequired) el.authPanel.hidden = true;
  });
}

// ---------------------------------------------------------------- models and server info

function authFlag(info) {
  if (!info || typeof info !== "object") return false;
  for (const k of ["auth_required", "api_key_required", "requires_auth", "api_keys", "auth"]) {
    const v = info[k];
    if (v === true || (typeof v === "number" && v > 0)) return true;
    if (v && typeof v === "object" && (v.required || v.enabled)) return true;
  }
  return false;
}

async function loadInfo() {
  try {
    state.info = await fetchJSON("info");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) requireAuth(true);
    state.info = null;
  }
  const info = state.info;
  if (authFlag(info)) requireAuth(!auth.get());
  if (info) {
    const parts = [];
    if (info.version) parts.push(`fewshot ${info.version}`);
    if (info.max_total_tokens) parts.push(`max ${info.max_total_tokens} tokens`);
    el.serverInfo.textContent = parts.length ? `Connected · ${parts.join(" · ")}` : "Connected";
  } else {
    el.serverInfo.textContent = "Server info unavailable";
  }
  return info;
}

async function loadModels() {
  const previous = el.model.value;
  let ids = [];
  const statuses = {};
  try {
    const list = await fetchJSON("v1/models");
    const items = list.data || list.models || [];
    ids = items.map((m) => (typeof m === "string" ? m : m.id)).filter(Boolean);
    for (const m of items) if (m && m.id && m.status) statuses[m.id] = m.status;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) requireAuth(true);
  }
  if (!ids.length && state.info) {
    const id = state.info.model_id || state.info.model;
    if (id) ids = [id];
  }
  el.model.replaceChildren(
    ...(ids.length ? ids : [""]).map((id) => {
      const o = document.createElement("option");
      o.value = id;
      const status = statuses[id];
      o.textContent = id ? (status && status !== "ready" ? `${id} (${status})` : id) : "No model available";
      return o;
    }),
  );
  if (ids.includes(previous)) el.model.value = previous;
  el.model.disabled = ids.length === 0;
}

// ---------------------------------------------------------------- prompt editor

function autoSize(textarea) {
  if (!textarea.offsetParent) return; // hidden (raw mode): sized when shown again
  textarea.style.height = "auto";
  textarea.style.height = `${Math.min(textarea.scrollHeight + 2, 320)}px`;
}

function exampleRow(ex, index) {
  const li = document.createElement("li");
  li.className = "example-row";
  const n = index + 1;
  const inLabel = el.inputLabel.value.trim() || "Input";
  const outLabel = el.outputLabel.value.trim() || "Output";
  li.innerHTML = `
    <div class="field">
      <label class="ex-label ex-in"></label>
      <textarea rows="1" class="ex-input"></textarea>
    </div>
    <div class="field">
      <label class="ex-label ex-out"></label>
      <textarea rows="1" class="ex-output"></textarea>
    </div>
    <button type="button" class="icon-btn remove" title="Remove example">&times;</button>`;
  const [inputLab, outputLab] = li.querySelectorAll("label");
  const [input, output] = li.querySelectorAll("textarea");
  input.id = `ex-${n}-input`;
  output.id = `ex-${n}-output`;
  inputLab.htmlFor = input.id;
  outputLab.htmlFor = output.id;
  inputLab.textContent = inLabel;
  outputLab.textContent = outLabel;
  input.setAttribute("aria-label", `Example ${n} ${inLabel}`);
  output.setAttribute("aria-label", `Example ${n} ${outLabel}`);
  input.value = ex.input || "";
  output.value = ex.output || "";
  const remove = li.querySelector(".remove");
  remove.setAttribute("aria-label", `Remove example ${n}`);
  remove.addEventListener("click", () => {
    const rows = readExamples();
    rows.splice(index, 1);
    setExamples(rows);
    const next = el.exampleList.querySelectorAll(".remove")[Math.min(index, rows.length - 1)];
    (next || el.addExample).focus();
    promptChanged();
  });
  return li;
}

function readExamples() {
  return [...el.exampleList.querySelectorAll(".example-row")].map((li) => ({
    input: li.querySelector(".ex-input").value,
    output: li.querySelector(".ex-output").value,
  }));
}

function setExamples(examples) {
  el.exampleList.replaceChildren(...examples.map(exampleRow));
  for (const ta of el.exampleList.querySelectorAll("textarea")) autoSize(ta);
}

function readStructured() {
  return {
    task: el.task.value,
    inputLabel: el.inputLabel.value,
    outputLabel: el.outputLabel.value,
    examples: readExamples(),
    query: el.query.value,
  };
}

function setStructured(p) {
  el.task.value = p.task || "";
  el.inputLabel.value = p.inputLabel || "";
  el.outputLabel.value = p.outputLabel || "";
  el.query.value = p.query || "";
  setExamples(p.examples && p.examples.length ? p.examples : [{ input: "", output: "" }]);
  autoSize(el.task);
  autoSize(el.query);
}

function separator() {
  return el.end.value.trim() || DEFAULT_SEPARATOR;
}

function mode() {
  return el.modeRaw.checked ? "raw" : "examples";
}

function currentPrompt() {
  return mode() === "raw" ? el.raw.value : renderPrompt(readStructured(), separator());
}

function promptChanged() {
  if (mode() === "examples") el.preview.textContent = renderPrompt(readStructured(), separator());
}

function relabel() {
  const inLabel = el.inputLabel.value.trim() || "Input";
  const outLabel = el.outputLabel.value.trim() || "Output";
  el.exampleList.querySelectorAll(".example-row").forEach((li, i) => {
    li.querySelector(".ex-in").textContent = inLabel;
    li.querySelector(".ex-out").textContent = outLabel;
    li.querySelector(".ex-input").setAttribute("aria-label", `Example ${i + 1} ${inLabel}`);
    li.querySelector(".ex-output").setAttribute("aria-label", `Example ${i + 1} ${outLabel}`);
  });
}

function setMode(next) {
  el.promptNote.textContent = "";
  if (next === "raw") {
    el.raw.value = renderPrompt(readStructured(), separator());
    state.rawDirty = false;
  } else if (state.rawDirty) {
    const parsed = parsePrompt(el.raw.value, separator());
    if (!parsed) {
      el.modeRaw.checked = true;
      el.promptNote.textContent = `This text does not follow the "task, ${separator()}, Label: value" layout, so it stays in raw mode.`;
      return;
    }
    setStructured(parsed);
  }
  el.modeRaw.checked = next === "raw";
  el.modeExamples.checked = next !== "raw";
  el.rawEditor.hidden = next !== "raw";
  el.examplesEditor.hidden = next === "raw";
  if (next !== "raw") for (const ta of el.examplesEditor.querySelectorAll("textarea")) autoSize(ta);
  promptChanged();
}

function applyPreset(p) {
  state.edited = false;
  setStructured(p);
  if (p.format) {
    // Not a "Label: {input}\nLabel: {output}" format: edit the rendered text as raw text.
    el.raw.value = renderPrompt(p, p.params?.end_sequence || DEFAULT_SEPARATOR);
    state.rawDirty = true;
    el.modeRaw.checked = true;
    el.rawEditor.hidden = false;
    el.examplesEditor.hidden = true;
  }
  const params = p.params || {};
  if (params.end_sequence !== undefined) el.end.value = params.end_sequence;
  if (params.max_new_tokens !== undefined) setNumber(el.maxTokens, el.maxTokensRange, params.max_new_tokens);
  if (params.temperature !== undefined) setNumber(el.temperature, el.temperatureRange, params.temperature);
  for (const [key, input] of [["top_p", el.topP], ["top_k", el.topK], ["repetition_penalty", el.repetitionPenalty], ["seed", el.seed]]) {
    input.value = params[key] ?? "";
  }
  if (mode() === "raw" && !p.format) {
    el.raw.value = renderPrompt(readStructured(), separator());
    state.rawDirty = false;
  }
  promptChanged();
}

function fillPresets(presets) {
  state.presets = presets;
  el.preset.replaceChildren(
    ...presets.map((p, i) => {
      const o = document.createElement("option");
      o.value = String(i);
      o.textContent = p.name;
      return o;
    }),
  );
}

// Start with English -> French, the blog's first example, when there is one.
function choosePreset(presets) {
  const i = Math.max(0, presets.findIndex((p) => /french/i.test(`${p.id} ${p.name}`)));
  el.preset.value = String(i);
  applyPreset(presets[i]);
}

function setupEditor() {
  for (const part of [el.examplesEditor, el.rawEditor, document.getElementById("settings")]) {
    part.addEventListener("input", () => {
      state.edited = true;
    });
  }
  el.modeExamples.addEventListener("change", () => setMode("examples"));
  el.modeRaw.addEventListener("change", () => setMode("raw"));
  el.raw.addEventListener("input", () => {
    state.rawDirty = true;
  });
  for (const input of [el.task, el.query]) {
    input.addEventListener("input", () => {
      autoSize(input);
      promptChanged();
    });
  }
  for (const input of [el.inputLabel, el.outputLabel]) {
    input.addEventListener("input", () => {
      relabel();
      promptChanged();
    });
  }
  el.exampleList.addEventListener("input", (e) => {
    if (e.target.tagName === "TEXTAREA") autoSize(e.target);
    promptChanged();
  });
  el.addExample.addEventListener("click", () => {
    const rows = readExamples();
    rows.push({ input: "", output: "" });
    setExamples(rows);
    el.exampleList.querySelector(".example-row:last-child .ex-input").focus();
    promptChanged();
  });
  el.end.addEventListener("input", promptChanged);
  el.preset.addEventListener("change", () => {
    const p = state.presets[Number(el.preset.value)];
    if (p) applyPreset(p);
  });
}

// ---------------------------------------------------------------- settings

function setNumber(number, range, value) {
  number.value = String(value);
  range.value = String(value);
}

function linkRange(number, range) {
  range.addEventListener("input", () => {
    number.value = range.value;
  });
  number.addEventListener("input", () => {
    if (number.value !== "") range.value = number.value;
  });
}

function num(input, parse = Number) {
  const v = input.value.trim();
  if (v === "") return undefined;
  const n = parse(v);
  return Number.isFinite(n) ? n : undefined;
}

// Parameters for POST /generate_stream (TGI names). Values are sent as typed: the server
// validates them, and its message is shown when it refuses one.
function readParams() {
  const params = { details: true };
  const maxNew = num(el.maxTokens, (v) => Number.parseInt(v, 10));
  if (maxNew !== undefined) params.max_new_tokens = maxNew;
  const temperature = num(el.temperature);
  if (temperature === undefined || temperature > 0) {
    params.do_sample = true;
    if (temperature !== undefined) params.temperature = temperature;
  } else {
    params.do_sample = false;
  }
  if (el.end.value !== "") params.stop = [el.end.value];
  const topP = num(el.topP);
  if (topP !== undefined) params.top_p = topP;
  const topK = num(el.topK, (v) => Number.parseInt(v, 10));
  if (topK !== undefined) params.top_k = topK;
  const rep = num(el.repetitionPenalty);
  if (rep !== undefined) params.repetition_penalty = rep;
  const seed = num(el.seed, (v) => Number.parseInt(v, 10));
  if (seed !== undefined) params.seed = seed;
  return params;
}

// ---------------------------------------------------------------- generation

function setRunState(name, label) {
  el.runState.dataset.state = name;
  el.runState.textContent = label;
}

function setRunning(running) {
  // Keep keyboard focus on a live button when the other one gets disabled.
  const refocus = document.activeElement === (running ? el.generate : el.stop);
  el.generate.disabled = running;
  el.stop.disabled = !running;
  if (refocus) (running ? el.stop : el.generate).focus();
  el.output.setAttribute("aria-busy", String(running));
  el.output.classList.toggle("streaming", running);
  document.body.classList.toggle("is-running", running);
}

function resetStats() {
  for (const dd of Object.values(el.stat)) dd.textContent = "–";
}

function fmtMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

const FINISH = { length: "token length", eos_token: "end of text", stop_sequence: "end sequence", time: "time limit", aborted: "stopped" };

// Shows the end of the prompt (dimmed) followed by the generated text.
function startOutput(prompt) {
  const tail = prompt.split(`\n${separator()}\n`).pop().slice(-300);
  const ctx = document.createElement("span");
  ctx.className = "ctx";
  ctx.textContent = tail;
  const gen = document.createElement("span");
  gen.className = "gen";
  el.output.replaceChildren(ctx, gen);
  return gen;
}

function showFinal(gen, text, stop) {
  gen.replaceChildren();
  if (stop && text.endsWith(stop)) {
    const s = document.createElement("span");
    s.className = "stop-seq";
    s.textContent = stop;
    s.title = "End sequence";
    gen.append(text.slice(0, -stop.length), s);
  } else {
    gen.append(text);
  }
}

function cacheReport(response, details) {
  const hdr = response.headers.get("x-prefix-cache-tokens");
  const d = details || {};
  const cached = hdr !== null ? Number(hdr) : d.prefix_cache_tokens ?? d.cached_tokens ?? d.cached_input_tokens;
  const total = d.input_length ?? d.prompt_tokens ?? Number(response.headers.get("x-prompt-tokens") || NaN);
  if (cached === undefined || cached === null || Number.isNaN(cached)) return "not reported";
  const of = Number.isFinite(total) && total > 0 ? ` / ${total}` : "";
  return cached > 0 ? `hit · ${cached}${of} tokens` : `miss · 0${of} tokens`;
}

async function generate() {
  if (state.controller) return;
  clearError();
  const prompt = currentPrompt();
  if (!prompt.trim()) {
    showError(new Error("The prompt is empty."), "Nothing to generate");
    return;
  }
  const model = el.model.value;
  const params = readParams();
  const body = { inputs: prompt, parameters: params };
  if (model) body.model = model;

  const controller = new AbortController();
  state.controller = controller;
  setRunning(true);
  setRunState("running", "Generating…");
  resetStats();
  const gen = startOutput(prompt);
  const t0 = performance.now();
  let tFirst = 0;
  let tLast = 0;
  let tokens = 0;
  let text = "";
  let final = null;
  let response = null;
  let frame = 0;

  const paint = () => {
    frame = 0;
    if (tFirst) el.stat.ttft.textContent = fmtMs(tFirst - t0);
    el.stat.tokens.textContent = String(tokens);
    if (tokens > 1 && tLast > tFirst) el.stat.tps.textContent = ((tokens - 1) / ((tLast - tFirst) / 1000)).toFixed(1);
  };

  try {
    response = await fetch("generate_stream", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) throw await responseError(response);
    el.stat.cache.textContent = cacheReport(response, null);
    await readSSE(response, (ev) => {
      if (ev.error) throw new ApiError(errorText(ev.error), { type: ev.error_type || "" });
      const now = performance.now();
      if (ev.token) {
        tokens += 1;
        if (!tFirst) tFirst = now;
        tLast = now;
        if (!ev.token.special && ev.token.text) {
          text += ev.token.text;
          gen.append(ev.token.text);
        }
      }
      if (ev.generated_text !== null && ev.generated_text !== undefined) final = ev;
      if (!frame) frame = requestAnimationFrame(paint);
    });
    if (frame) cancelAnimationFrame(frame);
    paint();
    const details = final && final.details;
    if (final && typeof final.generated_text === "string") text = final.generated_text;
    showFinal(gen, text, params.stop && params.stop[0]);
    if (details) {
      el.stat.finish.textContent = FINISH[details.finish_reason] || details.finish_reason || "–";
      if (details.generated_tokens !== undefined) el.stat.tokens.textContent = String(details.generated_tokens);
    }
    el.stat.cache.textContent = cacheReport(response, details);
    if (!final) throw new Error("The stream ended before the final event.");
    setRunState("done", "Done");
  } catch (err) {
    if (frame) cancelAnimationFrame(frame);
    paint();
    if (err.name === "AbortError") {
      setRunState("stopped", "Stopped");
      el.stat.finish.textContent = "stopped";
    } else {
      setRunState("error", "Error");
      // fetch() rejects with a TypeError when the server cannot be reached at all.
      showError(response === null && err instanceof TypeError ? new Error(`Could not reach the server (${err.message}).`) : err);
    }
  } finally {
    state.controller = null;
    setRunning(false);
  }
}

function errorText(error) {
  if (typeof error === "string") return error;
  if (Array.isArray(error)) return error.join(" ");
  return (error && error.message) || JSON.stringify(error);
}

function stop() {
  if (state.controller) state.controller.abort();
}

// ---------------------------------------------------------------- copy as code

function snippetArgs() {
  return {
    base: document.baseURI,
    model: el.model.value || "MODEL",
    prompt: currentPrompt(),
    params: readParams(),
    auth: state.authRequired || Boolean(auth.get()),
  };
}

function showCode(lang) {
  state.codeLang = lang;
  const python = lang === "python";
  el.tabPython.setAttribute("aria-selected", String(python));
  el.tabCurl.setAttribute("aria-selected", String(!python));
  el.tabPython.tabIndex = python ? 0 : -1;
  el.tabCurl.tabIndex = python ? -1 : 0;
  el.codePanel.setAttribute("aria-labelledby", python ? "tab-python" : "tab-curl");
  el.codeText.textContent = python ? pythonSnippet(snippetArgs()) : curlSnippet(snippetArgs());
  el.copyStatus.textContent = "";
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const ta = document.createElement("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.style.position = "fixed";
    ta.style.opacity = "0";
    el.dialog.append(ta);
    ta.select();
    const ok = document.execCommand("copy");
    ta.remove();
    return ok;
  }
}

function setupCodeDialog() {
  el.copyCode.addEventListener("click", () => {
    showCode(state.codeLang);
    el.dialog.showModal();
    (state.codeLang === "python" ? el.tabPython : el.tabCurl).focus();
  });
  el.dialogClose.addEventListener("click", () => el.dialog.close());
  el.dialog.addEventListener("click", (e) => {
    if (e.target === el.dialog) el.dialog.close();
  });
  el.dialog.addEventListener("close", () => el.copyCode.focus());
  el.tabPython.addEventListener("click", () => showCode("python"));
  el.tabCurl.addEventListener("click", () => showCode("curl"));
  for (const tab of [el.tabPython, el.tabCurl]) {
    tab.addEventListener("keydown", (e) => {
      if (!["ArrowLeft", "ArrowRight", "Home", "End"].includes(e.key)) return;
      e.preventDefault();
      const next = state.codeLang === "python" ? "curl" : "python";
      showCode(e.key === "Home" ? "python" : e.key === "End" ? "curl" : next);
      (state.codeLang === "python" ? el.tabPython : el.tabCurl).focus();
    });
  }
  el.codeCopy.addEventListener("click", async () => {
    const ok = await copyText(el.codeText.textContent);
    el.copyStatus.textContent = ok ? "Copied to the clipboard." : "Copy failed: select the code and copy it by hand.";
  });
}

// ---------------------------------------------------------------- keyboard

function setupKeyboard() {
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      if (el.dialog.open) return;
      e.preventDefault();
      generate();
    } else if (e.key === "Escape" && state.controller && !el.dialog.open) {
      e.preventDefault();
      stop();
    }
  });
}

// ---------------------------------------------------------------- start

async function main() {
  fillPresets(BUILTIN_PRESETS);
  choosePreset(BUILTIN_PRESETS);
  setupEditor();
  setupAuth();
  setupCodeDialog();
  setupKeyboard();
  linkRange(el.maxTokens, el.maxTokensRange);
  linkRange(el.temperature, el.temperatureRange);
  el.generate.addEventListener("click", generate);
  el.stop.addEventListener("click", stop);
  el.alertClose.addEventListener("click", clearError);

  await loadInfo();
  await Promise.all([refreshPresets(), loadModels()]);
  document.body.dataset.ready = "true";
}

// Use the server's presets (GET /presets) when it has them, plus a blank one.
async function refreshPresets() {
  const { presets, source } = await loadPresets(fetchJSON);
  if (source !== "server") return;
  state.presetSource = source;
  const blank = BUILTIN_PRESETS.find((p) => p.id === "custom");
  fillPresets([...presets, blank]);
  if (state.edited) el.preset.selectedIndex = -1; // keep the user's prompt
  else choosePreset(state.presets);
}

main().catch((err) => showError(err, "The playground failed to start"));
