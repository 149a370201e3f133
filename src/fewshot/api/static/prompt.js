// Few-shot prompts: a task description, labelled example rows and a query, joined by a
// separator line (### by default), as in the GPT-Neo few-shot blog post:
//
//   Translate English to French
//   ###
//   English: sea otter
//   French: loutre de mer
//   ###
//   English: cheese
//   French:

export const DEFAULT_SEPARATOR = "###";

function labels(p) {
  return {
    input: (p.inputLabel || "").trim() || "Input",
    output: (p.outputLabel || "").trim() || "Output",
  };
}

// The labels of a "Label: {input}\nLabel: {output}" format (the toolkit's preset format), or null.
export function labelsFromFormat(format) {
  const m = /^([^\n{}:]+):[ \t]*\{input\}\n([^\n{}:]+):[ \t]*\{output\}\s*$/.exec(format || "");
  return m ? { inputLabel: m[1].trim(), outputLabel: m[2].trim() } : null;
}

// Renders like fewshot.toolkit.prompts.FewShotPrompt.render: blocks joined by the separator on
// its own line; the query block is the format up to {output} without trailing spaces. `format`
// (with {input} and a final {output}) defaults to "InputLabel: {input}\nOutputLabel: {output}".
export function renderPrompt(p, separator = DEFAULT_SEPARATOR) {
  const l = labels(p);
  const format = p.format || `${l.input}: {input}\n${l.output}: {output}`;
  const head = format.split("{output}")[0];
  const fill = (input) => head.split("{input}").join(input.trim());
  const blocks = [];
  const task = (p.task || "").trim();
  if (task) blocks.push(task);
  for (const ex of p.examples || []) {
    const input = ex.input || "";
    const output = ex.output || "";
    if (!input.trim() && !output.trim()) continue;
    blocks.push((fill(input) + output.trim()).trimEnd());
  }
  blocks.push(fill(p.query || "").replace(/[ \t]+$/, ""));
  return blocks.join(`\n${separator || DEFAULT_SEPARATOR}\n`);
}

function escapeRe(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

// Inverse of renderPrompt for text in that layout; returns null when the text does not fit.
export function parsePrompt(text, separator = DEFAULT_SEPARATOR) {
  const sep = escapeRe(separator || DEFAULT_SEPARATOR);
  const blocks = text
    .replace(/\r\n?/g, "\n")
    .split(new RegExp(`\\n[ \\t]*${sep}[ \\t]*\\n`))
    .map((b) => b.replace(/^\n+|\s+$/g, ""));
  const last = blocks.pop();
  const q = /^([^\n:]{1,40}):[ \t]?([\s\S]*)\n([^\n:]{1,40}):$/.exec(last || "");
  if (!q) return null;
  const [, inputLabel, query, outputLabel] = q;
  const exRe = new RegExp(`^${escapeRe(inputLabel)}:[ \\t]?([\\s\\S]*?)\\n${escapeRe(outputLabel)}:[ \\t]?([\\s\\S]*)$`);
  const examples = [];
  let task = "";
  for (const [i, block] of blocks.entries()) {
    const m = exRe.exec(block);
    if (m) examples.push({ input: m[1], output: m[2] });
    else if (i === 0) task = block;
    else return null;
  }
  return { task, inputLabel, outputLabel, examples, query };
}
