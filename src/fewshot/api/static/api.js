// Talking to the fewshot server: auth header, JSON helpers and readable error messages.
// URLs are relative to the page, so the playground also works behind a path prefix.

const KEY_STORAGE = "fewshot.apiKey";

export const auth = {
  get() {
    try {
      return localStorage.getItem(KEY_STORAGE) || "";
    } catch {
      return "";
    }
  },
  set(key) {
    try {
      if (key) localStorage.setItem(KEY_STORAGE, key);
      else localStorage.removeItem(KEY_STORAGE);
    } catch {
      /* storage disabled: the key lives for this page only */
    }
  },
};

export class ApiError extends Error {
  constructor(message, { status = 0, type = "" } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
  }
}

export function headers(extra = {}) {
  const h = { Accept: "application/json", ...extra };
  const key = auth.get();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// The message of an error body in any of the shapes servers use: TGI/HF {"error": str},
// HF validation {"error": [str, ...]}, OpenAI {"error": {"message"}}, FastAPI {"detail": ...}.
export function errorMessage(body) {
  if (body == null) return "";
  if (typeof body === "string") return body;
  const err = body.error ?? body.detail ?? body.message;
  if (typeof err === "string") return err;
  if (Array.isArray(err)) {
    return err
      .map((e) => (typeof e === "string" ? e : e && (e.msg ? `${(e.loc || []).slice(1).join(".")}: ${e.msg}`.replace(/^: /, "") : JSON.stringify(e))))
      .join(" ");
  }
  if (err && typeof err === "object") return err.message || JSON.stringify(err);
  return JSON.stringify(body);
}

const STATUS_TEXT = {
  400: "Bad request",
  401: "This server needs an API key (or the key was refused)",
  403: "Forbidden",
  404: "Not found",
  413: "Request too large",
  422: "Invalid request",
  424: "Generation failed",
  429: "The server is overloaded; try again in a moment",
  500: "Server error",
  503: "The model is not ready yet",
};

// An ApiError for a non-2xx response, from its JSON or text body.
export async function responseError(response) {
  const text = await response.text().catch(() => "");
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {
    /* plain-text body */
  }
  const msg = errorMessage(body).trim() || STATUS_TEXT[response.status] || response.statusText || "Request failed";
  const type = (body && typeof body === "object" && body.error_type) || "";
  return new ApiError(msg, { status: response.status, type });
}

export async function fetchJSON(path, init = {}) {
  const response = await fetch(path, { ...init, headers: headers(init.headers) });
  if (!response.ok) throw await responseError(response);
  return response.json();
}
