"""The HTTP API: HF Inference API, TGI and OpenAI routes, the playground and /tasks."""
