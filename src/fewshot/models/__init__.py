"""Model families, paged attention, loaders, tokenizers and quantization."""
