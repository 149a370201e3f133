import { labelsFromFormat } from "./prompt.js";

// Few-shot presets for the kinds of tasks in the GPT-Neo few-shot blog post. The page uses
// the server's GET /presets when it exists (normalizePreset accepts the toolkit's shapes) and
// falls back to this list.

export const BUILTIN_PRESETS = [
  {
    id: "english-french",
    name: "English → French",
    task: "Translate English to French",
    inputLabel: "English",
    outputLabel: "French",
    examples: [
      { input: "sea otter", output: "loutre de mer" },
      { input: "peppermint", output: "menthe poivrée" },
      { input: "plush giraffe", output: "girafe en peluche" },
    ],
    query: "cheese",
    params: { end_sequence: "###", max_new_tokens: 10, temperature: 0.1 },
  },
  {
    id: "tweet-sentiment",
    name: "Tweet sentiment",
    task: "Classify the sentiment of each tweet as Positive, Negative or Neutral.",
    inputLabel: "Tweet",
    outputLabel: "Sentiment",
    examples: [
      { input: "I loved the new Batman movie!", output: "Positive" },
      { input: "My flight got cancelled again. Worst airline ever.", output: "Negative" },
      { input: "The store opens at 9am on Sundays.", output: "Neutral" },
      { input: "Just finished my first marathon and I feel amazing", output: "Positive" },
    ],
    query: "This new music video was incredible",
    params: { end_sequence: "###", max_new_tokens: 3, temperature: 0.1 },
  },
  {
    id: "tweet-keywords",
    name: "Keywords from a tweet",
    task: "Extract the keywords of each tweet.",
    inputLabel: "Tweet",
    outputLabel: "Keywords",
    examples: [
      {
        input: "Hugging Face raises $40M to build the open-source hub for machine learning",
        output: "Hugging Face, funding, open source, machine learning",
      },
      {
        input: "Heavy rain expected in Paris this weekend, bring an umbrella!",
        output: "rain, Paris, weekend, weather",
      },
    ],
    query: "GPT-Neo is an open-source alternative to GPT-3 trained on the Pile",
    params: { end_sequence: "###", max_new_tokens: 20, temperature: 0.3 },
  },
  {
    id: "tweet-generation",
    name: "Tweet from keywords",
    task: "Write a tweet that uses the given keywords.",
    inputLabel: "Keywords",
    outputLabel: "Tweet",
    examples: [
      {
        input: "coffee, Monday, productive",
        output: "Two cups of coffee in and this Monday is already my most productive day of the week ☕",
      },
      {
        input: "beach, sunset, friends",
        output: "Nothing beats a sunset on the beach with old friends 🌅",
      },
    ],
    query: "machine learning, open source, community",
    params: { end_sequence: "###", max_new_tokens: 40, temperature: 0.8 },
  },
  {
    id: "question-answering",
    name: "Q&A",
    task: "Answer each question in a few words.",
    inputLabel: "Question",
    outputLabel: "Answer",
    examples: [
      { input: "What is the capital of France?", output: "Paris" },
      { input: "Who wrote Romeo and Juliet?", output: "William Shakespeare" },
      { input: "How many legs does a spider have?", output: "Eight" },
    ],
    query: "What is the largest planet in the solar system?",
    params: { end_sequence: "###", max_new_tokens: 10, temperature: 0.1 },
  },
  {
    id: "headline",
    name: "Headline from an article",
    task: "Write a short headline for each article.",
    inputLabel: "Article",
    outputLabel: "Headline",
    examples: [
      {
        input: "The city council approved a plan on Tuesday to add 40 km of protected bike lanes by 2025, citing a rise in cycling during the pandemic.",
        output: "City approves 40 km of new protected bike lanes",
      },
      {
        input: "Researchers found that people who slept fewer than six hours a night were more likely to catch a cold after being exposed to the virus.",
        output: "Short sleep linked to higher risk of catching colds",
      },
    ],
    query: "A small bakery in Lyon won the national prize for the best croissant after a blind tasting by a jury of twelve pastry chefs.",
    params: { end_sequence: "###", max_new_tokens: 20, temperature: 0.5 },
  },
  {
    id: "custom",
    name: "Blank",
    task: "",
    inputLabel: "Input",
    outputLabel: "Output",
    examples: [{ input: "", output: "" }],
    query: "",
    params: {},
  },
];

function pick(obj, ...keys) {
  for (const k of keys) if (obj && obj[k] !== undefined && obj[k] !== null) return obj[k];
  return undefined;
}

function normalizeExample(ex) {
  if (Array.isArray(ex)) return { input: String(ex[0] ?? ""), output: String(ex[1] ?? "") };
  if (typeof ex === "string") return { input: ex, output: "" };
  return {
    input: String(pick(ex, "input", "text", "question", "prompt", "x") ?? ""),
    output: String(pick(ex, "output", "label", "answer", "completion", "target", "y") ?? ""),
  };
}

// Map a preset as the server describes it (fewshot.toolkit.presets.list_presets(): name, title,
// description, format, separator, examples, query, parameters) onto the page's shape.
export function normalizePreset(raw, index = 0) {
  if (!raw || typeof raw !== "object") return null;
  const name = pick(raw, "title", "name", "id");
  if (!name) return null;
  const examples = pick(raw, "examples", "shots", "demonstrations");
  const params = { ...(pick(raw, "parameters", "params", "defaults") || {}) };
  if (params.end_sequence === undefined) {
    const stop = pick(params, "stop") ?? pick(raw, "end_sequence", "stop", "separator");
    if (stop !== undefined) params.end_sequence = Array.isArray(stop) ? stop[0] ?? "" : String(stop);
  }
  for (const k of ["max_new_tokens", "temperature"]) {
    if (params[k] === undefined && raw[k] !== undefined) params[k] = raw[k];
  }
  const format = typeof raw.format === "string" ? raw.format : "";
  const fromFormat = labelsFromFormat(format);
  const preset = {
    id: String(pick(raw, "name", "id") ?? `preset-${index}`),
    name: String(name),
    task: String(pick(raw, "task", "description", "instruction", "task_description") ?? ""),
    inputLabel: String(pick(raw, "inputLabel", "input_label") ?? fromFormat?.inputLabel ?? "Input"),
    outputLabel: String(pick(raw, "outputLabel", "output_label") ?? fromFormat?.outputLabel ?? "Output"),
    examples: Array.isArray(examples) ? examples.map(normalizeExample) : [],
    query: String(pick(raw, "query") ?? ""),
    params,
  };
  // A format the label editor cannot express ("{input} => {output}") is kept and shown as raw text.
  if (format && !fromFormat) preset.format = format;
  return preset;
}

// The server's presets if GET /presets answers with usable ones, else the built-in list.
export async function loadPresets(fetchJSON) {
  try {
    const data = await fetchJSON("presets");
    const list = Array.isArray(data) ? data : data && (data.presets || data.data);
    const items = Array.isArray(list)
      ? list
      : data && typeof data === "object"
        ? Object.entries(data).map(([id, v]) => ({ id, name: id, ...v }))
        : [];
    const presets = items.map(normalizePreset).filter((p) => p && (p.examples.length || p.task));
    if (presets.length) return { presets, source: "server" };
  } catch {
    /* no /presets route: use the built-in list */
  }
  return { presets: BUILTIN_PRESETS, source: "built-in" };
}
