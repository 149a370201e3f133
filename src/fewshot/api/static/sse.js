// Incremental Server-Sent Events parser (the subset TGI's /generate_stream uses).
//
// Feed it text chunks as they arrive from a ReadableStream; it calls onEvent(data) once per
// complete event with the joined `data:` lines. Comment lines (":" keep-alives), `event:`, `id:`
// and `retry:` fields are ignored. Events may be split anywhere across chunks, and lines may end
// in \n, \r\n or \r.

export function createSSEParser(onEvent) {
  let buffer = "";
  let dataLines = [];

  function dispatch() {
    if (dataLines.length) onEvent(dataLines.join("\n"));
    dataLines = [];
  }

  function line(text) {
    if (text === "") return dispatch();
    if (text.startsWith(":")) return;
    const colon = text.indexOf(":");
    const field = colon === -1 ? text : text.slice(0, colon);
    let value = colon === -1 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") dataLines.push(value);
  }

  return {
    push(chunk) {
      buffer += chunk;
      // A lone trailing "\r" may be the first half of "\r\n": wait for the next chunk.
      const re = /\r\n|\n|\r(?!$)/g;
      let start = 0;
      let m;
      while ((m = re.exec(buffer)) !== null) {
        line(buffer.slice(start, m.index));
        start = m.index + m[0].length;
      }
      buffer = buffer.slice(start);
    },
    end() {
      if (buffer.endsWith("\r")) buffer = buffer.slice(0, -1);
      if (buffer) line(buffer);
      buffer = "";
      dispatch();
    },
  };
}

// Read an SSE response body to the end, calling onData(parsedJson) per event.
// Resolves when the stream ends; rejects on network errors and aborts (AbortError).
export async function readSSE(response, onData) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = createSSEParser((data) => {
    let parsed;
    try {
      parsed = JSON.parse(data);
    } catch {
      if (data.trim() === "[DONE]") return;
      throw new Error(`Unreadable event from the server: ${data.slice(0, 200)}`);
    }
    onData(parsed);
  });
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(value);
    }
    parser.end();
  } catch (err) {
    reader.cancel().catch(() => {});
    throw err;
  }
}
