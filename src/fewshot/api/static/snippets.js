// "Copy as code": the current prompt and settings as a Python `requests` snippet in the style
// of the GPT-Neo few-shot blog post (query() posting to /models/{model}) and as a curl command.

// A Python string literal for `s`: triple-quoted when it has several lines, so a few-shot prompt
// stays readable; a space ending a line is written \x20 so editors cannot strip it.
export function pyString(s) {
  if (!s.includes("\n")) return JSON.stringify(s);
  let body = s
    .replace(/\\/g, "\\\\")
    .replace(/"""/g, '\\"\\"\\"')
    .replace(/\r/g, "\\r")
    .replace(/\t/g, "\\t")
    .replace(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`)
    .replace(/ (?=\n|$)/g, "\\x20");
  if (body.endsWith('"')) body = `${body.slice(0, -1)}\\"`;
  return `"""\\\n${body}"""`;
}

function pyValue(v) {
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "boolean") return v ? "True" : "False";
  if (v === null || v === undefined) return "None";
  if (Array.isArray(v)) return `[${v.map(pyValue).join(", ")}]`;
  return String(v);
}

const COMMENTS = {
  max_new_tokens: "number of generated tokens",
  temperature: "controlling the randomness of generations",
  end_sequence: "stopping sequence for generation",
  top_p: "nucleus sampling: smallest token set with this probability",
  top_k: "sample among the k most likely tokens",
  repetition_penalty: "penalise tokens already generated",
  seed: "same seed, same output",
  do_sample: "False: greedy decoding",
  return_full_text: "only the generated text, not the prompt",
};

// Parameters for the HF-format route, from the page's generation parameters.
export function hfParameters(params) {
  const out = {};
  if (params.max_new_tokens !== undefined) out.max_new_tokens = params.max_new_tokens;
  if (params.temperature !== undefined) out.temperature = params.temperature;
  if (params.stop && params.stop.length) out.end_sequence = params.stop[0];
  for (const k of ["top_p", "top_k", "repetition_penalty", "seed"]) {
    if (params[k] !== undefined) out[k] = params[k];
  }
  if (params.do_sample === false) out.do_sample = false;
  out.return_full_text = false;
  return out;
}

export function modelUrl(base, model) {
  const path = `models/${model.split("/").map(encodeURIComponent).join("/")}`;
  return new URL(path, base).href;
}

export function pythonSnippet({ base, model, prompt, params, auth }) {
  const hf = hfParameters(params);
  const keys = Object.keys(hf);
  const width = Math.max(...keys.map((k) => `'${k}': ${pyValue(hf[k])},`.length));
  const paramLines = keys.map((k, i) => {
    const item = `'${k}': ${pyValue(hf[k])}${i < keys.length - 1 ? "," : ""}`;
    return `    ${item.padEnd(width)}  # ${COMMENTS[k]}`;
  });
  return [
    "import json",
    "import requests",
    "",
    `API_TOKEN = ""${auth ? "  # your API key for this server" : "  # only needed when the server has API keys"}`,
    "",
    "def query(payload='', parameters=None, options={'use_cache': False}):",
    `    API_URL = ${JSON.stringify(modelUrl(base, model))}`,
    '    headers = {"Authorization": f"Bearer {API_TOKEN}"} if API_TOKEN else {}',
    "    body = {'inputs': payload, 'parameters': parameters, 'options': options}",
    '    response = requests.request("POST", API_URL, headers=headers, data=json.dumps(body))',
    "    try:",
    "        response.raise_for_status()",
    "    except requests.exceptions.HTTPError:",
    "        error = response.json()['error']",
    '        return "Error: " + (" ".join(error) if isinstance(error, list) else str(error))',
    "    else:",
    "        return response.json()[0]['generated_text']",
    "",
    "parameters = {",
    ...paramLines,
    "}",
    "options = {'use_cache': False}",
    "",
    `prompt = ${pyString(prompt)}`,
    "",
    "data = query(prompt, parameters, options)",
    "print(data)",
    "",
  ].join("\n");
}

function shQuote(s) {
  return `'${s.replace(/'/g, "'\\''")}'`;
}

export function curlSnippet({ base, model, prompt, params, auth }) {
  const body = { inputs: prompt, parameters: hfParameters(params), options: { use_cache: false } };
  const lines = [`curl ${shQuote(modelUrl(base, model))}`, "  -X POST", "  -H 'Content-Type: application/json'"];
  if (auth) lines.push('  -H "Authorization: Bearer $API_TOKEN"');
  lines.push(`  -d ${shQuote(JSON.stringify(body, null, 2).replace(/\n/g, "\n     "))}`);
  return `${lines.join(" \\\n")}\n`;
}
