"""The engine: scheduler and KV block manager (pure Python), model runner, output processor, core loop, LLM facade."""
