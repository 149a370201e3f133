"""Few-shot toolkit: prompts and presets, the HTTP client, evaluation and the embedding classifier.

Modules: `prompts` (FewShotPrompt, the whitespace rule), `presets` (shipped prompts),
`scoring`, `client` (Client, AsyncClient, FewShotAPIError), `datasets` (evaluation tasks),
`backends` + `evaluate` + `report` + `plots` (`fewshot eval`), `classifier` (embeddings +
logistic regression, persisted tasks). Import the submodules; nothing heavy loads here.
"""
